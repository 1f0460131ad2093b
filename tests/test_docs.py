"""Docs that must match the code: docs/cli.md is the real --help; README's commands are what CI runs."""

from pathlib import Path

from adaspark_cli.cli.docs import render_cli_docs

ROOT = Path(__file__).resolve().parents[1]


def test_cli_docs_are_current():
    assert (ROOT / "docs" / "cli.md").read_text() == render_cli_docs(), (
        "docs/cli.md is stale: run python -m adaspark_cli.cli.docs > docs/cli.md"
    )


def test_readme_quick_start_uses_bundled_files():
    readme = (ROOT / "README.md").read_text()
    assert 'adaspark ask examples/demo.mp4 "What color is the heart in the video?"' in readme
    assert (ROOT / "examples" / "demo.mp4").is_file()
    assert (ROOT / "models" / "adaspark-synth-small" / "config.json").is_file()
    assert "<!-- test-command -->" in readme and "pytest" in readme.split("<!-- test-command -->")[1]

"""The `adaspark` Typer app: its commands parse, call the library and render.

Loading this module loads typer, click and rich only: each command imports torch and the library
inside its function, under its error boundary (cli/errors.py).
"""

from __future__ import annotations

import typer

from ..api import __version__
from .ask import ask
from .batch import batch
from .convert import convert
from .errors import OneLineUsageGroup
from .eval import eval_command
from .profile import profile

app = typer.Typer(
    name="adaspark",
    cls=OneLineUsageGroup,
    help="Video question answering with AdaSpark: adaptive cube-sparse attention and token-sparse FFN "
    "for Qwen2.5-VL and Qwen3-VL (arXiv 2604.08077).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # a crash must never dump tensors
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every command
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"adaspark {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Video question answering with AdaSpark sparsity."""


app.command("ask")(ask)
app.command("batch")(batch)
app.command("profile")(profile)
app.command("convert")(convert)
app.command("eval")(eval_command)


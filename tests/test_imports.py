"""The package's import direction, read from the source with `ast` (nothing is imported).

- cli/ imports the library only through adaspark_cli.api;
- the library (everything but cli/) never imports Typer, Rich or Click;
- no module imports another module's private (`_`) name, or a private module;
- each folder imports only folders further down docs/architecture.md's list (the top-level modules last).
Lazy imports inside functions and `if TYPE_CHECKING:` imports count as well.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "adaspark_cli"

# docs/architecture.md's layout, top to bottom: a layer imports only layers after it ("" is the package's
# own __init__, __version__ only)
LAYERS = [
    "cli", "api", "train", "qa", "checkpoint", "adapters", "attention", "ffn", "stats", "selection", "cubes", "video",
    "synth", "placement", "jobs", "config", "limits", "errors", "",
]
CLI_FRAMEWORKS = {"typer", "rich", "click"}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted
    target: str  # the imported module, dotted
    names: tuple[str, ...]  # names taken from it (from-imports); () for `import x`
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(dotted: str) -> bool:
    """Whether `dotted` (adaspark_cli....) is a module or package of the source tree."""
    path = PACKAGE.parent.joinpath(*dotted.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imports_of(path: Path) -> list[Import]:
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [Import(module, alias.name, (), node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = tuple(alias.name for alias in node.names)
            submodules = [n for n in names if target.startswith("adaspark_cli") and is_module(f"{target}.{n}")]
            found += [Import(module, f"{target}.{n}", (), node.lineno) for n in submodules]  # `from . import api`
            rest = tuple(n for n in names if n not in submodules)
            if rest or not submodules:
                found.append(Import(module, target, rest, node.lineno))
    return found


def all_imports() -> list[Import]:
    return [imp for path in sorted(PACKAGE.rglob("*.py")) for imp in imports_of(path)]


def internal(imports: list[Import]) -> list[Import]:
    return [imp for imp in imports if imp.target == "adaspark_cli" or imp.target.startswith("adaspark_cli.")]


def layer_of(dotted: str) -> str:
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else ""


def where(imp: Import) -> str:
    return f"{imp.module} (line {imp.line}) imports {imp.target}" + (f": {', '.join(imp.names)}" if imp.names else "")


def test_the_reader_sees_the_package_imports():
    """Guards the checks below against a reader that finds nothing (then every rule would pass)."""
    imports = internal(all_imports())
    targets = {(imp.module, imp.target) for imp in imports}
    assert ("adaspark_cli.cli.options", "adaspark_cli.api") in targets  # `from .. import api`
    assert ("adaspark_cli.qa.session", "adaspark_cli.qa.cache") in targets  # `from .cache import ...`
    assert ("adaspark_cli.adapters.arch.qwen2_5_vl", "adaspark_cli.adapters.vision") in targets  # lazy, in a function
    assert len({imp.module for imp in imports}) > 60


def test_cli_imports_the_library_only_through_api():
    wrong = [
        where(imp) for imp in internal(all_imports())
        if layer_of(imp.module) == "cli" and layer_of(imp.target) != "cli" and imp.target != "adaspark_cli.api"
    ]
    assert not wrong, "cli/ imports the library only through adaspark_cli.api (add the name there):\n" + "\n".join(wrong)


def test_the_library_never_imports_the_cli_frameworks():
    wrong = [
        where(imp) for imp in all_imports()
        if layer_of(imp.module) != "cli" and imp.target.split(".")[0] in CLI_FRAMEWORKS
    ]
    assert not wrong, "only cli/ may import Typer, Rich or Click:\n" + "\n".join(wrong)


def private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_imports_another_modules_private_names():
    wrong = [
        where(imp) for imp in internal(all_imports())
        if any(private(n) for n in imp.names) or any(private(part) for part in imp.target.split("."))
    ]
    assert not wrong, "private (_) names stay in their module; make the name public or move the code:\n" + "\n".join(wrong)


def test_folders_import_only_downward():
    rank = {name: i for i, name in enumerate(LAYERS)}
    unknown = sorted({layer_of(imp.module) for imp in internal(all_imports())} - set(rank))
    assert not unknown, f"{unknown} is missing from LAYERS (and docs/architecture.md's list)"
    wrong = [
        where(imp) for imp in internal(all_imports())
        if rank[layer_of(imp.target)] < rank[layer_of(imp.module)]
    ]
    assert not wrong, "an import runs up docs/architecture.md's layering:\n" + "\n".join(wrong)


def test_the_layers_are_docs_architecture_md_list():
    """The order above is the one the doc draws: its tree block lists each folder and top-level module."""
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = doc.split("src/adaspark_cli/\n", 1)[1].split("```", 1)[0]
    drawn = [m.group(1) for m in re.finditer(r"^  (\w+)(?:/|\.py)\s", block, flags=re.MULTILINE)]
    assert drawn == [name for name in LAYERS if name], drawn
    on_disk = {p.stem for p in PACKAGE.iterdir() if (p.is_dir() and (p / "__init__.py").is_file()) or p.suffix == ".py"}
    assert on_disk - {"__init__"} == set(drawn)

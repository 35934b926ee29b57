"""The package's layering, read from its import statements: no module imports a later stage of the compiler.

The stages, in order: the front end (parse, resolve) -> derivations -> rewrite passes -> planning -> the binding
plan -> the schedule -> the memory guard -> the back end (printing) -> the drivers (driver, api, cli, explain,
drawing). A module may import its own stage, the foundation and earlier stages, narrowed or widened where the
tables below say so.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tncompiler.derive.registry import TRANSFORMS

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "tncompiler"

# Each top-level module or sub-package of tncompiler, by stage, in pipeline order ("" is the package itself).
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("errors", "units", "ir", "rewrite")),  # what every stage may use: errors, IR, the rule engine
    ("frontend", ("frontend",)),
    ("derive", ("derive",)),
    ("passes", ("passes",)),
    ("plan", ("cost", "order")),
    ("binding", ("binding",)),
    ("schedule", ("schedule",)),
    ("guard", ("memory", "guard")),  # the memory guard reads the scheduled ops
    ("backend", ("backend",)),
    ("drivers", ("driver", "api", "generated", "cli", "__main__", "", "explain", "dot", "render", "stages", "output",
                 "model", "integrations")),
)
RANK = {stage: rank for rank, (stage, _) in enumerate(STAGES)}

# Stages that may import only these modules of earlier stages (besides the foundation).
ONLY: dict[str, tuple[str, ...]] = {
    "derive": ("tncompiler.frontend.ast", "tncompiler.frontend.deriver"),  # the syntax tree and the resolver's Deriver
    "passes": (),
}
# Modules of later stages that a stage may import.
ALSO: dict[str, tuple[str, ...]] = {
    "passes": ("tncompiler.cost", "tncompiler.order"),  # share, fuse and lower price their choices; lower plans
}
# Single imports that break the rule on purpose, with the reason.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("tncompiler.ir.network", "tncompiler.dot"): "a notebook shows a Diagram as its picture; imported when shown",
}
# Modules that break the rule while a rewrite of theirs is under way: module -> reason (each an xfail, strict).
KNOWN: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("tncompiler",) + path.relative_to(PACKAGE).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _stage(module: str) -> str:
    top = module.split(".")[1] if "." in module else ""
    for stage, members in STAGES:
        if top in members:
            return stage
    raise AssertionError(f"{module} has no stage: add it to STAGES in tests/properties/test_structure.py")


def _imports(module: str) -> set[str]:
    """The tncompiler modules that `module` imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {name for name in found if name == "tncompiler" or name.startswith("tncompiler.")}


def _absolute(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
    return f"{base}.{node.module}" if node.module else base


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _allowed(module: str, imported: str) -> bool:
    stage, target = _stage(module), _stage(imported)
    if target in (stage, "foundation") or _within(imported, ALSO.get(stage, ())):
        return True
    if RANK[target] > RANK[stage]:
        return (module, imported) in EXCEPTIONS
    return stage not in ONLY or _within(imported, ONLY[stage])


def _cases() -> list[object]:
    return [
        pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=KNOWN[m])) if m in KNOWN else m for m in MODULES
    ]


@pytest.mark.parametrize("module", _cases())
def test_no_module_imports_a_later_stage(module: str) -> None:
    wrong = sorted(name for name in _imports(module) if not _allowed(module, name))
    assert not wrong, f"{module} ({_stage(module)}) imports {', '.join(f'{n} ({_stage(n)})' for n in wrong)}"


def test_every_module_has_a_stage() -> None:
    for module in MODULES:
        _stage(module)


def test_the_exceptions_are_still_needed() -> None:
    for module, imported in EXCEPTIONS:
        assert imported in _imports(module), f"{module} no longer imports {imported}: drop the exception"


def test_the_rule_catches_the_old_layering() -> None:
    """The front end once built derived diagrams by importing them; the rule would refuse that."""
    assert not _allowed("tncompiler.frontend.resolve", "tncompiler.derive.autodiff")
    assert not _allowed("tncompiler.frontend.resolve", "tncompiler.passes.simplify")
    assert not _allowed("tncompiler.derive.calls", "tncompiler.frontend.scope")
    assert _allowed("tncompiler.derive.calls", "tncompiler.frontend.deriver")
    assert _allowed("tncompiler.passes.lower", "tncompiler.order")
    assert not _allowed("tncompiler.passes.lower", "tncompiler.guard")


def test_the_registry_is_the_one_list_of_transforms() -> None:
    """docs/language.md's table of transforms has a row per entry of the registry, in order, showing its doc."""
    text = (ROOT / "docs" / "language.md").read_text(encoding="utf-8").split("## Transforms", 1)[1].split("\n## ")[0]
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| `")]
    documented = {row[0].removeprefix("| `").split("(")[0]: row[1] for row in rows}
    assert list(documented) == list(TRANSFORMS)
    assert documented == {name: transform.doc for name, transform in TRANSFORMS.items()}

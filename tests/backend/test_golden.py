"""Every example compiles to the checked-in module and DOT text in examples/golden (`make golden` rewrites them)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import tncompiler
from tncompiler.dot import diagram_dot
from tncompiler.stages import diagram_stages

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
GOLDEN = EXAMPLES / "golden"
FILES = sorted(EXAMPLES.glob("*.tnd"))


def _outputs(path: Path) -> dict[str, str]:
    relative = f"examples/{path.name}"
    source = path.read_text()
    program = tncompiler.build_program(source, relative)
    dot = "".join(diagram_dot(staged, stage) for d in program.diagrams for stage, staged in diagram_stages(d))
    return {f"{path.stem}.py": tncompiler.compile_source(source, relative), f"{path.stem}.dot": dot}


def test_there_are_examples() -> None:
    assert len(FILES) >= 7


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden(path: Path, regen_golden: bool) -> None:
    for name, text in _outputs(path).items():
        golden = GOLDEN / name
        if regen_golden:
            GOLDEN.mkdir(exist_ok=True)
            golden.write_text(text)
        assert golden.exists(), f"missing {golden}; run `make golden`"
        assert text == golden.read_text(), f"{name} differs from the golden file; run `make golden` if intended"


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_compiling_twice_is_byte_identical(path: Path) -> None:
    assert _outputs(path) == _outputs(path)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_golden_module_imports_only_torch_and_the_standard_library(path: Path) -> None:
    code = _outputs(path)[f"{path.stem}.py"]
    imports = {line.split()[1] for line in code.splitlines() if line.startswith(("import ", "from "))}
    assert "torch" in imports and all(name == "torch" or name in sys.stdlib_module_names for name in imports)

"""Every example compiles to the checked-in module and DOT text in examples/golden (`make golden` rewrites them)."""

from __future__ import annotations

import io
import sys
import tokenize
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


def long_code_lines(code: str, width: int = 120) -> list[tuple[int, str]]:
    """Code lines over `width` columns (docstrings, which quote the user's file as written, are left out)."""
    quoted: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(code).readline):
        if token.type == tokenize.STRING:
            quoted |= set(range(token.start[0], token.end[0] + 1))
    return [(k, line) for k, line in enumerate(code.splitlines(), 1) if len(line) > width and k not in quoted]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_generated_code_fits_in_120_columns(path: Path) -> None:
    """Long conditionals, method chains, costs, notes and comments are broken at 120 columns."""
    long = long_code_lines(_outputs(path)[f"{path.stem}.py"])
    assert not long, long[:3]

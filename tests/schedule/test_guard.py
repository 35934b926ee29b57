"""The memory guard (tncompiler/guard.py), by its contract rather than its byte counts: a compile that would need
more memory than the limit is refused, at the definition of the diagram at fault, with the sizes in units a person
reads (a small limit is not written as 0.00 GiB); one under the limit compiles; `check_memory` refuses exactly what
`estimate_bytes` puts over the limit; and the sizes the guard reads (`parse_size`, for --max-memory). Its byte
counts against measured peaks: tests/schedule/test_guard_estimate.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import tncompiler
from tncompiler import TncError
from tncompiler.api import build_program
from tncompiler.cli import main
from tncompiler.driver import Compilation
from tncompiler.guard import check_memory, estimate_bytes, parse_size
from tncompiler.ir.network import Diagram
from tncompiler.schedule.ops import Function

# y holds 10^9 entries: gigabytes however the estimate counts; small holds 10^4.
WIDE = """index n = 10000, c = 10000, d = 100000
input x[n, c]
input w[d, c]
small[n] = x[n, c] * delta(c)
y[n, d] = x[n, c] * w[d, c]
"""
GIB = 2**30
# A size as a message may write it: a number and a unit that parse_size reads back.
SIZE = re.compile(r"(\d+(?:\.\d+)?) ?(B|KiB|MiB|GiB|TiB|PiB|EiB|kB|KB|MB|GB|TB)\b")


def refusal(source: str, limit: int) -> TncError:
    with pytest.raises(TncError) as caught:
        tncompiler.compile_source(source, "wide.tnd", max_memory=limit)
    return caught.value


def sizes_in(message: str) -> list[int]:
    """Every size the message names, in bytes; a size that reads as nothing ('0.00 GiB') fails here."""
    return [parse_size(f"{number} {unit}") for number, unit in SIZE.findall(message)]


# -- the compile's contract -----------------------------------------------------------------------------------------
def test_a_diagram_over_the_limit_is_refused_where_it_is_defined() -> None:
    error = refusal(WIDE, GIB)
    lines = str(error).split("\n")
    assert lines[0].startswith("wide.tnd:5:1: error: ") and "'y'" in lines[0], lines[0]
    assert lines[1] == "    y[n, d] = x[n, c] * w[d, c]" and lines[2].startswith("    ^"), lines
    assert error.hint is not None and "--max-memory" in error.hint and lines[-1] == f"hint: {error.hint}"


def test_the_refusal_names_the_need_and_the_limit_in_readable_units() -> None:
    sizes = sizes_in(refusal(WIDE, GIB).message)
    assert len(sizes) == 2, sizes
    assert any(abs(size - GIB) <= 0.01 * GIB for size in sizes), f"the limit, 1 GiB, is not among {sizes}"
    assert max(sizes) > GIB


def test_a_small_limit_is_not_written_as_zero() -> None:
    sizes = sizes_in(refusal(WIDE, 4096).message)
    assert any(abs(size - 4096) <= 0.01 * 4096 for size in sizes), sizes


def test_a_diagram_under_the_limit_compiles() -> None:
    assert "def y(" in tncompiler.compile_source(WIDE, "wide.tnd", max_memory=parse_size("1 TiB"))


def test_the_command_line_refuses_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "wide.tnd"
    path.write_text(WIDE)
    assert main(["compile", str(path), "-o", str(tmp_path / "wide.py"), "--max-memory", "1GiB"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{path}:5:1: error: ") and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wide.tnd"]


# -- estimate_bytes and check_memory --------------------------------------------------------------------------------
def scheduled(source: str, name: str) -> tuple[Diagram, Function]:
    """Diagram `name` as the guard reads it: optimised, and its function's scheduled ops (with no limit)."""
    compilation = Compilation(build_program(source, "wide.tnd"), source, True, parse_size("1e999"))
    names = [diagram.name for diagram in compilation.program.diagrams]
    return compilation.optimised(compilation.program.diagram(name)), compilation.functions[names.index(name)]


@pytest.mark.parametrize("name", ["small", "y"])
def test_check_memory_refuses_what_the_estimate_puts_over_the_limit(name: str) -> None:
    diagram, function = scheduled(WIDE, name)
    needed = estimate_bytes(function, diagram)
    check_memory(diagram, function, needed)
    with pytest.raises(TncError) as caught:
        check_memory(diagram, function, needed - 1)
    assert caught.value.span == diagram.span


def test_the_estimate_grows_with_the_sizes() -> None:
    def needed(d: int) -> int:
        return estimate_bytes(*reversed(scheduled(WIDE.replace("d = 100000", f"d = {d}"), "y")))

    assert 0 < needed(10) < needed(1000) < needed(100000)
    assert needed(100000) > GIB


# -- parse_size -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "size"),
    [("4GiB", 4 * 2**30), ("500 MB", 500 * 10**6), ("1e9", 10**9), (".5KiB", 512), (" 7 ", 7), ("2kb", 2000)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("unit", "factor"),
    [("B", 1), ("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12),
     ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("TiB", 2**40)],  # fmt: skip
)
def test_parse_size_reads_every_unit_in_any_case(unit: str, factor: int) -> None:
    for text in (f"3{unit}", f"3 {unit}", f"3{unit.lower()}", f"3 {unit.upper()}", f"1.5{unit}"):
        assert parse_size(text) == (3 * factor if text.startswith("3") else int(1.5 * factor)), text


def test_parse_size_takes_a_huge_size_as_no_limit() -> None:
    assert parse_size("1e999") == parse_size("1e99999999999999999999") >= 2**80


@pytest.mark.parametrize("text", ["nan", "inf", "-5", "abc", "0", "1e-3", "5 XB", "1.2.3", "", "1_000", "e5", "１２"])
def test_parse_size_refuses_with_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a size|too small") as caught:
        parse_size(text)
    assert "examples: 4GiB" in str(caught.value)


def test_an_unknown_unit_is_named_with_the_units_there_are() -> None:
    with pytest.raises(ValueError, match=r"unknown unit 'XB'; units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"):
        parse_size("5 XB")

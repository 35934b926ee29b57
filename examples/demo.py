"""Compile every `examples/*.tnd` with tncompiler and check each generated function against PyTorch.

Run as `python examples/demo.py`. For each definition it builds random arguments from the argument
layouts that the compiler reports, calls the generated function and its plain-PyTorch reference
(`references.py`), and prints the relative error (max |generated - reference| / max |reference|)
in float64 and in float32; the float32 output is compared with the float64 reference. The exit status
is 1 if any check fails or an example has no reference.
"""

from __future__ import annotations

import inspect
import math
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import sympy
import torch

import tncompiler

if TYPE_CHECKING:
    from tncompiler.ir.network import Diagram, Program

sys.path.insert(0, str(Path(__file__).resolve().parent))
from references import CALL_TIME_SIZES, REFERENCES, Reference  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
# Examples left out because of a known compiler bug: file name -> why (printed, never silently skipped).
SKIPPED: dict[str, str] = {}


@dataclass(frozen=True)
class Row:
    example: str
    function: str
    shape: str
    error64: float
    error32: float
    status: str


def call_time_sizes(program: Program) -> dict[str, int]:
    """CALL_TIME_SIZES, and the sizes the file's patterns derive from them by their size rules (o from i)."""
    values = dict(CALL_TIME_SIZES)
    for rule in program.size_rules:
        if isinstance(rule.conv.out_size, sympy.Symbol):
            values[str(rule.conv.out_size)] = concrete(rule.formula, values)
    return values


def concrete(size: object, values: dict[str, int]) -> int:
    """An index size as an int, with the call-time sizes substituted."""
    expr = sympy.sympify(size)
    return int(expr.subs({symbol: values[str(symbol)] for symbol in expr.free_symbols}))


def argument_shapes(diagram: Diagram, values: dict[str, int]) -> list[tuple[int, ...]]:
    """One shape per argument: each axis holds the product of its indices' sizes."""
    return [
        tuple(math.prod(concrete(diagram.sizes[leg], values) for leg in axis) for axis in argument.layout.axes)
        for argument in diagram.arguments
    ]


def keyword_sizes(function: Reference, values: dict[str, int]) -> dict[str, int]:
    """The sizes a function takes as keyword-only arguments (those no argument carries), by index name."""
    parameters = inspect.signature(function).parameters.values()
    return {p.name: values[p.name] for p in parameters if p.kind is p.KEYWORD_ONLY and p.name in values}


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """max |result - reference| / max |reference|, infinite on a shape mismatch."""
    if result.shape != reference.shape:
        return math.inf
    scale = reference.abs().max().item() or 1.0
    return (result.double() - reference.double()).abs().max().item() / scale


def check_function(
    example: str, name: str, function: Reference, reference: Reference, shapes: list[tuple[int, ...]],
    sizes: dict[str, int],
) -> Row:  # fmt: skip
    """Compare one generated function with its reference, in float64 and float32."""
    arguments = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    sampled = "generator" in inspect.signature(function).parameters  # tensor dropout: random at each call

    def draw() -> dict[str, torch.Generator]:
        """For a sampled function and its reference: generators seeded alike, so both keep the same entries."""
        return {"generator": torch.Generator().manual_seed(0)} if sampled else {}

    expected = reference(*arguments, **draw())
    result64 = function(*arguments, **draw(), **sizes)
    result32 = function(*[a.float() for a in arguments], **draw(), **sizes)
    error64, error32 = relative_error(result64, expected), relative_error(result32, expected)
    dtypes_ok = result64.dtype == torch.float64 and result32.dtype == torch.float32
    passed = error64 <= TOLERANCE[torch.float64] and error32 <= TOLERANCE[torch.float32] and dtypes_ok
    shape = "x".join(str(s) for s in result64.shape)
    return Row(example, name, shape, error64, error32, "PASS" if passed else "FAIL")


def check_example(path: Path) -> list[Row]:
    """Compile one example and check every function it defines; a missing reference is a failure."""
    if path.name not in REFERENCES:
        return [Row(path.name, "-", "-", math.nan, math.nan, "FAIL (no entry in references.py)")]
    references = REFERENCES[path.name]
    program = tncompiler.build_program(path.read_text(encoding="utf-8"), str(path))
    module = tncompiler.load(path)
    values = call_time_sizes(program)
    rows = []
    for diagram in program.diagrams:
        if diagram.name not in references:
            rows.append(Row(path.name, diagram.name, "-", math.nan, math.nan, "FAIL (no reference)"))
            continue
        shapes = argument_shapes(diagram, values)
        function = getattr(module, diagram.name)
        sizes = keyword_sizes(function, values)
        rows.append(check_function(path.name, diagram.name, function, references[diagram.name], shapes, sizes))
    return rows


def run_example(path: Path) -> list[Row]:
    """`check_example`, with any error reported as a failed row."""
    try:
        return check_example(path)
    except Exception as error:  # the demo reports every failure and goes on
        traceback.print_exc()
        message = str(error).splitlines()[0] if str(error) else ""
        return [Row(path.name, "-", "-", math.nan, math.nan, f"FAIL ({type(error).__name__}: {message})")]


def print_table(rows: list[Row]) -> None:
    """One line per function, columns padded to their widest cell."""
    header = ("example", "function", "output shape", "rel. error f64", "rel. error f32", "status")
    cells = [header] + [
        (r.example, r.function, r.shape, f"{r.error64:.2e}", f"{r.error32:.2e}", r.status) for r in rows
    ]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header) - 1)]
    for k, row in enumerate(cells):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
        if k == 0:
            print("  ".join("-" * width for width in widths) + "  " + "-" * len(header[-1]))


def main() -> int:
    """Check every example; 1 if anything fails."""
    torch.manual_seed(0)
    paths = sorted(EXAMPLES.glob("*.tnd"))
    rows: list[Row] = []
    for path in paths:
        if path.name in SKIPPED:
            print(f"SKIPPED {path.name}: {SKIPPED[path.name]}")
            continue
        rows.extend(run_example(path))
    for name in sorted(set(REFERENCES) - {path.name for path in paths}):
        print(f"note: references.py has {name}, but there is no such example file")
    print_table(rows)
    failed = [row for row in rows if row.status != "PASS"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} functions pass; {len(SKIPPED)} example(s) skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

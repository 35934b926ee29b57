"""The time model of `tncompiler.cost`: the entries a lowered network moves (`bytes_moved`, counted by hand here for
a matrix product, a convolution kernel and a copy), the roofline `seconds` (monotone in work and traffic), and the
lines `tnc explain` prints from them."""

from __future__ import annotations

import sympy

from tncompiler.api import build_program
from tncompiler.cost import MACHINE, Machine, bytes_moved, flops, seconds
from tncompiler.driver import Compilation
from tncompiler.explain import explain
from tncompiler.ir.network import Network

SOURCE = """index n, b = 5, c = 4, d = 2, i = 8, k = 3
pattern p(i, o, k) = conv()
input A[n, b]
input B[b, c]
input x[n, c, i]
input w[d, c, k]
gemm[n, c] = A[n, b] * B[b, c]
y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k]
gw = vjp(y, w)
u[n, c, k, o] = x[n, c, i] * p(i, o, k)
"""


def _lowered(name: str) -> Network:
    compilation = Compilation(build_program(SOURCE, "cost.tnd"), SOURCE)
    built = next(d for d in compilation.program.diagrams if d.name == name)
    (term,) = compilation.optimised(built).networks()
    return term


def _n(expr: sympy.Expr) -> sympy.Expr:
    """The expression in a plain symbol n (the compiler's carries assumptions)."""
    return sympy.expand(expr.xreplace({s: sympy.Symbol("n") for s in expr.free_symbols if s.name == "n"}))


def test_a_matrix_product_moves_its_operands_and_result() -> None:
    term = _lowered("gemm")
    assert term.lowering.native is None
    n = sympy.Symbol("n")
    assert _n(bytes_moved(term)) == 5 * n + 5 * 4 + 4 * n  # A, B, the result
    assert _n(flops(term)) == 5 * 4 * n


def test_a_kernel_moves_its_operands_and_result_not_the_windows() -> None:
    n = sympy.Symbol("n")
    forward, weight = _lowered("y"), _lowered("gw")
    assert forward.lowering.native is not None and weight.lowering.native is not None
    # x [n, 4, 8], w [2, 4, 3], y [n, 2, 6]; the weight gradient reads x and grad_y and writes w
    assert _n(bytes_moved(forward)) == 32 * n + 24 + 12 * n
    assert _n(bytes_moved(weight)) == 32 * n + 12 * n + 24
    assert _n(flops(forward)) == 2 * 4 * 6 * 3 * n


def test_a_copy_reads_the_windows_and_writes_them() -> None:
    term = _lowered("u")
    assert not term.lowering.plans or not term.lowering.plans[0].steps
    n = sympy.Symbol("n")
    assert _n(bytes_moved(term)) == 2 * (4 * 3 * 6 * n)


def test_seconds_grow_with_work_and_traffic() -> None:
    for kind in ("kernel", "contract"):
        by_work = [seconds(f, 1e3, kind) for f in (0, 1e6, 1e8, 1e10)]
        by_traffic = [seconds(1e3, e, kind) for e in (0, 1e6, 1e8, 1e10)]
        assert by_work == sorted(by_work) and by_work[-1] > by_work[0]
        assert by_traffic == sorted(by_traffic) and by_traffic[-1] > by_traffic[0]
    slow = Machine(kernel_rate=MACHINE.kernel_rate / 2)
    assert seconds(1e10, 0, "kernel", slow) > seconds(1e10, 0, "kernel")


def test_explain_shows_entries_moved_and_the_estimate() -> None:
    text = explain(Compilation(build_program(SOURCE, "cost.tnd"), SOURCE))
    block = next(part for part in text.split("\n\n") if part.startswith("gemm"))
    assert "moved: 9*n + 20 entries read and written" in block
    assert "estimated time:" in block and "a CPU estimate" in block and "cost.Machine" in block and "n=32" in block

"""Memory estimate: the most a diagram's generated function holds at once, in float64 (estimate_bytes).

A sum over the scheduled ops, after the peephole rules (what the printed code runs: equal constants merged, aliases
and dead lines gone). Each op says what it allocates, where the schedule makes it (`Assign.entries`, `scratch`): a
kernel its output and the unfolded input PyTorch's CPU kernels build for float64, a contraction step its result
and the operands a GEMM lays out, a view nothing but for pads, gathers and merges of a strided view, a constant its
entries (kept in the module's cache). Every variable of the function lives until it returns; a branch costs its
costliest arm. tests/schedule/test_guard_estimate.py holds the estimate within a factor of 3 of the measured peak.
"""

from __future__ import annotations

from collections.abc import Mapping

import sympy

from tncompiler.cost import evaluate, expected_sizes
from tncompiler.ir.network import Diagram
from tncompiler.schedule.ops import Assign, Branch, Entries, Function, Op, Return

__all__ = ["BYTES_PER_ENTRY", "estimate_bytes"]

BYTES_PER_ENTRY = 8  # float64, the widest dtype the generated code is used with


def estimate_bytes(function: Function, diagram: Diagram) -> int:
    """The most memory `function` (the scheduled ops of `diagram`) holds at once, beyond its arguments, in float64:
    its variables (which live until it returns), the constants it caches, and the brief copies inside a step.
    Call-time sizes count as 1; sampled sizes as their expected value."""
    _, peak = _held(function.body, 0, expected_sizes(diagram.samplers))
    return peak * BYTES_PER_ENTRY


def _held(ops: tuple[Op, ...], live: int, at: Mapping[sympy.Symbol, int]) -> tuple[int, int]:
    """Entries alive after `ops` (from `live` before them), and the most alive at any moment among them."""
    peak = live
    for op in ops:
        if isinstance(op, Branch):
            ends = [_held(body, live, at) for _, body in op.arms]
            peak = max(peak, *(most for _, most in ends))
            live = max(after for after, _ in ends)  # an arm may be skipped: live only grows
        elif isinstance(op, Assign | Return):
            entries = _count(op.entries, at)
            scratch = _count(op.scratch, at) if isinstance(op, Assign) else 0
            peak = max(peak, live + scratch + entries)
            live += entries
    return live, peak


def _count(entries: Entries, at: Mapping[sympy.Symbol, int]) -> int:
    if entries is None:
        return 0
    return max(evaluate(sympy.sympify(entries), at), 0)

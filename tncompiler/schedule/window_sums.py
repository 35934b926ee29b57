"""KFAC-reduce's main step: a tensor contracted with Σ_o Π(i, o, k) over i, computed as sums of the tensor's
windows (the runtime helper `_window_sum`) instead of a GEMM with that 0/1 matrix. Which steps qualify, and which
fused constants then need not be built."""

from __future__ import annotations

from tncompiler.ir.network import Network, Plan, Step
from tncompiler.ir.values import ConvPattern, Factor, Fused

__all__ = ["known_long", "summed_pattern", "threshold", "window_sum_factors", "window_sum_step"]


# Window sums issue about 3K small reductions, the product one GEMM with K columns, which runs at 4-30 GFLOP/s on
# these shapes. Crossovers measured on a 2-core CPU: I ≥ 56 for K ≤ 4 (MobileNetV2's 56x56 depthwise layer, 1.9
# against 2.6 ms), and only very long axes beyond that (a 4000-sample audio layer: 0.2 against 1.5 ms).
SHORT_KERNEL, LONG_FOR_SHORT_KERNELS, LONG = 4, 56, 1024


def threshold(p: ConvPattern) -> int:
    """The input length from which window sums beat the GEMM."""
    return LONG_FOR_SHORT_KERNELS if p.kernel_size <= SHORT_KERNEL else LONG


def _long_enough(p: ConvPattern) -> bool:
    """Whether window sums may beat the GEMM: an axis whose length is only known at call time may be long (the
    generated code then compares the length with the threshold, and keeps the product with Σ_o Π for short ones)."""
    return not isinstance(p.in_size, int) or p.in_size >= threshold(p)


def known_long(p: ConvPattern) -> bool:
    """Window sums win whatever the call: the product with Σ_o Π need never be built."""
    return isinstance(p.in_size, int) and p.in_size >= threshold(p)


def summed_pattern(factor: Factor) -> ConvPattern | None:
    """The pattern of a fused Σ_o Π(i, o, k) with legs (i, k), if the factor is one and long enough to sum."""
    fused = factor.pattern
    if not isinstance(fused, Fused) or factor.view is not None or len(fused.parts) != 1:
        return None
    part = fused.parts[0]
    if not isinstance(part.pattern, ConvPattern) or part.view is not None or len(set(part.legs)) != 3:
        return None
    i, _, k = part.legs
    return part.pattern if factor.legs == (i, k) and _long_enough(part.pattern) else None


def window_sum_step(term: Network, step: Step, legs: list[tuple[str, ...]]) -> tuple[int, int, int] | None:
    """(the fused factor's position, the other operand's id, its i axis) where a step is a window sum."""
    if len(step.operands) != 2:
        return None
    for position, other in (step.operands, step.operands[::-1]):
        if position >= len(term.factors) or summed_pattern(term.factors[position]) is None:
            continue
        i, k = term.factors[position].legs
        if legs[other].count(i) == 1 and k not in legs[other] and i not in step.legs:
            return position, other, legs[other].index(i)
    return None


def window_sum_factors(term: Network, plans: tuple[Plan, ...]) -> set[int]:
    """Fused Σ_o Π factors that every plan applies as window sums, whatever the call-time sizes."""
    found = set()
    for k, factor in enumerate(term.factors):
        p = summed_pattern(factor)
        if p is not None and known_long(p):
            found.add(k)
    for plan in plans:
        legs = [f.legs for f in term.factors]
        for step in plan.steps:
            applied = window_sum_step(term, step, legs)
            found -= set(step.operands) - ({applied[0]} if applied else set())
            legs.append(step.legs)
    return found

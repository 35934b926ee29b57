"""Lowering: choose how each term meets the hardware. A term that is a convolution, a transpose convolution or a
convolution's weight gradient (any dimension up to 3, any groups) is marked for PyTorch's native kernel; in every
other term, an index pattern on a tensor becomes a strided window view of that tensor (padding plus `unfold`),
instead of a product with a dense one-hot tensor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import sympy

from tncompiler.cost import WITHOUT_RULES, Regimes, kernel_wins, masks_sampled
from tncompiler.ir.network import Diagram, Lowering, Network
from tncompiler.ir.values import (
    ConvPattern,
    Factor,
    GatherOp,
    MergeOp,
    NativeConv,
    Role,
    SplitOp,
    SqueezeOp,
    View,
    ViewOp,
    WindowOp,
    is_kept,
)
from tncompiler.order import plan_network
from tncompiler.passes.simplify import factor_kinds
from tncompiler.rewrite import Rewrite, Rule, fixpoint

__all__ = ["NativeConv", "folded_bias", "lower_network", "match_native", "planned"]

_ROLE_OF_OPEN_LEG = {0: "transpose", 1: "forward", 2: "weight"}  # which pattern leg (i, o, k) is open


def match_native(net: Network) -> NativeConv | None:
    """The native convolution this term is, if it is one."""
    patterns = tuple(
        k for k, f in enumerate(net.factors) if isinstance(f.pattern, ConvPattern) and _only_gathers_on_o(f)
    )
    others = [k for k in range(len(net.factors)) if k not in patterns]
    if not 1 <= len(patterns) <= 3 or len(others) != 2:
        return None
    if any(net.factors[k].kind != "input" for k in others) or any(len(set(f.legs)) != len(f.legs) for f in net.factors):
        return None
    sampled = {leg for leg, size in net.sizes.items() if is_kept(size)}
    roles = set()
    for k in patterns:
        legs = net.factors[k].legs
        open_legs = [j for j, leg in enumerate(legs) if leg in net.outputs]
        if len(open_legs) != 1 or net.tensors_on(legs[open_legs[0]]) != (k,):
            return None
        roles.add(_ROLE_OF_OPEN_LEG[open_legs[0]])
    if len(roles) != 1:
        return None
    role: Role = roles.pop()  # type: ignore[assignment]
    # Sampled output positions (a pattern gathered on o) become a tiling of the kept windows (schedule/kernels.py):
    # the input's rows are gathered and read with stride K, or a transpose convolution writes the kept windows
    # with stride K and they are added back into place (one sampled axis).
    gathered = {net.factors[k].legs[1] for k in patterns if net.factors[k].view is not None}
    if len(gathered) > 1 and role == "transpose":
        return None
    for data, other in (others, others[::-1]):
        match = _assign(net, role, data, other, patterns)
        # A sampled leg may keep no entry at all: the kernels take an empty batch, and the generated code guards
        # sampled positions, but nothing guards empty channels.
        if match is not None and sampled <= set(match.batch) | gathered:
            kept = tuple(sorted(gathered))
            return replace(match, masked=kept) if masks_sampled(net, match) else replace(match, tiled=kept)
    return None


# For each role: which pattern legs (by position i=0, o=1, k=2) the data tensor and the other tensor carry.
_LEGS: dict[Role, tuple[int, int]] = {"forward": (0, 2), "transpose": (1, 2), "weight": (0, 1)}


def _assign(net: Network, role: Role, data: int, other: int, patterns: tuple[int, ...]) -> NativeConv | None:
    on_data, on_other = _LEGS[role]
    a, b = net.factors[data], net.factors[other]
    for k in patterns:
        legs = net.factors[k].legs
        if net.tensors_on(legs[on_data]) != tuple(sorted((data, k))):
            return None
        if net.tensors_on(legs[on_other]) != tuple(sorted((other, k))):
            return None
    spatial_a = {net.factors[k].legs[on_data] for k in patterns}
    spatial_b = {net.factors[k].legs[on_other] for k in patterns}
    out = set(net.outputs)
    rest_a = [leg for leg in a.legs if leg not in spatial_a]
    rest_b = [leg for leg in b.legs if leg not in spatial_b]
    shared = [leg for leg in rest_a if leg in rest_b]
    groups = tuple(leg for leg in shared if leg in out)
    if role == "weight":
        batch = tuple(leg for leg in shared if leg not in out)
        data_channels = tuple(leg for leg in rest_a if leg not in rest_b)
        other_channels = tuple(leg for leg in rest_b if leg not in rest_a)
        if any(leg not in out for leg in data_channels + other_channels):
            return None
    else:
        batch = tuple(leg for leg in rest_a if leg not in rest_b)
        data_channels = tuple(leg for leg in shared if leg not in out)
        other_channels = tuple(leg for leg in rest_b if leg not in rest_a)
        if any(leg not in out for leg in batch + other_channels):
            return None
    return NativeConv(role, data, other, patterns, batch, groups, data_channels, other_channels)


def _window(net: Network, position: int) -> Network | None:
    """Π(i, o, k) with i summed and carried by exactly one other tensor (once) -> that tensor's i axis becomes a
    window view with axes (o, k); the pattern goes. A pattern whose o axis was sampled (gathered) becomes a window
    followed by the same gather on the new o axis."""
    factor = net.factors[position]
    p = factor.pattern
    if not isinstance(p, ConvPattern) or not _only_gathers_on_o(factor):
        return None
    i = factor.legs[0]
    if factor.legs.count(i) != 1:
        return None  # Π(i, o, i) once a delta(i, k) went: the window's k leg would be i, which the window removes
    carriers = [k for k in net.tensors_on(i) if k != position]
    if i in net.outputs or len(carriers) != 1 or net.factors[carriers[0]].legs.count(i) != 1:
        return None
    target = net.factors[carriers[0]]
    if target.kind == "delta":
        return None
    axis = target.legs.index(i)
    view = target.view or View(tuple(net.size(leg) for leg in target.legs))
    ops = factor.view.ops if factor.view else ()
    gathers = tuple(GatherOp(axis, op.index) for op in ops if isinstance(op, GatherOp))
    new_ops = _with_window(view.ops, WindowOp(axis, p), gathers)
    if new_ops is None:
        return None
    legs = target.legs[:axis] + factor.legs[1:] + target.legs[axis + 1 :]
    windowed = replace(target, legs=legs, view=View(view.base, new_ops))
    factors = [windowed if k == carriers[0] else f for k, f in enumerate(net.factors) if k != position]
    sizes = {name: size for name, size in net.sizes.items() if name != i}
    return Network(factors, net.outputs, sizes, net.coefficient, net.lowering)


def _with_window(ops: tuple[ViewOp, ...], window: WindowOp, gathers: tuple[GatherOp, ...]) -> tuple[ViewOp, ...] | None:
    """`ops`, then `window` and the gathers of its o axis, with all of a view's windows in one run: the generated
    code and the memory guard pad a run of windows at once, before its first unfold, so a window placed after an
    earlier window's gather would read no padding. The gathers that follow the earlier windows move after the new
    one (a gather commutes with a window on another axis, which shifts its axis by one where it lies beyond)."""
    last = max((k for k, op in enumerate(ops) if isinstance(op, WindowOp)), default=None)
    if last is None:
        return (*ops, window, *gathers)
    tail = ops[last + 1 :]
    if not all(isinstance(op, GatherOp) and op.axis != window.axis for op in tail):
        return None  # cannot happen for the rules' own ops; the pattern then stays a constant, which is exact
    moved = tuple(
        GatherOp(op.axis + 1, op.index) if op.axis > window.axis else op for op in tail if isinstance(op, GatherOp)
    )
    return (*ops[: last + 1], window, *moved, *gathers)


def _only_gathers_on_o(factor: Factor) -> bool:
    return factor.view is None or all(isinstance(op, GatherOp) and op.axis == 1 for op in factor.view.ops)


def lower_network(
    net: Network, regimes: Regimes = WITHOUT_RULES, expected: Mapping[sympy.Symbol, int] | None = None
) -> tuple[Network, list[str]]:
    """The term on a native kernel where it is one (the file's term or the rewritten one, by the cost model), else
    with its patterns turned into window views by the rules and its contraction planned (`expected`: sampled sizes
    at their expected value), the plans kept on its `Lowering` for the schedule."""
    kernel = _kernel(net, regimes)
    if kernel is not None:
        return kernel
    lowered, done = fixpoint(net, RULES, factor_kinds, regimes)
    return planned(lowered, expected, regimes), [step.note for step in done]


def planned(net: Network, expected: Mapping[sympy.Symbol, int] | None, regimes: Regimes) -> Network:
    """The network with its plans on its `Lowering` (every distinct order over the regimes, cheapest first)."""
    lowering = replace(net.lowering, plans=plan_network(net, expected, regimes))
    return Network(net.factors, net.outputs, net.sizes, net.coefficient, lowering)


def _kernel(net: Network, regimes: Regimes) -> tuple[Network, list[str]] | None:
    native = match_native(net)
    written = net.lowering.as_written
    if isinstance(written, Network):
        written_native = match_native(written)
        if written_native is not None and kernel_wins(net, native, written, written_native, regimes):
            note = f"lower: {_text(written)} -> {written_native.describe()} (the kernel beats the rewritten network)"
            return with_native(written, written_native), [note]
    if native is not None:
        return with_native(net, native), [f"lower: {_text(net)} -> {native.describe()}"]
    return None


def window_view(net: Network, position: int, regimes: Regimes) -> Rewrite[Network] | None:
    """Π(i, o, k) with i summed and on one tensor -> that tensor's axis i as windows (o, k); the pattern goes."""
    windowed = _window(net, position)
    if windowed is None:
        return None
    factor = net.factors[position]
    legs = ", ".join(factor.legs)
    return Rewrite(windowed, f"lower: {factor.name}({legs}) -> a strided window view of the tensor on {factor.legs[0]}")


# The lowering rules on a term that is no kernel, in the order they are tried.
RULES: tuple[Rule[Network, Regimes], ...] = (
    Rule(
        "window",
        "Π(i, o, k) · x[.., i, ..] with i summed, on x alone -> x[.., (o, k), ..] as a strided window view",
        frozenset({"pattern", "pattern+view"}),
        window_view,
    ),
)


def with_native(net: Network, native: NativeConv) -> Network:
    return Network(net.factors, net.outputs, net.sizes, net.coefficient, Lowering(native=native))


def _text(net: Network) -> str:
    return " * ".join(f"{f.name or f.kind}" for f in net.factors)


# -- the bias a kernel adds itself -----------------------------------------------------------------------------------
def folded_bias(diagram: Diagram) -> tuple[int, int] | None:
    """(kernel term, bias term) where a convolution's bias is passed to its kernel instead of being added after it
    (an extra pass over the output): a term that is one argument holding the kernel's output channels in their
    order. Size-1 legs count for nothing, on either side: a file may write a group index g = 1 anywhere
    (`b[(g d)]`, `y[n, (g d), ..]`), and simplify may have squeezed it from one term and not the other. The schedule
    (schedule/build.py) passes the bias, and the memory estimate (memory.py) follows it, by this one rule."""
    if len(diagram.terms) < 2:
        return None
    for k, term in enumerate(diagram.terms):
        m = term.lowering.native
        if m is None or not _takes_bias(term, m, diagram):
            continue
        channels = _wide(term, m.groups + m.other_channels)
        for b, other in enumerate(diagram.terms):
            if b != k and _is_bias(other, diagram, channels):
                return k, b
    return None


def _takes_bias(term: Network, m: NativeConv, diagram: Diagram) -> bool:
    """A plain (transpose) convolution whose result is the whole of the file's result, but for size-1 legs."""
    missing = set(diagram.layout.legs) - set(term.outputs)
    return (
        m.role in ("forward", "transpose")
        and not m.tiled
        and not m.masked
        and term.coefficient == 1
        and all(diagram.sizes[leg] == 1 for leg in missing)
    )


def _is_bias(term: Network, diagram: Diagram, channels: tuple[str, ...]) -> bool:
    """One argument, reshaped at most (its entries in its own order), every leg kept, its legs of more than one
    entry the kernel's output channels in order (`b[g, d]` with g = 1 is a 1-d bias reshaped)."""
    if len(term.factors) != 1 or term.coefficient != 1:
        return False
    factor = term.factors[0]
    if factor.kind != "input" or len(set(factor.legs)) != len(factor.legs) or set(term.outputs) != set(factor.legs):
        return False
    if factor.view is not None and not all(isinstance(op, SplitOp | MergeOp | SqueezeOp) for op in factor.view.ops):
        return False
    return _wide(term, factor.legs) == channels


def _wide(net: Network, legs: tuple[str, ...]) -> tuple[str, ...]:
    """The legs of more than one entry (a call-time size may be any)."""
    return tuple(leg for leg in legs if net.size(leg) != 1)

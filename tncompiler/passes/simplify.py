"""Index-pattern simplification: a table of local rewrite rules, applied to every term until none fires.

Each rule looks at one factor of a network and returns the rewritten network, or None where it does not apply.
Views (slices, splits, squeezes of a factor's axes) are how a pattern disappears into its neighbours: they become
reshapes and strided slices in the generated code, which cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import sympy

from tncompiler import rewrite
from tncompiler.ir.names import fresh_name
from tncompiler.ir.network import Network
from tncompiler.ir.values import (
    ConvPattern,
    Factor,
    GatherOp,
    MergeOp,
    Select,
    Size,
    SliceOp,
    SplitOp,
    SqueezeOp,
    View,
    ViewOp,
    simplify_size,
    slice_length,
)

__all__ = ["RULES", "simplify_network", "factor_kinds"]

Rewrite = rewrite.Rewrite[Network]
Rule = rewrite.Rule[Network, bool]  # the context: whether open legs may split (a one-term diagram)

_KINDS = ("input", "pattern", "select", "delta", "fused")
ANY = frozenset(_KINDS) | frozenset(f"{kind}+view" for kind in _KINDS)
PATTERN, VIEWED_PATTERN = frozenset({"pattern"}), frozenset({"pattern+view"})


def factor_kinds(net: Network) -> list[str]:
    """Each factor's kind, `+view` where it has a view: what the rules are indexed by."""
    return [f.kind + ("+view" if f.view is not None else "") for f in net.factors]


# -- helpers ---------------------------------------------------------------------------------------------------


def _int(size: Size) -> int | None:
    return size if isinstance(size, int) else None


def _with_op(factor: Factor, op: ViewOp, legs: tuple[str, ...], net: Network) -> Factor:
    """`factor` with one more view op, its legs becoming `legs`."""
    view = factor.view or View(tuple(net.size(leg) for leg in factor.legs))
    return replace(factor, legs=legs, view=View(view.base, view.ops + (op,)))


def _carriers(net: Network, leg: str, but: int) -> list[int] | None:
    """The other factors that carry `leg`, each exactly once and none a copy tensor; None if that fails."""
    found = [k for k in net.tensors_on(leg) if k != but]
    for k in found:
        factor = net.factors[k]
        if factor.kind == "delta" or factor.legs.count(leg) != 1:
            return None
    return found


def _describe(factor: Factor) -> str:
    name = factor.name or factor.kind
    return f"{name}({', '.join(factor.legs)})"


def _rebuild(
    net: Network, factors: list[Factor], outputs: tuple[str, ...] | None = None, coefficient: sympy.Expr | None = None
) -> Network:
    """A network of `factors`; open legs no factor carries any more are dropped (the result broadcasts there)."""
    legs = {leg for f in factors for leg in f.legs}
    outputs = tuple(leg for leg in (net.outputs if outputs is None else outputs) if leg in legs)
    sizes = {k: v for k, v in net.sizes.items() if k in legs}
    return Network(factors, outputs, sizes, net.coefficient if coefficient is None else coefficient, net.lowering)


def _swap(net: Network, position: int, new: list[Factor]) -> list[Factor]:
    return list(net.factors[:position]) + new + list(net.factors[position + 1 :])


# -- rules -----------------------------------------------------------------------------------------------------


def squeeze_unit(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """x[..., a, ...] with |a| = 1 -> x[..., ...] (a copy tensor over size-1 legs is 1 and goes)."""
    factor = net.factors[position]
    unit = [k for k, leg in enumerate(factor.legs) if net.size(leg) == 1]
    if not unit or (isinstance(factor.pattern, ConvPattern | Select) and _foldable(factor)):
        return None  # a pattern's or selection's unit legs go with their own rules, which see them whole
    if factor.kind == "delta":
        return Rewrite(_rebuild(net, _swap(net, position, [])), f"squeeze: {_describe(factor)} is 1")
    new = factor
    for axis in reversed(unit):
        legs = new.legs[:axis] + new.legs[axis + 1 :]
        new = _with_op(new, SqueezeOp(axis), legs, net)
    note = f"squeeze: size-1 legs {', '.join(factor.legs[k] for k in unit)} of {_describe(factor)}"
    return Rewrite(_rebuild(net, _swap(net, position, [new])), note)


def _foldable(factor: Factor) -> bool:
    """A constant whose view pattern-slice can still fold into its parameters (or that has no view at all), or
    whose only view is tensor dropout on o (kernel-one keeps the gather)."""
    return factor.view is None or isinstance(factor.view.ops[0], SliceOp) or _gathers_on(factor, 1)


def _gathers_on(factor: Factor, axis: int) -> bool:
    """The factor's view only keeps the sampled entries of one axis (tensor dropout)."""
    return factor.view is not None and all(isinstance(op, GatherOp) and op.axis == axis for op in factor.view.ops)


def kernel_one(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """Π(i, o, k) with K = 1 -> select(i, o) = [i = o·S − P] (a strided slice; k has size 1), all in range."""
    factor = net.factors[position]
    p = factor.pattern
    if not isinstance(p, ConvPattern) or not (factor.view is None or _gathers_on(factor, 1)) or p.kernel_size != 1:
        return None
    return _as_select(net, position, (factor.legs[0], factor.legs[1]), -p.pad_left, p.stride, p.out_size, "kernel-one")


def output_one(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """Π(i, o, k) with O = 1 -> select(i, k) = [i = k·D − P] (o has size 1), all in range."""
    factor = net.factors[position]
    p = factor.pattern
    if not isinstance(p, ConvPattern) or factor.view is not None or p.out_size != 1 or p.kernel_size == 1:
        return None
    return _as_select(
        net, position, (factor.legs[0], factor.legs[2]), -p.pad_left, p.dilation, p.kernel_size, "output-one"
    )


def _as_select(
    net: Network, position: int, legs: tuple[str, str], start: int, step: int, count: Size, rule: str
) -> Rewrite | None:
    factor = net.factors[position]
    p = factor.pattern
    assert isinstance(p, ConvPattern)
    size = p.in_size
    if isinstance(size, int) and isinstance(count, int):
        if start < 0 or start + (count - 1) * step > size - 1:
            return None  # some windows reach into the padding: not a pure selection
    elif p.pad_left != 0 or p.pad_right != 0 or count != p.out_size:
        return None  # sizes bound at call time obey the size rule: without padding, every window lies inside
    select = Factor("select", "", legs, factor.span, Select(size, count, start, step))
    if factor.view is not None:  # sampled windows (kernel-one): the selection keeps the pattern's gather on o
        select = replace(select, view=View((size, count), factor.view.ops))
    dropped = [leg for leg in factor.legs if leg not in legs]
    ones = [Factor("delta", "", (leg,), factor.span) for leg in dropped]  # the size-1 leg, squeezed next
    return Rewrite(
        _rebuild(net, _swap(net, position, [select, *ones])),
        f"{rule}: {_describe(factor)} -> select({legs[0]}, {legs[1]}) start {start} step {step}",
    )


def strided_reshape(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """Π(i, o, k) with K ≤ S, P = 0, D = 1 -> i split into (o, k): a reshape (K = S, 'dense') or a reshape and a
    narrow (K < S, 'down-sampling') of every tensor on i; an open i splits too if I = O·K and it may."""
    factor = net.factors[position]
    p = factor.pattern
    if not isinstance(p, ConvPattern) or factor.view is not None or p.pad_left != 0 or p.dilation != 1:
        return None
    size, out, kernel, stride = p.in_size, p.out_size, p.kernel_size, p.stride
    i, o, k = factor.legs
    carriers = _carriers(net, i, position)
    known = isinstance(size, int) and isinstance(out, int)
    # Sizes bound at call time obey the pattern's size rule, O = floor((I − K) / S) + 1, so O·S ≤ I holds for any I
    # only when K = S (no right padding): then the windows tile the first O·S rows.
    fits = size >= out * stride if known else kernel == stride and p.pad_right == 0
    if kernel > stride or not fits or carriers is None:
        return None
    is_open = i in net.outputs
    if is_open and not (
        outputs_may_change
        and known
        and size == out * stride == out * kernel
        and o not in net.outputs
        and k not in net.outputs
    ):
        return None
    factors = list(net.factors)
    for carrier in carriers:
        factors[carrier] = _split(factors[carrier], i, (o, k), size, out, stride, kernel, net)
    del factors[position]
    # Σ_i Π[i, o, k] = 1 for every (o, k): where no tensor is left on o or k (no tensor carried i), Π was that
    # all-ones tensor, whose sums over o and k count |o| and |k| (copy-tensor rules then scale or drop them)
    factors += [Factor("delta", "", (leg,), factor.span) for leg in (o, k) if not any(leg in f.legs for f in factors)]
    outputs = tuple(x for leg in net.outputs for x in ((o, k) if leg == i else (leg,)))
    kind = "dense" if kernel == stride else "down-sampling"
    note = f"{kind}: {_describe(factor)} -> {i} split into ({o}, {k})"
    return Rewrite(_rebuild(net, factors, outputs), note, {i: (o, k)} if is_open else {})


def _split(
    factor: Factor, leg: str, into: tuple[str, str], size: Size, out: Size, stride: int, kernel: int, net: Network
) -> Factor:
    axis = factor.legs.index(leg)
    legs = factor.legs[:axis] + into + factor.legs[axis + 1 :]
    if not isinstance(size, int) or size > out * stride:
        factor = _with_op(factor, SliceOp(axis, 0, out * stride, 1), factor.legs, net)
    factor = _with_op(factor, SplitOp(axis, (out, stride)), legs, net)
    if kernel < stride:
        factor = _with_op(factor, SliceOp(axis + 1, 0, kernel, 1), legs, net)
    return factor


def pattern_slice(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """Π viewed as Π[:, a:b:s, :] -> Π with stride s·S and padding P − a·S; Π[:, :, a:b:s] -> dilation s·D and
    padding P − a·D; Π[a:b, :, :] -> I = b − a and padding P + a. The slice becomes the pattern's own parameters."""
    factor = net.factors[position]
    p = factor.pattern
    if not isinstance(p, ConvPattern) or factor.view is None or not factor.view.ops:
        return None
    op = factor.view.ops[0]
    if not isinstance(op, SliceOp) or (op.axis == 0 and op.step != 1):
        return None
    count = slice_length(op.start, op.stop, op.step)
    if op.axis == 0:
        new = replace(p, in_size=count, pad_left=p.pad_left + op.start)
    elif op.axis == 1:
        new = replace(p, out_size=count, stride=p.stride * op.step, pad_left=p.pad_left - op.start * p.stride)
    else:
        new = replace(p, kernel_size=count, dilation=p.dilation * op.step, pad_left=p.pad_left - op.start * p.dilation)
    new = _tight(new)
    rest = factor.view.ops[1:]
    view = View((new.in_size, new.out_size, new.kernel_size), rest) if rest else None
    folded = replace(factor, pattern=new, view=view)
    return Rewrite(
        _rebuild(net, _swap(net, position, [folded])), f"pattern-slice: {_describe(factor)} -> {new.describe()}"
    )


def _tight(p: ConvPattern) -> ConvPattern:
    """The right padding that the pattern's windows actually reach (it only matters for its description)."""
    if not isinstance(p.in_size, int) or not isinstance(p.out_size, int):
        return p
    return replace(p, pad_right=max(0, int(p.last_read()) - (p.in_size - 1)))


def narrow_input(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """Π whose windows touch only rows lo..hi of i, with i summed -> select(i, i') [lo:hi+1] and Π over i' (so the
    tensors on i are read only where it matters)."""
    p = _narrowable(net, position, 0)
    if p is None:
        return None
    size = int(p.in_size)
    lo = max(0, -p.pad_left)
    hi = min(size - 1, int(p.last_read()))
    narrowed = replace(p, in_size=hi - lo + 1, pad_left=p.pad_left + lo)
    return _narrowed(net, position, 0, (lo, hi, size), narrowed, "narrow-input: {pattern} reads only {leg}")


def narrow_output(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """Π whose windows o < lo or o > hi read no row of i (an input that was sliced), with o summed -> select(o, o')
    [lo:hi+1] and Π over o' (so the tensors on o, an output gradient, are read only where it matters)."""
    p = _narrowable(net, position, 1)
    if p is None:
        return None
    size, out = int(p.in_size), int(p.out_size)
    # window o reads rows o·S − P + k·D: from −P + o·S up to −P + o·S + (K−1)·D
    lo = max(0, -(((p.kernel_size - 1) * p.dilation - p.pad_left) // p.stride))  # ceil((P − (K−1)·D) / S)
    hi = min(out - 1, (size - 1 + p.pad_left) // p.stride)
    narrowed = replace(p, out_size=hi - lo + 1, pad_left=p.pad_left - lo * p.stride)
    note = "narrow-output: {pattern} reads the input only in windows {leg}"
    return _narrowed(net, position, 1, (lo, hi, out), narrowed, note)


def _narrowable(net: Network, position: int, axis: int) -> ConvPattern | None:
    """The pattern of a plain Π with known sizes whose leg `axis` is summed."""
    factor = net.factors[position]
    p = factor.pattern
    if not isinstance(p, ConvPattern) or factor.view is not None or factor.legs[axis] in net.outputs:
        return None
    return p if _int(p.in_size) is not None and _int(p.out_size) is not None else None


def _narrowed(
    net: Network, position: int, axis: int, bounds: tuple[int, int, int], narrowed: ConvPattern, note: str
) -> Rewrite | None:
    """Π's leg `axis` (of `size` entries) -> select(leg, leg')[lo:hi+1] · Π'(.., leg', ..); None if nothing to cut."""
    lo, hi, size = bounds
    if (lo, hi) == (0, size - 1) or hi < lo:
        return None
    factor = net.factors[position]
    leg = factor.legs[axis]
    inner = fresh_name(f"{leg}~", set(net.sizes))  # '~': never a result leg, which a squeeze may have dropped
    legs = factor.legs[:axis] + (inner,) + factor.legs[axis + 1 :]
    pattern = replace(factor, legs=legs, pattern=_tight(narrowed))
    select = Factor("select", "", (leg, inner), factor.span, Select(size, hi - lo + 1, lo, 1))
    sizes = {**net.sizes, inner: hi - lo + 1}
    text = note.format(pattern=_describe(factor), leg=f"{leg}[{lo}:{hi + 1}]")
    return Rewrite(
        Network(_swap(net, position, [select, pattern]), net.outputs, sizes, net.coefficient, net.lowering), text
    )


def select_identity(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """select(i, j) with I = J, start 0, step 1 -> delta(i, j)."""
    factor = net.factors[position]
    s = factor.pattern
    if not isinstance(s, Select) or factor.view is not None or (s.start, s.step) != (0, 1) or s.in_size != s.out_size:
        return None
    delta = Factor("delta", "", factor.legs, factor.span)
    return Rewrite(_rebuild(net, _swap(net, position, [delta])), f"select-identity: {_describe(factor)} -> delta")


def select_into_tensor(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """select(i, j) · x[..., i, ...] with i on no other tensor and summed -> x[..., start:stop:step, ...] on j."""
    factor = net.factors[position]
    s = factor.pattern
    gathered = factor.view is not None and _gathers_on(factor, 1)
    if not isinstance(s, Select) or (factor.view is not None and not gathered) or factor.legs[0] == factor.legs[1]:
        return None
    i, j = factor.legs
    carriers = _carriers(net, i, position)
    count = s.out_size
    if carriers is None or len(carriers) != 1 or i in net.outputs:
        return None
    target = net.factors[carriers[0]]
    axis = target.legs.index(i)
    legs = target.legs[:axis] + (j,) + target.legs[axis + 1 :]
    op = SliceOp(axis, s.start, simplify_size(s.start + (count - 1) * s.step + 1), s.step)
    factors = list(net.factors)
    factors[carriers[0]] = _with_op(target, op, legs, net)
    for gather in factor.view.ops if factor.view is not None else ():  # then keep the sampled entries of j
        assert isinstance(gather, GatherOp)
        factors[carriers[0]] = _with_op(factors[carriers[0]], GatherOp(axis, gather.index), legs, net)
    del factors[position]
    note = f"select-slice: {_describe(factor)} -> {target.name or target.kind}[{op.start}:{op.stop}:{op.step}] on {j}"
    return Rewrite(_rebuild(net, factors), note)


def prune_delta(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """delta(a, b, ...) -> its summed legs renamed to one and the copy tensor dropped where it adds nothing:
    delta(a) on a leg others carry is 1; delta(a) on a summed leg nobody else carries is |a|."""
    factor = net.factors[position]
    if factor.kind != "delta" or factor.view is not None:
        return None
    legs = list(dict.fromkeys(factor.legs))
    open_legs = [leg for leg in legs if leg in net.outputs]
    keep = open_legs[0] if open_legs else legs[0]
    rename = {leg: keep for leg in legs if leg != keep and leg not in net.outputs}
    remaining = [leg for leg in legs if leg not in rename]
    others = [f.renamed(rename) for k, f in enumerate(net.factors) if k != position]
    if len(remaining) > 1:
        if not rename:
            return None  # a diagonal between open legs: it stays
        delta = Factor("delta", "", tuple(remaining), factor.span)
        return Rewrite(
            _rebuild(net, others[:position] + [delta] + others[position:]),
            f"copy-tensor: {_describe(factor)} -> legs {', '.join(rename)} renamed to {keep}",
        )
    carried = any(keep in f.legs for f in others) or keep in net.outputs
    coefficient = net.coefficient if carried else net.coefficient * sympy.sympify(net.size(keep))
    note = f"copy-tensor: {_describe(factor)} pruned" + ("" if carried else f" (a sum over {keep}: × size({keep}))")
    return Rewrite(_rebuild(net, others, coefficient=coefficient), note)


def merge_parallel(net: Network, position: int, outputs_may_change: bool) -> Rewrite | None:
    """x[.., a, b, ..] · y[.., a, b, ..] with summed a, b always adjacent on the same tensors -> one leg (a b)."""
    factor = net.factors[position]
    for axis in range(len(factor.legs) - 1):
        a, b = factor.legs[axis], factor.legs[axis + 1]
        if a == b or a in net.outputs or b in net.outputs:
            continue
        if net.tensors_on(a) != net.tensors_on(b) or not _adjacent_everywhere(net, a, b):
            continue
        merged = f"{a}.{b}"
        factors = [_merge(f, a, b, merged, net) if a in f.legs else f for f in net.factors]
        sizes = {k: v for k, v in net.sizes.items() if k not in (a, b)}
        sizes[merged] = _product(net.size(a), net.size(b))
        new = Network(factors, net.outputs, sizes, net.coefficient, net.lowering)
        return Rewrite(new, f"merge: {a} and {b} always travel together -> one leg {merged}")
    return None


def _product(a: Size, b: Size) -> Size:
    return a * b if isinstance(a, int) and isinstance(b, int) else sympy.sympify(a) * b


def _adjacent_everywhere(net: Network, a: str, b: str) -> bool:
    for k in net.tensors_on(a):
        legs = net.factors[k].legs
        if net.factors[k].kind == "delta" or legs.count(a) != 1 or legs.count(b) != 1:
            return False
        if legs.index(b) != legs.index(a) + 1:
            return False
    return True


def _merge(factor: Factor, a: str, b: str, merged: str, net: Network) -> Factor:
    axis = factor.legs.index(a)
    legs = factor.legs[:axis] + (merged,) + factor.legs[axis + 2 :]
    return _with_op(factor, MergeOp(axis), legs, net)


# The simplification rules, in the order they are tried; each doc line is the rule's specification.
RULES: tuple[Rule, ...] = (
    Rule("squeeze", "x[.., a, ..] with |a| = 1 -> x[.., ..]", ANY, squeeze_unit),
    Rule(
        "kernel-one",
        "Π with K = 1 -> select(i, o), start −P, step S, when no window reaches the padding (a sampled o: gathered)",
        PATTERN | VIEWED_PATTERN,
        kernel_one,
    ),
    Rule(
        "output-one",
        "Π with O = 1 -> select(i, k), start −P, step D, when the window stays inside the input",
        PATTERN,
        output_one,
    ),
    Rule(
        "strided-reshape",
        "Π with K ≤ S, P = 0, D = 1 -> i split into (o, k) by reshape (and narrow if K < S)",
        PATTERN,
        strided_reshape,
    ),
    Rule(
        "pattern-slice",
        "Π sliced on o, k or i -> Π with new stride/dilation/size and padding",
        VIEWED_PATTERN,
        pattern_slice,
    ),
    Rule(
        "narrow-input",
        "Π touching only rows lo..hi of a summed i -> select(i, i')[lo:hi+1] · Π(i', o, k)",
        PATTERN,
        narrow_input,
    ),
    Rule(
        "narrow-output",
        "Π whose windows outside lo..hi of a summed o read no input row -> select(o, o')[lo:hi+1] · Π(i, o', k)",
        PATTERN,
        narrow_output,
    ),
    Rule(
        "select-identity",
        "select(i, j) with I = J, start 0, step 1 -> delta(i, j)",
        frozenset({"select"}),
        select_identity,
    ),
    Rule(
        "select-slice",
        "select(i, j) · x[.., i, ..] with i summed -> x[.., start:stop:step, ..]",
        frozenset({"select", "select+view"}),
        select_into_tensor,
    ),
    Rule(
        "copy-tensor",
        "delta(a, b) with a summed -> a renamed b; delta(a) -> 1 (or |a| when a is summed alone)",
        frozenset({"delta"}),
        prune_delta,
    ),
    Rule("merge", "summed legs a, b adjacent on the same tensors -> one leg (a b)", ANY, merge_parallel),
)


def simplify_network(
    net: Network, outputs_may_change: bool, check: Callable[[Network], None] | None = None
) -> tuple[Network, list[str], dict[str, tuple[str, ...]]]:
    """Apply the first rule that fires until none does; returns the notes and the open legs that split."""
    net, done = rewrite.fixpoint(net, RULES, factor_kinds, outputs_may_change, check)
    splits: dict[str, tuple[str, ...]] = {}
    for step in done:
        splits.update(step.extra)
    return net, [step.note for step in done], splits

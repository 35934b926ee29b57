"""Memory estimate: the most a diagram's generated function holds at once, in float64 (estimate_bytes).

It follows what the generated code allocates (the rules of schedule/), not the network as the file writes it: a term
lowered to a native kernel is one PyTorch call (its output, the copies its operands need, and the unfolded input that
PyTorch's CPU kernels build for float64), index patterns applied as window views cost nothing until a reshape into a
GEMM operand copies them, pads and the gathers of sampled entries copy (the kept part), constants are counted once, a
shared sub-network once, and every variable of the function lives until it returns. It runs before the schedule (the
scheduled ops carry no shapes for views and kernels), so it follows the same rules on the optimised network;
tests/schedule/test_guard_estimate.py holds it within a factor of 3 of the measured peak.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace

import sympy

from tncompiler.ir.network import Diagram, Network, natural_shape
from tncompiler.ir.values import (
    ConvPattern,
    Factor,
    Fused,
    MergeOp,
    NativeConv,
    Size,
    SliceOp,
    SplitOp,
    SqueezeOp,
    ViewOp,
    WindowOp,
    gathers_last,
    kept_symbol,
    slice_length,
)
from tncompiler.order import Plan, Regimes, evaluate, plan_network, summed_runs
from tncompiler.passes.lower import folded_bias

__all__ = ["BYTES_PER_ENTRY", "estimate_bytes"]

BYTES_PER_ENTRY = 8  # float64, the widest dtype the generated code is used with


def estimate_bytes(diagram: Diagram) -> int:
    """The most memory the diagram's generated function holds at once, beyond its arguments, in float64: its
    variables (which live until it returns), the constants it caches, and the brief copies inside a step (a GEMM
    operand laid out, a kernel's unfolded input). Call-time sizes count as 1; sampled sizes as their expected value."""
    return _Estimate(diagram).run() * BYTES_PER_ENTRY


# -- the estimate ---------------------------------------------------------------------------------------------------
_VARIABLES = itertools.count()  # tells the variables of the generated code apart


@dataclass(frozen=True)
class _Tensor:
    """A value of the generated code: its entries, its legs in axis order, whether it is a strided view (windows, a
    slice, a permutation, an expansion) that a reshape into a matrix copies, whether the step that made it made new
    storage, and which variable holds it (equal steps of renamed legs, the two copies of x in KFAC, share one)."""

    entries: int
    legs: tuple[str, ...]
    strided: bool = False
    fresh: bool = False
    variable: int = field(default_factory=lambda: next(_VARIABLES))


class _Memory:
    """Entries alive while the function runs: `live` (held until it returns) and the most at any moment."""

    def __init__(self) -> None:
        self.live = self.peak = 0

    def keep(self, entries: int) -> None:
        self.live += entries
        self.peak = max(self.peak, self.live)

    def step(self, brief: int, kept: int) -> None:
        """A call that copies `brief` entries for itself, then returns `kept` new ones."""
        self.peak = max(self.peak, self.live + brief + kept)
        self.live += kept

    def copy(self) -> _Memory:
        other = _Memory()
        other.live, other.peak = self.live, self.peak
        return other


class _Estimate:
    """One diagram's function, step by step, as schedule/build.py makes it."""

    def __init__(self, diagram: Diagram) -> None:
        self.diagram = diagram
        self.regimes = Regimes(diagram.size_rules)
        # sampled sizes at their expected value, as the schedule plans them (contract.py)
        self.expected = {
            kept_symbol(s.index): max(1, round(s.p * int(s.size))) for s in diagram.samplers if isinstance(s.size, int)
        }
        self.memory = _Memory()
        self.made: dict[tuple[object, ...], _Tensor] = {}  # operands, made once per function (Operands.of)
        self.constants: set[object] = set()
        self.shared: dict[str, _Tensor] = {}

    def n(self, size: Size | sympy.Expr) -> int:
        return max(evaluate(size, self.expected), 0)

    def entries(self, net: Network, legs: tuple[str, ...]) -> int:
        return math.prod(self.n(net.size(leg)) for leg in legs)

    def run(self) -> int:
        for shared in self.diagram.shared:
            net = shared.network
            self.shared[shared.name] = self.network(net, net.outputs)
        folded = _folded_bias(self.diagram)
        results = [
            self.network(term, tuple(leg for leg in self.diagram.layout.legs if leg in term.outputs))
            for k, term in enumerate(self.diagram.terms)
            if k != folded
        ]
        self.assemble(results)
        return self.memory.peak

    def network(self, net: Network, target: tuple[str, ...]) -> _Tensor:
        if net.lowering.native is not None:
            return self.kernel(net, net.lowering.native, target)
        return self.contraction(net, target)

    # -- the tensors a term starts from (schedule/operands.py) ------------------------------------------------------
    def operand(self, factor: Factor, net: Network, kernel: bool = False) -> _Tensor:
        sizes = tuple(str(net.size(x)) for x in factor.legs)
        pattern = factor.pattern
        if isinstance(pattern, Fused) and factor.view is None:  # equal products of constants: one variable
            key: tuple[object, ...] = (_structure(pattern), sizes)
        else:
            key = (factor.kind, factor.name, pattern, factor.view, sizes, kernel)
        if key not in self.made:
            self.made[key] = self.chain(factor, self.base(factor, net))
        return replace(self.made[key], legs=factor.legs)

    def base(self, factor: Factor, net: Network) -> int:
        """The factor's tensor before its view: an argument (free), a shared result, or a cached constant."""
        shape: tuple[Size, ...] | None = factor.view.base if factor.view is not None else None
        if factor.kind == "input":
            return math.prod(self.n(s) for s in shape) if shape else self.entries(net, factor.legs)
        if factor.kind == "shared":
            return self.shared[factor.name].entries
        if isinstance(factor.pattern, Fused):
            fused = factor.pattern
            for part in fused.parts:
                self.constant(part, self.constant_shape(part))
            sizes = dict(fused.sizes)
            return self.constant(_structure(fused), tuple(sizes[leg] for leg in fused.legs))
        return self.constant(factor, self.constant_shape(factor))

    def constant_shape(self, factor: Factor) -> tuple[Size, ...]:
        natural = natural_shape(factor)
        if natural is not None:
            return natural
        # a copy tensor: `_delta(size, legs)` is dense, size ** legs entries
        base = factor.view.base if factor.view is not None else tuple(self.diagram.sizes.get(x, 1) for x in factor.legs)
        return (base[0],) * len(base) if base else ()

    def constant(self, what: object, shape: tuple[Size, ...]) -> int:
        """A constant built once per shape and kept in the module's cache."""
        entries = math.prod(self.n(s) for s in shape)
        key = (what if not isinstance(what, Factor) else (what.kind, what.pattern), tuple(map(str, shape)))
        if key not in self.constants:
            self.constants.add(key)
            self.memory.keep(entries)
        return entries

    def chain(self, factor: Factor, entries: int) -> _Tensor:
        """The factor's view: slices, splits, squeezes and windows are views; pads, gathers and merges of a strided
        view copy."""
        if factor.view is None:
            strided = factor.kind == "shared" and self.shared[factor.name].strided
            return _Tensor(entries, factor.legs, strided)
        shape = [self.n(s) for s in factor.view.base]
        strided, padded = False, False
        ops = gathers_last(factor.view.ops)
        for position, op in enumerate(ops):
            if isinstance(op, WindowOp) and not padded:  # every axis of a run of windows padded at once
                padded = True
                grown = self.padded(shape, ops[position:])
                if grown != math.prod(shape):
                    self.memory.keep(grown)
            strided = self.view(shape, op, strided)
        return _Tensor(math.prod(shape), factor.legs, strided)

    def view(self, shape: list[int], op: ViewOp, strided: bool) -> bool:
        """`shape` after one view op; whether the tensor is strided then."""
        if isinstance(op, SliceOp):
            length = self.n(slice_length(op.start, op.stop, op.step))
            strided = strided or (length != shape[op.axis] and (op.axis > 0 or op.step != 1))
            shape[op.axis] = length
        elif isinstance(op, SplitOp):
            shape[op.axis : op.axis + 1] = [self.n(s) for s in op.sizes]
        elif isinstance(op, MergeOp):
            shape[op.axis : op.axis + 2] = [shape[op.axis] * shape[op.axis + 1]]
            if strided:  # a reshape that merges strided axes copies
                self.memory.keep(math.prod(shape))
                strided = False
        elif isinstance(op, SqueezeOp):
            del shape[op.axis]
        elif isinstance(op, WindowOp):
            shape[op.axis : op.axis + 1] = [self.n(op.pattern.out_size), op.pattern.kernel_size]
            strided = True
        else:  # a gather of the kept entries: a copy of them
            shape[op.axis] = self.n(kept_symbol(op.index))
            self.memory.keep(math.prod(shape))
            strided = False
        return strided

    def padded(self, shape: list[int], ops: tuple[ViewOp, ...]) -> int:
        """The entries of a tensor padded for a run of windows (each axis by its pattern's padding; a right-hand
        padding known only at call time is not counted, as other call-time sizes are not)."""
        grown = float(math.prod(shape))
        for op in ops:
            if not isinstance(op, WindowOp):
                break
            p, right = op.pattern, op.pattern.right_pad()
            size = max(self.n(p.in_size), 1)
            grown *= max(size + p.pad_left + (right if isinstance(right, int) else 0), 1) / size
        return round(grown)

    # -- a contraction (schedule/contract.py) --------------------------------------------------------------------
    def contraction(self, net: Network, target: tuple[str, ...]) -> _Tensor:
        plans = plan_network(net, self.expected, self.regimes)
        starts = [self.operand(f, net) for f in net.factors]
        best: tuple[_Memory, _Tensor] | None = None
        for plan in plans:  # the code picks one per shape: the one that needs least
            memory = self.memory.copy()
            result = self.plan(net, plan, starts, target, memory)
            if best is None or memory.peak < best[0].peak:
                best = (memory, result)
        assert best is not None
        self.memory, result = best
        fresh = result.fresh
        if net.coefficient != 1 and (net.coefficient == -1 or not fresh):
            self.memory.keep(result.entries)  # scaled into a new tensor (in place where the result is new)
            return _fresh(result.entries, result.legs)
        if not fresh and net.coefficient == 1 and all(f.kind not in ("input", "shared") for f in net.factors):
            self.memory.keep(result.entries)  # a copy of a cached constant, which the caller may change
            return _fresh(result.entries, result.legs)
        return result

    def plan(
        self, net: Network, plan: Plan, starts: list[_Tensor], target: tuple[str, ...], memory: _Memory
    ) -> _Tensor:
        tensors = list(starts)
        if not plan.steps:
            if not starts:
                memory.keep(1)
                return _fresh(1, ())
            return self.single(net, starts[0], target, memory)
        done: dict[tuple[object, ...], _Tensor] = {}
        result = tensors[0]
        for k, step in enumerate(plan.steps):
            legs = target if k == len(plan.steps) - 1 else step.legs
            operands = [tensors[i] for i in step.operands]
            key = (*(t.variable for t in operands), _renamed(*(t.legs for t in operands), legs))
            if key in done and k < len(plan.steps) - 1:
                result = replace(done[key], legs=legs)  # the same step over renamed legs: its variable again
            elif len(operands) == 1:
                result = self.single(net, operands[0], legs, memory)
            else:
                result = self.pair(net, operands[0], operands[1], legs, memory)
            done.setdefault(key, result)
            tensors.append(result)
        return result

    def single(self, net: Network, a: _Tensor, legs: tuple[str, ...], memory: _Memory) -> _Tensor:
        if a.legs == legs:
            return replace(a, fresh=False)
        if set(legs) == set(a.legs):
            return replace(a, legs=legs, strided=True, fresh=False)  # a permutation: a view
        entries = self.entries(net, legs)
        if set(legs) < set(a.legs) and tuple(x for x in a.legs if x in legs) == legs:
            # one .sum per group of summed axes (order.summed_runs): each but the last leaves a temporary
            brief, left = 0, a.entries
            for run in summed_runs(a.legs, legs)[:-1]:
                left //= max(math.prod(self.n(net.size(a.legs[axis])) for axis in run), 1)
                brief += left
            memory.step(brief, entries)
        else:
            memory.keep(entries)  # a one-operand einsum that sums
        return _fresh(entries, legs)

    def pair(self, net: Network, a: _Tensor, b: _Tensor, legs: tuple[str, ...], memory: _Memory) -> _Tensor:
        entries = self.entries(net, legs)
        if a.legs == b.legs and len(set(a.legs)) == len(a.legs):  # a product, then a sum (x ⊙ x, J ⊙ J)
            memory.step(a.entries if set(legs) != set(a.legs) else 0, entries)
            return _fresh(entries, legs, tuple(x for x in a.legs if x in legs) != legs)
        if a.variable == b.variable:  # a Gram product: the operand laid out once, then multiplied by its transpose
            memory.keep(a.entries)
            memory.keep(entries)
            return _fresh(entries, legs)
        copies = sum(t.entries for t, other in ((a, b), (b, a)) if _copied(t, other, legs))
        memory.step(copies, entries)
        batch = tuple(x for x in a.legs if x in b.legs and x in legs)
        natural = batch + tuple(x for x in a.legs if x not in b.legs) + tuple(x for x in b.legs if x not in a.legs)
        return _fresh(entries, legs, natural != legs)

    # -- a native kernel (schedule/kernels.py) -----------------------------------------------------------------
    def kernel(self, net: Network, m: NativeConv, target: tuple[str, ...]) -> _Tensor:
        patterns = [net.factors[k] for k in m.patterns]
        conv = [f.pattern for f in patterns if isinstance(f.pattern, ConvPattern)]
        spatial = [tuple(f.legs[j] for f in patterns) for j in range(3)]
        tiled = [f.legs[1] in m.tiled for f in patterns]
        size = self.n
        batch = math.prod(size(net.size(x)) for x in m.batch)
        groups = math.prod(size(net.size(x)) for x in m.groups)
        data_channels = math.prod(size(net.size(x)) for x in m.data_channels)
        other_channels = math.prod(size(net.size(x)) for x in m.other_channels)
        inputs = [size(p.in_size) for p in conv]
        outputs = [size(net.size(x)) for x in spatial[1]]  # the kept windows where sampled
        kernels = [p.kernel_size for p in conv]
        data_spatial = spatial[1] if m.role == "transpose" else spatial[0]
        self.arranged(net, m.data, (m.batch, m.groups + m.data_channels, *((x,) for x in data_spatial)))
        other_axes = {
            "forward": (m.groups + m.other_channels, m.data_channels, *((x,) for x in spatial[2])),
            "transpose": (m.groups + m.data_channels, m.other_channels, *((x,) for x in spatial[2])),
            "weight": (m.batch, m.groups + m.other_channels, *((x,) for x in spatial[1])),
        }[m.role]
        self.arranged(net, m.other, other_axes)
        if m.role != "transpose":
            rows = [k * o if t else i for i, k, o, t in zip(inputs, kernels, outputs, tiled, strict=True)]
            data = batch * groups * data_channels
            if any(tiled):  # the rows of the kept windows, gathered
                self.memory.keep(data * math.prod(rows))
            elif any(p.pad_left < 0 or _overhang(p) > p.pad_left for p in conv):  # padded (or cut) before the call
                self.memory.keep(data * math.prod(i + max(p.pad_left, 0) + max(_overhang(p), 0)
                                                  for i, p in zip(inputs, conv, strict=True)))  # fmt: skip
            if m.masked:  # grad_y times the mask of the kept rows
                self.memory.keep(batch * groups * other_channels * math.prod(size(p.out_size) for p in conv))
        if m.role == "forward":
            output = batch * groups * other_channels * math.prod(outputs)
        elif m.role == "weight":
            output = groups * other_channels * data_channels * math.prod(kernels)
        else:
            output = batch * groups * other_channels * math.prod(inputs)
            if any(tiled):  # the kept windows' taps, added into zeros of the full size
                self.memory.keep(output)
                output = batch * groups * other_channels * math.prod(k * o for k, o in zip(kernels, outputs))
        # PyTorch's CPU kernels (float64) unfold the input, one group at a time: [batch, channels·K, positions]
        plain = all(k == 1 and p.stride == 1 and p.pad_left == 0 and _overhang(p) <= 0 for k, p in zip(kernels, conv))
        channels = other_channels if m.role == "transpose" else data_channels
        unfolded = 0 if plain else batch * channels * math.prod(kernels) * math.prod(outputs)
        self.memory.step(unfolded + (output if groups > 1 and not plain else 0), output)
        if net.coefficient == -1:
            self.memory.keep(output)  # negated into a new tensor (other scales are in place)
        out = {
            "forward": (*m.batch, *m.groups, *m.other_channels, *spatial[1]),
            "transpose": (*m.batch, *m.groups, *m.other_channels, *spatial[0]),
            "weight": (*m.groups, *m.other_channels, *m.data_channels, *spatial[2]),
        }[m.role]
        return _fresh(output, target, out != target)  # permuted into the target's order: a strided view

    def arranged(self, net: Network, position: int, axes: tuple[tuple[str, ...], ...]) -> None:
        """A kernel operand laid out as the kernel wants it: the argument itself where it is so, else its view,
        permuted and reshaped (a copy where it needs a permutation or is strided)."""
        factor = net.factors[position]
        if factor.kind == "input" and factor.view is None:
            layout = next(a.layout.axes for a in self.diagram.arguments if a.name == factor.name)
            if layout == axes:
                return
        t = self.operand(factor, net, kernel=True)
        order = tuple(leg for axis in axes for leg in axis)
        if t.legs != order or (t.strided and any(len(axis) != 1 for axis in axes)):
            self.memory.keep(t.entries)

    # -- the sum of the terms and the result's layout (schedule/build.py) --------------------------------------
    def assemble(self, results: list[_Tensor]) -> None:
        layout = self.diagram.layout
        full = math.prod(self.n(self.diagram.sizes[leg]) for leg in layout.legs)
        if not results:
            self.memory.keep(full)  # zeros
            return
        if len(results) > 1:
            self.memory.step(full if len(results) > 2 else 0, full)  # term1 + term2 (+ ...): one temporary
            result = _Tensor(full, layout.legs)
        else:
            result = results[0]
            if set(result.legs) != set(layout.legs):
                result = _Tensor(full, layout.legs, True)  # broadcast: an expanded view
        if any(len(axis) != 1 for axis in layout.axes) and result.strided:
            self.memory.keep(result.entries)  # the grouping reshape copies a strided result


def _fresh(entries: int, legs: tuple[str, ...], strided: bool = False) -> _Tensor:
    """New storage made by a step (a product, a sum, a kernel's output)."""
    return _Tensor(entries, legs, strided, True)


def _structure(fused: Fused) -> tuple[object, ...]:
    """A product of constants up to the names of its legs."""
    parts = tuple((part.kind, part.pattern, part.view) for part in fused.parts)
    return (parts, _renamed(*(part.legs for part in fused.parts), fused.legs))


def _renamed(*legs: tuple[str, ...]) -> tuple[tuple[int, ...], ...]:
    """Legs as the order in which their names first appear: equal for equal steps over renamed legs (the letters of
    an einsum, the dims of a tensordot)."""
    first: dict[str, int] = {}
    return tuple(tuple(first.setdefault(leg, len(first)) for leg in group) for group in legs)


def _copied(t: _Tensor, other: _Tensor, result: tuple[str, ...]) -> bool:
    """Whether torch.tensordot / torch.einsum copy `t` to make it a matrix (or a batch of matrices): a strided view
    always, else where its legs are not [batch..., free..., summed...] or [batch..., summed..., free...], or where it
    has legs of its own to sum first."""
    if t.strided:
        return True
    kinds: list[str] = []
    for leg in t.legs:
        kind = ("batch" if leg in result else "summed") if leg in other.legs else ("free" if leg in result else "own")
        if not kinds or kinds[-1] != kind:
            kinds.append(kind)
    if "own" in kinds:
        return True
    while kinds and kinds[0] == "batch":
        kinds.pop(0)
    return "batch" in kinds or len(kinds) > 2


def _overhang(p: ConvPattern) -> int:
    """The rows past the input's end that the last window reads (negative: rows no window reads)."""
    if not isinstance(p.in_size, int) or not isinstance(p.out_size, int):
        return p.pad_right
    return int(p.last_read()) - (p.in_size - 1)


def _folded_bias(diagram: Diagram) -> int | None:
    """The position of a bias term that a convolution's kernel adds itself (the schedule's rule, passes/lower.py)."""
    folded = folded_bias(diagram)
    return None if folded is None else folded[1]

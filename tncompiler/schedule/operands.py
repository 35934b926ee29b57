"""The tensors a term starts from: arguments split into their legs, cached constants (patterns, selections, copy
tensors, fused groups), and the views of either (slices, reshapes, windows, gathers of sampled entries)."""

from __future__ import annotations

import string
from dataclasses import replace

import sympy

from tncompiler.errors import TncError
from tncompiler.ir.names import fresh_name
from tncompiler.ir.network import Network, natural_shape
from tncompiler.ir.values import (
    ConvPattern,
    Factor,
    Fused,
    MergeOp,
    Select,
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
from tncompiler.schedule.context import Context
from tncompiler.schedule.ops import (
    Assign,
    Expr,
    Index,
    Lambda,
    Lit,
    Name,
    SizeOf,
    Slice,
    Tuple,
    call,
    method,
)

__all__ = ["LegNames", "Operands", "einsum", "pad"]

_LETTERS = string.ascii_lowercase + string.ascii_uppercase
_ALL = Slice()
_DOTS = Lit("...")


def einsum(operands: list[Expr], legs: list[tuple[str, ...]], result: tuple[str, ...]) -> Expr:
    """torch.einsum with letters given in order of appearance (so equal steps are equal expressions)."""
    order = list(dict.fromkeys(leg for x in [*legs, result] for leg in x))
    if len(order) > len(_LETTERS):
        raise TncError(f"an einsum step needs {len(order)} indices; torch.einsum takes at most {len(_LETTERS)}")
    letters = {leg: _LETTERS[k] for k, leg in enumerate(order)}
    spec = ",".join("".join(letters[leg] for leg in x) for x in legs) + "->" + "".join(letters[leg] for leg in result)
    return call("torch.einsum", Lit(spec), *operands)


def pad(ctx: Context, expr: Expr, pairs: list[tuple[Size, Size]]) -> Expr:
    """`expr` padded by (left, right) pairs of its last axes, in order: F.pad where every amount is a known
    non-negative int, else the helper `_pad`, which also crops (any amount) and copies nothing for zeros."""
    amounts = Tuple(tuple(SizeOf(amount) for left, right in reversed(pairs) for amount in (left, right)))
    if all(isinstance(amount, int) and amount >= 0 for pair in pairs for amount in pair):
        return call("torch.nn.functional.pad", expr, amounts)
    return call(ctx.helper("_pad"), expr, amounts)


class LegNames:
    """The file's own names for a network's legs, for the comments on its code: a copy the compiler made of an index
    (`i1~4`) is shown by the index's name where no other leg of the network has it (else primed: i1', i1''), and
    legs that simplify merged (`o1.o2`) as the file groups axes, (o1 o2)."""

    def __init__(self, legs: set[str]) -> None:
        atoms = {atom for leg in legs for atom in leg.split(".")}
        taken = {atom for atom in atoms if "~" not in atom}
        self.atoms = {atom: atom for atom in taken}
        for atom in sorted(atoms - taken, key=lambda atom: (atom.split("~")[0], len(atom), atom)):
            self.atoms[atom] = fresh_name(atom.split("~")[0], taken)

    def leg(self, leg: str) -> str:
        parts = [self.atoms.get(atom, atom.split("~")[0]) for atom in leg.split(".")]  # else a leg of a step's own
        return parts[0] if len(parts) == 1 else f"({' '.join(parts)})"

    def text(self, legs: tuple[str, ...]) -> str:
        """`[a, b, ..]`, as a comment shows a tensor's legs."""
        return f"[{', '.join(self.leg(leg) for leg in legs)}]"


class Operands:
    """The starting tensor of each factor, made once per function (equal factors share it)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.names: dict[int, LegNames] = {}
        self.made: dict[tuple[object, ...], Expr] = {}
        self.fused: dict[Expr, Expr] = {}
        self.stored: dict[str, tuple[str, ...]] = {}  # shared sub-network -> its open legs in its variable's order

    def shown(self, network: Network) -> LegNames:
        """The names that comments give the legs of `network` (a term or a shared sub-network)."""
        if id(network) not in self.names:
            self.names[id(network)] = LegNames(set(network.sizes))
        return self.names[id(network)]

    def of(self, factor: Factor, network: Network) -> Expr:
        sizes = tuple(str(network.size(leg)) if leg in network.sizes else "" for leg in factor.legs)
        key = (factor.kind, factor.name, factor.pattern, factor.view, sizes)
        if key not in self.made:
            base = self._base(factor, network)
            if factor.view is None:
                self.made[key] = base
            else:
                note = self.shown(network).text(factor.legs)
                self.made[key] = self.ctx.assign(
                    f"{factor.name or factor.kind}_view", self.chain(factor, base), "view", note
                )
        return self.made[key]

    def unmerged(self, factor: Factor, network: Network) -> tuple[Factor, tuple[str, ...]] | None:
        """The factor before the merges that end its view (a reshape, which copies a strided view), each merged leg
        split again, and the merged legs; None where its view ends otherwise. For a step that only sums the merged
        legs, which needs no merge. `of` makes its tensor."""
        ops = gathers_last(factor.view.ops) if factor.view is not None else ()
        kept = len(ops)
        while kept and isinstance(ops[kept - 1], MergeOp):
            kept -= 1
        if factor.view is None or kept == len(ops):
            return None
        legs, merged = list(factor.legs), []
        for op in reversed(ops[kept:]):
            assert isinstance(op, MergeOp)
            merged.append(legs[op.axis])
            legs[op.axis : op.axis + 1] = _parts(legs[op.axis], set(legs) | set(network.sizes))
        return replace(factor, legs=tuple(legs), view=replace(factor.view, ops=ops[:kept])), tuple(merged)

    def _base(self, factor: Factor, network: Network) -> Expr:
        """The factor's tensor before its view: an argument split into its legs, or a cached constant."""
        if factor.kind == "input":
            argument = Name(self.ctx.args[factor.name])
            layout = next(a.layout for a in self.ctx.diagram.arguments if a.name == factor.name)
            base = [network.size(leg) for leg in factor.legs] if factor.view is None else list(factor.view.base)
            if len(base) == len(layout.axes):
                return argument
            shape = [SizeOf(s) for s in base]
            return self.ctx.assign(f"{factor.name}_legs", method(argument, "reshape", *shape), "view")
        if factor.kind == "shared":
            return self._shared(factor, network)
        if isinstance(factor.pattern, Fused):
            return self._fused(factor.pattern)
        return self.ctx.assign(factor.name or factor.kind, self.constant(factor), "constant", _described(factor))

    def _shared(self, factor: Factor, network: Network) -> Expr:
        """A shared sub-network's result, computed before the terms with one axis per open leg (in the order `stored`
        says). Simplify may have dropped size-1 open legs of the sub-network, which its readers still carry: they
        come back as size-1 axes at the end, a view."""
        var = Name(self.ctx.shared[factor.name])
        if len(self._outputs(factor.name)) == len(factor.legs):
            return var
        shape = [SizeOf(network.size(leg)) for leg in self.legs(factor, network)]
        return self.ctx.assign(f"{factor.name}_legs", method(var, "reshape", *shape), "view")

    def legs(self, factor: Factor, network: Network) -> tuple[str, ...]:
        """The legs that the axes of `of(factor)` hold, in order: the factor's own, but for a shared sub-network,
        whose reader names its open legs in their order in the network (size-1 ones perhaps dropped since) while its
        variable may hold them in its kernel's order."""
        if factor.kind != "shared":
            return factor.legs
        outputs = self._outputs(factor.name)
        stored = self.stored.get(factor.name, outputs)
        shared = self._network(factor.name)
        at = _aligned([shared.size(leg) != 1 for leg in outputs], [network.size(leg) != 1 for leg in factor.legs])
        held = [at[outputs.index(leg)] for leg in stored]
        held += [k for k in range(len(factor.legs)) if k not in held]  # the dropped size-1 legs
        return tuple(factor.legs[k] for k in held)

    def _outputs(self, name: str) -> tuple[str, ...]:
        return self._network(name).outputs

    def _network(self, name: str) -> Network:
        return next(s.network for s in self.ctx.diagram.shared if s.name == name)

    def constant(self, factor: Factor) -> Expr:
        """A call that builds (or fetches from the cache) a pattern, selection or copy tensor, before its view."""
        p, ctx = factor.pattern, self.ctx
        device, dtype = Name("device"), Name("dtype")
        if isinstance(p, ConvPattern):
            shape = (SizeOf(p.in_size), SizeOf(p.out_size), Lit(p.kernel_size))
            return call(
                ctx.helper("_conv_pattern"), *shape, Lit(p.stride), Lit(p.pad_left), Lit(p.dilation), device, dtype
            )
        if isinstance(p, Select):
            size = (SizeOf(p.in_size), SizeOf(p.out_size))
            return call(ctx.helper("_select"), *size, Lit(p.start), Lit(p.step), device, dtype)
        base = (
            factor.view.base if factor.view is not None else tuple(ctx.diagram.sizes.get(leg, 1) for leg in factor.legs)
        )
        return call(ctx.helper("_delta"), SizeOf(base[0]), Lit(len(base)), device, dtype)

    def _fused(self, fused: Fused) -> Expr:
        """Constants contracted once per call-time shape, device and dtype, then cached (equal ones shared)."""
        parts = [self.chain(part, self.constant(part)) for part in fused.parts]
        product = einsum(parts, [part.legs for part in fused.parts], fused.legs)
        if product not in self.fused:
            ctx = self.ctx
            var = ctx.var("fused")
            shape = [size for part in fused.parts for size in natural_shape(part) or ()]
            symbols = sorted(set().union(*(sympy.sympify(size).free_symbols for size in shape)), key=str)
            key = Tuple((Lit(f"{ctx.name}.{var}"), *(SizeOf(s) for s in symbols), Name("device"), Name("dtype")))
            value = call(ctx.helper("_cached"), key, Lambda(product))
            ctx.emit(Assign(var, value, "constant", f"{fused.describe()}, contracted once per shape"))
            self.fused[product] = Name(var)
        return self.fused[product]

    def chain(self, factor: Factor, base: Expr) -> Expr:
        """The factor's view ops as PyTorch views: slicing, reshape, squeeze, windows, gathers."""
        if factor.view is None:
            return base
        shape: list[Size] = list(factor.view.base)
        expr, padded = base, False
        ops = gathers_last(factor.view.ops)
        for position, op in enumerate(ops):
            if isinstance(op, WindowOp) and not padded:
                expr, padded = self._pad_windows(expr, shape, ops, position), True  # every window axis at once
            expr, shape = self._view(expr, shape, op)
        return expr

    def _pad_windows(self, expr: Expr, shape: list[Size], ops: tuple[ViewOp, ...], first: int) -> Expr:
        """Pad every axis of a run of windows at once, before the first unfold: padding after an unfold would copy
        the (larger) windowed view."""
        axes: dict[int, tuple[Size, Size]] = {}
        earlier: list[int] = []
        for op in ops[first:]:
            if not isinstance(op, WindowOp):
                break
            axis = op.axis
            for split in reversed(earlier):  # undo the axes that the run's earlier windows inserted
                axis -= 1 if axis > split else 0
            earlier.append(op.axis)
            axes[axis] = (op.pattern.pad_left, op.pattern.right_pad())
        if all(pair == (0, 0) for pair in axes.values()):
            return expr
        return pad(self.ctx, expr, [axes.get(a, (0, 0)) for a in range(min(axes), len(shape))])

    def _view(self, expr: Expr, shape: list[Size], op: ViewOp) -> tuple[Expr, list[Size]]:
        if isinstance(op, SliceOp):
            step = None if op.step == 1 else Lit(op.step)
            bounds = Slice(Lit(op.start), SizeOf(op.stop), step)
            shape[op.axis] = slice_length(op.start, op.stop, op.step)
            return Index(expr, (*(_ALL,) * op.axis, bounds)), shape
        if isinstance(op, SplitOp | MergeOp):
            if isinstance(op, SplitOp):
                shape[op.axis : op.axis + 1] = list(op.sizes)
            else:
                shape[op.axis : op.axis + 2] = [sympy.sympify(shape[op.axis]) * shape[op.axis + 1]]
            return method(expr, "reshape", *(SizeOf(s) for s in shape)), shape
        if isinstance(op, SqueezeOp):
            del shape[op.axis]
            return method(expr, "squeeze", Lit(op.axis)), shape
        if isinstance(op, WindowOp):
            return _window(expr, shape, op)
        shape[op.axis] = kept_symbol(op.index)
        kept = Name(self.ctx.samplers[op.index])
        if op.axis < len(shape) - 1:
            return method(expr, "index_select", Lit(op.axis), kept), shape
        return call(self.ctx.helper("_take"), expr, Lit(op.axis), kept), shape  # index_select is slow on the last axis


def _parts(leg: str, taken: set[str]) -> tuple[str, str]:
    """Names for the two legs that simplify merged into `leg` (named `a.b`): theirs where free, else new ones."""
    first, dot, second = leg.rpartition(".")
    if dot and first != second and not {first, second} & taken:
        return first, second
    return fresh_name(f"{leg}~", set(taken)), fresh_name(f"{leg}~", set(taken) | {f"{leg}~"})


def _aligned(outputs: list[bool], reader: list[bool]) -> list[int]:
    """For each open leg of a shared sub-network (True: more than one entry), the position of its reader's leg. The
    reader's legs are the sub-network's legs as shared, of which simplify drops size-1 ones, keeping the order; a
    size-1 leg may stand for any other."""
    positions, j = [], 0
    for wide in outputs:
        while j < len(reader) and reader[j] != wide:
            assert not reader[j], "a shared sub-network lost a leg of more than one entry"
            j += 1
        assert j < len(reader), "a shared sub-network has more open legs than its reader"
        positions.append(j)
        j += 1
    assert not any(reader[j:]), "a shared sub-network lost a leg of more than one entry"
    return positions


def _window(expr: Expr, shape: list[Size], op: WindowOp) -> tuple[Expr, list[Size]]:
    """x[.., i, ..] -> x[.., o, k, ..] = x_padded[.., o·S + k·D, ..]: strided windows (padded already)."""
    p = op.pattern
    expr = method(expr, "unfold", Lit(op.axis), Lit(p.extent), Lit(p.stride))
    if p.dilation != 1:
        expr = Index(expr, (_DOTS, Slice(None, None, Lit(p.dilation))))
    shape[op.axis : op.axis + 1] = [p.out_size, p.kernel_size]
    return method(expr, "movedim", Lit(-1), Lit(op.axis + 1)), shape


def _described(factor: Factor) -> str:
    p = factor.pattern
    return p.describe() if isinstance(p, ConvPattern | Select) else "copy tensor"

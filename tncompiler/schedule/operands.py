"""The tensors a term starts from: arguments split into their legs, cached constants (patterns, selections, copy
tensors, fused groups), and the views of either (slices, reshapes, windows, gathers of sampled entries)."""

from __future__ import annotations

import string

import sympy

from tncompiler.errors import TncError
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

__all__ = ["Operands", "einsum", "pad"]

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


class Operands:
    """The starting tensor of each factor, made once per function (equal factors share it)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.made: dict[tuple[object, ...], Expr] = {}
        self.fused: dict[Expr, Expr] = {}

    def of(self, factor: Factor, network: Network) -> Expr:
        sizes = tuple(str(network.size(leg)) for leg in factor.legs)
        key = (factor.kind, factor.name, factor.pattern, factor.view, sizes)
        if key not in self.made:
            base = self._base(factor, network)
            if factor.view is None:
                self.made[key] = base
            else:
                note = f"[{', '.join(factor.legs)}]"
                self.made[key] = self.ctx.assign(
                    f"{factor.name or factor.kind}_view", self.chain(factor, base), "view", note
                )
        return self.made[key]

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
            return Name(self.ctx.shared[factor.name])  # computed before the terms, laid out one axis per leg
        if isinstance(factor.pattern, Fused):
            return self._fused(factor.pattern)
        return self.ctx.assign(factor.name or factor.kind, self.constant(factor), "constant", _described(factor))

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

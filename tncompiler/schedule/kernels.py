"""Terms lowered to PyTorch's convolution kernels (F.conv*d, F.conv_transpose*d, torch.nn.grad.conv*d_weight),
called as a person would: operands arranged only where their layout needs it, the bias passed to the kernel,
keyword arguments, defaults left out. Sampled output positions run the kernel on the kept windows. Each op says
what it allocates: the output, an operand laid out, padded or gathered, the input the CPU kernels unfold."""

from __future__ import annotations

from dataclasses import replace

import sympy

from tncompiler.cost import native_flops
from tncompiler.ir.network import Network
from tncompiler.ir.values import ConvPattern, GatherOp, Layout, NativeConv, Size
from tncompiler.schedule.context import Context
from tncompiler.schedule.operands import Operands, entries_of, pad
from tncompiler.schedule.ops import (
    Assign,
    Attr,
    BinOp,
    Branch,
    Effect,
    Expr,
    Index,
    Lit,
    Name,
    Op,
    SizeOf,
    Slice,
    Tuple,
    call,
    method,
)

__all__ = ["kernel_term", "output_axes"]

_ALL = Slice()


def kernel_term(
    ctx: Context, operands: Operands, term: Network, m: NativeConv, target: Layout, var: str, bias: Expr | None = None
) -> Layout:
    """Ops that compute the term with one native call into `var` (with `bias` added by the kernel, for a convolution
    or transpose convolution); the result's axes: the kernel's own where they are `target`'s grouping of its legs,
    else one axis per leg in `target`'s order."""
    kernel = _Kernel(ctx, operands, term, m, var)
    axes = {"forward": kernel.forward, "transpose": kernel.transpose, "weight": kernel.weight}[m.role](bias)
    if [_wide(term, axis) for axis in axes] == [_wide(term, axis) for axis in target.axes]:
        return target  # the kernel's own axes, but for size-1 legs: the same shape
    out_legs = tuple(leg for axis in axes for leg in axis)
    if _wide(term, out_legs) == _wide(term, target.legs):  # the same entries in the same order: one reshape regroups
        sizes = [SizeOf(sympy.Mul(*[sympy.sympify(term.size(leg)) for leg in axis])) for axis in target.axes]
        ctx.emit(Assign(var, method(Name(var), "reshape", *sizes), "view", target.text(), True))
        return target
    if axes != tuple((leg,) for leg in out_legs):
        ctx.emit(
            Assign(var, method(Name(var), "reshape", *(SizeOf(term.size(leg)) for leg in out_legs)), "view", "", True)
        )
    legs = target.legs
    if out_legs != legs:
        value = method(Name(var), "permute", *(Lit(out_legs.index(leg)) for leg in legs))
        ctx.emit(Assign(var, value, "view", operands.shown(term).text(legs), True))
        operands.strided.add(Name(var))  # a permuted view, which a later reshape copies
    return Layout(tuple((leg,) for leg in legs))


class _Kernel:
    """One native call: the operands arranged as the kernel wants them, the call, the result's legs."""

    def __init__(self, ctx: Context, operands: Operands, net: Network, m: NativeConv, var: str) -> None:
        self.ctx, self.operands, self.net, self.m, self.var = ctx, operands, net, m, var
        self.patterns = [net.factors[k] for k in m.patterns]
        self.written = [p.pattern for p in self.patterns if isinstance(p.pattern, ConvPattern)]
        gathered = {
            axis: op.index
            for axis, f in enumerate(self.patterns)
            for op in (f.view.ops if f.view else ())
            if isinstance(op, GatherOp)
        }
        # sampled o (lowering decides): axis -> index whose kept windows the kernel reads one after the other
        # (stride K, no padding), or whose dropped rows of grad_y are zeroed (a mask)
        self.tiled = {a: i for a, i in gathered.items() if self.patterns[a].legs[1] in m.tiled}
        self.masked = {a: i for a, i in gathered.items() if self.patterns[a].legs[1] in m.masked}
        self.conv = [
            _tiled(p, net.size(f.legs[1])) if axis in self.tiled else p
            for axis, (f, p) in enumerate(zip(self.patterns, self.written, strict=True))
        ]
        self.d = len(self.conv)
        self.rows: list[Size] = [p.in_size for p in self.written]  # of the data input on each axis, as gathered

    def leg(self, name: str) -> SizeOf:
        return SizeOf(self.net.size(name))

    def product(self, legs: tuple[str, ...]) -> SizeOf:
        """The entries of these legs together."""
        return SizeOf(sympy.Mul(*[sympy.sympify(self.net.size(leg)) for leg in legs]))

    def entries(self, channels: tuple[str, ...], *spatial: Size | sympy.Expr) -> sympy.Expr:
        """The entries of a [batch, channels, *spatial] tensor of this kernel call (an operand, its output)."""
        return entries_of([self.product(self.m.batch).expr, self.product(channels).expr, *spatial])

    def spatial(self, position: int) -> tuple[str, ...]:
        return tuple(p.legs[position] for p in self.patterns)

    def arrange(
        self, suffix: str, position: int, axes: tuple[tuple[str, ...], ...], whole: dict[str, Size] | None = None
    ) -> Expr:
        """The factor's tensor with its legs grouped into the kernel's `axes`: the argument itself where it is laid
        out so, else its legs permuted into order and reshaped (steps that change nothing left out). `whole` maps
        legs of sampled entries to their full size: their gathers are left out (the caller masks the rows)."""
        factor = self.net.factors[position]
        if whole and factor.view is not None:
            ops = tuple(op for op in factor.view.ops if not (isinstance(op, GatherOp) and self._whole(op, whole)))
            factor = replace(factor, view=replace(factor.view, ops=ops))
        if factor.kind == "input" and factor.view is None and self._layout(factor.name) == axes:
            return Name(self.ctx.args[factor.name])
        expr, legs = self.operands.of(factor, self.net), factor.legs
        sizes = {leg: sympy.sympify(self.net.size(leg)) for leg in factor.legs} | (whole or {})
        size = sizes.__getitem__
        order = tuple(leg for axis in axes for leg in axis)
        shape = [SizeOf(sympy.Mul(*[size(leg) for leg in axis])) for axis in axes]
        if legs == order and [SizeOf(size(x)) for x in legs] == shape:
            return expr
        value = expr if legs == order else method(expr, "permute", *(Lit(legs.index(leg)) for leg in order))
        # a copy where it needs a permutation, or where it groups the axes of a strided view
        copies = legs != order or (expr in self.operands.strided and any(len(axis) != 1 for axis in axes))
        entries = entries_of(size(leg) for leg in legs) if copies else None
        return self.ctx.assign(f"{self.var}_{suffix}", method(value, "reshape", *shape), "view", entries=entries)

    def _whole(self, op: GatherOp, whole: dict[str, Size]) -> bool:
        """The gather keeps the entries of a leg that `whole` restores."""
        return any(self.patterns[a].legs[1] in whole for a, index in self.masked.items() if index == op.index)

    def _layout(self, argument: str) -> tuple[tuple[str, ...], ...]:
        return next(a.layout.axes for a in self.ctx.diagram.arguments if a.name == argument)

    def options(self, padding: Expr | None, **more: Expr | None) -> dict[str, Expr]:
        """stride, padding, dilation (and more) as keywords, each left out where it is PyTorch's default."""
        found: dict[str, Expr | None] = {
            "stride": _ints([p.stride for p in self.conv], 1),
            "padding": padding,
            **more,
            "dilation": _ints([p.dilation for p in self.conv], 1),
            "groups": self._groups(),
        }
        return {key: value for key, value in found.items() if value is not None}

    def _groups(self) -> Expr | None:
        groups = sympy.Mul(*[sympy.sympify(self.net.size(leg)) for leg in self.m.groups])
        return None if groups == 1 else SizeOf(groups)

    def data_input(self) -> tuple[Expr, Expr | None, bool]:
        """The input on the i legs, padded (or cut) for the kernel; its padding argument (None: 0) and whether the
        output has windows beyond O to cut off."""
        m, ctx = self.m, self.ctx
        data = self.arrange("in", m.data, _axes(m.batch, m.groups + m.data_channels, self.spatial(0)))
        for axis, index in self.tiled.items():
            data = self.gather_windows(data, axis, self.written[axis], index)
        usable, padding, crop, extra = _symmetric(self.conv)
        if not usable or (extra and m.role == "weight"):
            ends, pads = zip(*(_cut_and_pad(p) for p in self.conv), strict=True)
            # cut unread rows first: F.pad cannot crop more than a tensor holds
            if any(end is not None for end in ends):
                cut = tuple(_ALL if end is None else Slice(None, Lit(end)) for end in ends)
                data = ctx.assign(f"{self.var}_in", Index(data, (_ALL, _ALL, *cut)), "view", "rows no window reaches")
            if any(pair != (0, 0) for pair in pads):
                rows = [
                    (row if end is None else end) + sum(max(n, 0) if isinstance(n, int) else 0 for n in pair)
                    for row, end, pair in zip(self.rows, ends, pads, strict=True)
                ]  # a right-hand padding known only at call time is not counted, as other call-time sizes are not
                padded = self.entries(m.groups + m.data_channels, *rows)
                data = ctx.assign(f"{self.var}_in", pad(ctx, data, list(pads)), "view", "padded", entries=padded)
            return data, None, False
        if any(crop):
            ends = [
                Slice(None, SizeOf(sympy.sympify(self.net.size(x)) - c)) if c else _ALL
                for x, c in zip(self.spatial(0), crop, strict=True)
            ]
            data = ctx.assign(f"{self.var}_in", Index(data, (_ALL, _ALL, *ends)), "view", "rows no window reaches")
        return data, padding, extra

    def window_rows(self, axis: int, p: ConvPattern, index: str) -> tuple[Expr, Name | None]:
        """The rows of the input that each kept window reads (K per window, one window after the other), clamped
        into the input and moved to the arguments' device, and which of them lie in the padding (None: none can);
        computed where the entries were drawn (the host)."""
        drawn = Name(self.ctx.drawn[index])
        taps = call(
            "torch.arange", Lit(0), Lit(p.kernel_size * p.dilation), Lit(p.dilation), device=Attr(drawn, "device")
        )
        starts: Expr = method(drawn, "view", Lit(-1), Lit(1))
        if p.stride != 1:
            starts = BinOp("*", starts, Lit(p.stride))
        rows_value: Expr = BinOp("+", starts, taps)
        if p.pad_left:
            rows_value = BinOp("-", rows_value, Lit(p.pad_left))
        rows = self.ctx.assign(f"{self.var}_rows{axis + 1}", method(rows_value, "flatten"), "view", "rows read")
        last = SizeOf(sympy.sympify(p.in_size) - 1)
        clamped = self.on_device(method(rows, "clamp", Lit(0), last))
        if not _reads_padding(p):
            return clamped, None
        outside = BinOp("|", BinOp("<", rows, Lit(0)), BinOp(">", rows, last))
        return clamped, self.ctx.assign(f"{self.var}_outside{axis + 1}", outside, "view", "rows in the padding")

    def on_device(self, value: Expr) -> Expr:
        """A tensor computed on the host, moved to the arguments' device without waiting."""
        return method(value, "to", Name("device"), non_blocking=Lit(True))

    def zero_padding(self, target: Expr, axis: int, p: ConvPattern, outside: Name) -> None:
        """Zero the rows of `target` (rows of kept windows on `axis`) that lie in the padding. Only the first windows
        (o·S < P_left) and the last ones can read padding, and the kept windows are in order: only the rows of as
        many windows at each end are masked, a static number however many were kept (a slice longer than the axis
        is the whole axis; masking a row twice changes nothing)."""
        trailing = (Lit(1),) * (self.d - 1 - axis)
        first, last = _edge_rows(p)
        for rows, part in ((first, Slice(None, Lit(first))), (last, Slice(Lit(-last), None))):
            if not rows:
                continue
            mask = method(self.on_device(Index(outside, (part,))), "view", Lit(-1), *trailing)
            edge = Index(target, (*(_ALL,) * (2 + axis), part))
            self.ctx.emit(Effect(method(edge, "masked_fill_", mask, Lit(0)), "view"))

    def gather_windows(self, data: Expr, axis: int, p: ConvPattern, index: str) -> Expr:
        """Sampled output positions: the kernel (stride K, no padding) reads exactly the kept windows of the
        gathered rows. Rows in the padding are zeroed."""
        clamped, outside = self.window_rows(axis, p, index)
        dim = Lit(2 + axis)
        if axis < self.d - 1:
            value: Expr = method(data, "index_select", dim, clamped)
        else:  # the last axis: index_select copies single entries slowly
            value = call(self.ctx.helper("_take"), data, dim, clamped)
        self.rows[axis] = sympy.sympify(self.net.size(self.patterns[axis].legs[1])) * p.kernel_size
        copied = self.entries(self.m.groups + self.m.data_channels, *self.rows)
        gathered = self.ctx.assign(f"{self.var}_in", value, "view", "", True, copied)
        if outside is not None:
            self.zero_padding(gathered, axis, p, outside)
        return gathered

    def call(self, value: Expr, empty: list[SizeOf], data: Expr) -> None:
        """`var = value`; with sampled positions that may keep none (p=), zeros of shape `empty` when none was kept
        (the kernels reject inputs without rows). The test reads a size on the host, never the device."""
        cost = native_flops(self.net, self.m)
        maybe_empty = [axis for axis, index in self.tiled.items() if index not in self.ctx.fixed]
        kept = [self.leg(self.patterns[axis].legs[1]) for axis in maybe_empty]
        output = entries_of(size.expr for size in empty)
        kernel = Assign(self.var, value, "kernel", "", True, cost, output, self.scratch(output))
        if not kept:
            self.ctx.emit(kernel)
            return
        test: Expr = kept[0]
        for more in kept[1:]:
            test = BinOp("and", test, more)
        zeros = Assign(self.var, method(data, "new_zeros", Tuple(tuple(empty))), "kernel", "", True, entries=output)
        arms: tuple[tuple[Expr | None, tuple[Op, ...]], ...] = ((test, (kernel,)), (None, (zeros,)))
        self.ctx.emit(Branch(arms, "kernel", ("", "no entry kept")))

    def forward(self, bias: Expr | None) -> tuple[tuple[str, ...], ...]:
        m = self.m
        data, padding, extra = self.data_input()
        weight = self.arrange("w", m.other, _axes(m.groups + m.other_channels, m.data_channels, self.spatial(2)))
        empty = [self.product(m.batch), self.product(m.groups + m.other_channels)] + [
            self.leg(x) for x in self.spatial(1)
        ]
        kernel = call(
            f"torch.nn.functional.conv{self.d}d", data, weight, *([bias] if bias else []), **self.options(padding)
        )
        self.call(kernel, empty, data)
        if extra:
            ends = tuple(Slice(None, SizeOf(p.out_size)) for p in self.conv)
            note = "the kernel's padding gives windows beyond O"
            self.ctx.emit(Assign(self.var, Index(Name(self.var), (_ALL, _ALL, *ends)), "view", note, True))
        return output_axes(self.net, m)

    def transpose(self, bias: Expr | None) -> tuple[tuple[str, ...], ...]:
        m, ctx = self.m, self.ctx
        data = self.arrange("in", m.data, _axes(m.batch, m.groups + m.data_channels, self.spatial(1)))
        weight = self.arrange("w", m.other, _axes(m.groups + m.data_channels, m.other_channels, self.spatial(2)))
        out = ctx.var(f"{self.var}_taps") if self.tiled else self.var
        ops = self.transpose_call(out, data, weight, bias)
        if not self.tiled:
            for op in ops:
                ctx.emit(op)
        else:
            self.scatter_windows(ops, out, data)
        return output_axes(self.net, m)

    def transpose_call(self, out: str, data: Expr, weight: Expr, bias: Expr | None) -> list[Op]:
        """`out` = the transpose convolution. conv_transpose writes positions o·S + k·D; ours are those minus
        P_left, cut (or zero-padded) to I. Where PyTorch's padding and output_padding say exactly that, they are
        used; otherwise the result is cropped and padded (and the bias added after)."""
        extra = [_output_padding(p) for p in self.conv]
        function = f"torch.nn.functional.conv_transpose{self.d}d"
        m, cost = self.m, native_flops(self.net, self.m)
        output = self.entries(m.groups + m.other_channels, *(p.in_size for p in self.conv))
        if all(e is not None for e in extra):
            options = self.options(
                _ints([p.pad_left for p in self.conv], 0), output_padding=_sizes([e for e in extra if e is not None], 0)
            )
            value = call(function, data, weight, *([bias] if bias else []), **options)
            return [Assign(out, value, "kernel", "", True, cost, output, self.scratch(output))]
        crops: list[tuple[Size, Size]] = [(-p.pad_left, _crop_right(p)) for p in self.conv]
        value = call(function, data, weight, **self.options(None))
        ops: list[Op] = [Assign(out, value, "kernel", "", True, cost, output, self.scratch(output))]
        ops.append(Assign(out, pad(self.ctx, Name(out), crops), "view", "cropped to I", True, entries=output))
        if bias is not None:
            shape = (Lit(-1),) + (Lit(1),) * self.d
            added = BinOp("+", Name(out), method(bias, "view", *shape))
            ops.append(Assign(out, added, "kernel", "bias", True, entries=output))
        return ops

    def scratch(self, output: sympy.Expr) -> sympy.Expr:
        """What PyTorch's CPU kernels (float64) copy for themselves during the call: the input unfolded one group at
        a time, [batch, channels·K, positions], and, for several groups, the output gathered from their parts."""
        m, written = self.m, self.written
        if all(p.kernel_size == 1 and p.stride == 1 and p.pad_left == 0 and _overhang(p) <= 0 for p in written):
            return sympy.Integer(0)
        channels = m.other_channels if m.role == "transpose" else m.data_channels
        positions = [self.net.size(p.legs[1]) for p in self.patterns]  # the kept windows where sampled
        unfolded = self.entries(channels, *(p.kernel_size for p in written), *positions)
        return unfolded + (output if self._groups() is not None else 0)

    def scatter_windows(self, ops: list[Op], out: str, data: Expr) -> None:
        """Sampled output positions of a transpose convolution (an input VJP): the kernel (stride K, no padding)
        writes each kept window's K rows one after the other; they are added into the rows they belong to."""
        ((axis, index),) = self.tiled.items()
        ctx, var, p = self.ctx, self.var, self.written[axis]
        full = [self.product(self.m.batch), self.product(self.m.groups + self.m.other_channels)]
        full += [self.leg(x) for x in self.spatial(0)]
        zeros = method(data, "new_zeros", Tuple(tuple(full)))
        ctx.emit(Assign(var, zeros, "kernel", "", True, entries=entries_of(size.expr for size in full)))
        with ctx.block() as body:
            for op in ops:
                ctx.emit(op)
            clamped, outside = self.window_rows(axis, p, index)
            if outside is not None:
                self.zero_padding(Name(out), axis, p, outside)
            ctx.emit(Effect(method(Name(var), "index_add_", Lit(2 + axis), clamped, Name(out)), "kernel"))
        if index in ctx.fixed:
            for op in body:
                ctx.emit(op)
            return
        kept = self.leg(self.patterns[axis].legs[1])
        ctx.emit(
            Branch(((kept, tuple(body)),), "kernel", ("else no entry kept: the kernels reject inputs without rows",))
        )

    def row_mask(self, axis: int, index: str, like: Expr) -> Expr:
        """1 at the kept rows of the output axis `axis`, 0 elsewhere, made where the entries were drawn (the host)
        and moved without waiting: one pass over grad_y instead of a gather, zeros and a scatter."""
        drawn = Name(self.ctx.drawn[index])
        zeros = call("torch.zeros", SizeOf(self.written[axis].out_size), dtype=Attr(like, "dtype"),
                     device=Attr(drawn, "device"))  # fmt: skip
        mask = self.ctx.assign(f"{self.var}_mask{axis + 1}", self.on_device(method(zeros, "index_fill_", Lit(0), drawn,
                               Lit(1))), "view", f"1 at the kept rows of {index}",
                               entries=self.written[axis].out_size)  # fmt: skip
        return method(mask, "view", Lit(-1), *(Lit(1),) * (self.d - 1 - axis))

    def weight(self, bias: Expr | None) -> tuple[tuple[str, ...], ...]:
        m, ctx = self.m, self.ctx
        data, padding, _ = self.data_input()
        whole = {self.patterns[axis].legs[1]: self.written[axis].out_size for axis in self.masked}
        grad = self.arrange("grad", m.other, _axes(m.batch, m.groups + m.other_channels, self.spatial(1)), whole)
        for axis, index in self.masked.items():
            full = self.entries(m.groups + m.other_channels, *(p.out_size for p in self.written))
            grad = ctx.assign(f"{self.var}_grad", BinOp("*", grad, self.row_mask(axis, index, grad)), "view",
                              "the dropped rows zeroed", entries=full)  # fmt: skip
        weight = [self.product(m.groups + m.other_channels), self.product(m.data_channels)]
        weight += [SizeOf(p.kernel_size) for p in self.conv]
        size = Tuple(tuple(weight))
        kernel = call(f"torch.nn.grad.conv{self.d}d_weight", data, size, grad, **self.options(padding))
        self.call(kernel, weight, data)
        return output_axes(self.net, m)


def output_axes(term: Network, m: NativeConv) -> tuple[tuple[str, ...], ...]:
    """The legs of a kernel's output, by its axes: [batch, channels, o..] of a convolution, [batch, channels, i..]
    of a transpose convolution, [channels out, channels in, k..] of a weight gradient."""
    spatial = tuple(term.factors[k].legs[_SPATIAL[m.role]] for k in m.patterns)
    if m.role == "weight":
        return _axes(m.groups + m.other_channels, m.data_channels, spatial)
    return _axes(m.batch, m.groups + m.other_channels, spatial)


_SPATIAL = {"forward": 1, "transpose": 0, "weight": 2}  # which pattern leg (i, o, k) a kernel's output carries


def _wide(term: Network, legs: tuple[str, ...]) -> tuple[str, ...]:
    """The legs of more than one entry: a size-1 leg changes no entry's place, wherever it stands."""
    return tuple(leg for leg in legs if term.size(leg) != 1)


def _axes(first: tuple[str, ...], second: tuple[str, ...], spatial: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """A kernel operand's axes: two groups of legs, then one axis per spatial leg."""
    return (first, second, *((leg,) for leg in spatial))


def _ints(values: list[int], default: int) -> Expr | None:
    """A kernel's per-dimension argument: one number where all agree, a tuple otherwise; None for the default."""
    if all(v == default for v in values):
        return None
    return Lit(values[0]) if len(set(values)) == 1 else Tuple(tuple(Lit(v) for v in values))


def _sizes(values: list[Size], default: int) -> Expr | None:
    if all(isinstance(v, int) for v in values):
        return _ints([int(v) for v in values], default)
    return Tuple(tuple(SizeOf(v) for v in values))


def _overhang(p: ConvPattern) -> int:
    """The rows past the input's end that the last window reads (negative: rows no window reads)."""
    if not isinstance(p.in_size, int) or not isinstance(p.out_size, int):
        return p.pad_right
    return int(p.last_read()) - (p.in_size - 1)


def _crop_right(p: ConvPattern) -> Size:
    """I + P_left − (the kernel's full output size): what to add (or, negative, cut) on the right."""
    crop = sympy.sympify(p.in_size + p.pad_left - (sympy.sympify(p.out_size - 1) * p.stride + p.extent))
    return int(crop) if crop.is_Integer else crop


def _tiled(p: ConvPattern, kept: Size) -> ConvPattern:
    """The pattern a kernel sees on gathered windows: `kept` windows of K rows, one after the other."""
    k = p.kernel_size
    return ConvPattern(kept * k, kept, k, k, 0, 0, 1)


def _cut_and_pad(p: ConvPattern) -> tuple[int | None, tuple[Size, Size]]:
    """How the input of one axis becomes exactly the rows the kernel's windows read, (O − 1)·S + D·(K − 1) + 1 of
    them: the rows to keep (None: all), then the (left, right) padding. Rows beyond the last window's last tap are
    cut; where the windows end before the input even starts (a kernel tap sliced out of a padded convolution reads
    only padding), every row is cut and the left padding is cut short as well."""
    if _is_tiling(p):
        return None, (0, 0)
    right = p.right_pad()
    if not isinstance(right, int) or right >= 0 or not isinstance(p.in_size, int):
        return None, (p.pad_left, right)
    cut = -right
    return max(0, p.in_size - cut), (p.pad_left - max(0, cut - p.in_size), 0)


def _is_tiling(p: ConvPattern) -> bool:
    return p.stride == p.kernel_size and p.dilation == 1 and p.pad_left == 0 and p.in_size == p.out_size * p.stride


def _edge_rows(p: ConvPattern) -> tuple[int, int]:
    """The gathered rows of the first and of the last kept windows that may lie in the padding: K rows for each
    window o with o·S < P_left at the start, and for each window that may read past I - 1 at the end (for sizes
    bound at call time, at most ceil(P_right / S) of them, by the size rule)."""
    first = -(-max(p.pad_left, 0) // p.stride)
    return first * p.kernel_size, -(-max(0, _overhang(p)) // p.stride) * p.kernel_size


def _reads_padding(p: ConvPattern) -> bool:
    """Some window of the pattern may read a row outside the input."""
    if p.pad_left > 0:
        return True
    if not isinstance(p.in_size, int) or not isinstance(p.out_size, int):
        return p.pad_right > 0  # sizes bound at call time obey the size rule: the windows end within I + P_right
    return int(p.last_read()) > p.in_size - 1


def _symmetric(conv: list[ConvPattern]) -> tuple[bool, Expr | None, list[int], bool]:
    """Whether the kernel's own (symmetric) padding will do; that padding (None: none), the right-hand input rows to
    drop (only rows no window reads), and whether the output still has windows beyond O to cut off. It will not do
    where a pattern needs more padding on the right than on the left: then the input is padded first."""
    crops, extra_windows = [], False
    for p in conv:
        if _is_tiling(p):
            crops.append(0)
            continue
        if not isinstance(p.in_size, int) or not isinstance(p.out_size, int):
            if p.pad_left != p.pad_right or p.pad_left < 0:
                return False, None, [], False
            crops.append(0)  # sizes bound at call time obey the size rule: the kernel gives exactly O
            continue
        if p.pad_left < 0:
            return False, None, [], False
        last_read = int(p.last_read())
        if last_read - (p.in_size - 1) > p.pad_left:
            return False, None, [], False
        needed = max(0, p.in_size + 2 * p.pad_left - p.extent - p.out_size * p.stride + 1)
        allowed = max(0, p.in_size - 1 - last_read)
        if p.in_size - min(needed, allowed) < 1:
            return False, None, [], False  # every window lies in the padding: F.pad keeps one (zero) row to convolve
        crops.append(min(needed, allowed))
        extra_windows = extra_windows or needed > allowed
    return True, _ints([p.pad_left for p in conv], 0), crops, extra_windows


def _output_padding(p: ConvPattern) -> Size | None:
    """PyTorch's output_padding that, with padding P_left, makes the transpose kernel write exactly I rows; None
    where no valid one does. Sizes bound at call time obey the pattern's size rule: with P_left = P_right it is
    (I + 2P − extent) mod S, always valid."""
    if _is_tiling(p):
        return 0
    if p.pad_left < 0:
        return None
    extra = sympy.sympify(p.in_size) - ((p.out_size - 1) * p.stride + p.extent) + 2 * p.pad_left
    if not extra.is_Integer:
        return extra if p.pad_left == p.pad_right else None
    return int(extra) if 0 <= extra < max(p.stride, p.dilation) else None

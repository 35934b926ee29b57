"""Code for terms lowered to PyTorch's convolution kernels (F.conv*d, F.conv_transpose*d, conv*d_weight)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import sympy

from tncompiler.ir.network import Network
from tncompiler.ir.values import ConvPattern, GatherOp, NativeConv, Size

__all__ = ["native_lines", "pad_arguments", "pad_call", "right_pad_size"]


def _permute(expr: str, legs: tuple[str, ...], order: tuple[str, ...]) -> str:
    if legs == order:
        return expr
    return f"{expr}.permute({', '.join(str(legs.index(leg)) for leg in order)})"


def _arrange(
    expr: str, legs: tuple[str, ...], order: tuple[str, ...], shape: list[str], leg: Callable[[str], str]
) -> str:
    """`expr` permuted into `order` and reshaped to `shape`, leaving out steps that change nothing."""
    permuted = _permute(expr, legs, order)
    if permuted == expr and [leg(x) for x in legs] == shape:
        return expr
    return f"{permuted}.reshape({', '.join(shape)})"


def _extent(p: ConvPattern) -> int:
    """D·(K − 1) + 1: the rows one window spans."""
    return p.dilation * (p.kernel_size - 1) + 1


def pad_arguments(pairs: list[tuple[str, str]]) -> str:
    """F.pad's argument for (left, right) pairs of the spatial axes in order (F.pad starts at the last axis)."""
    return ", ".join(f"{left}, {right}" for left, right in reversed(pairs))


def pad_call(expr: str, pairs: list[tuple[Size, Size]], size: Callable[[Size], str], helpers: set[str]) -> str:
    """`expr` padded by (left, right) pairs of its last axes, in order: F.pad where every amount is a known
    non-negative int, else the helper `_pad`, which also crops (any amount) and copies nothing for zeros."""
    text = pad_arguments([(size(left), size(right)) for left, right in pairs])
    if all(isinstance(amount, int) and amount >= 0 for pair in pairs for amount in pair):
        return f"torch.nn.functional.pad({expr}, ({text}))"
    helpers.add("_pad")
    return f"_pad({expr}, ({text}))"


def right_pad_size(p: ConvPattern) -> Size:
    """The right padding that makes the kernel's output size exactly O (negative: a crop)."""
    pad = sympy.sympify(p.out_size - 1) * p.stride + _extent(p) - p.in_size - p.pad_left
    return int(pad) if pad.is_Integer else pad


class _Native:
    """Writes one native call: the operands arranged as the kernel wants them, the call, the result's legs."""

    def __init__(
        self, net: Network, m: NativeConv, var: str, size: Callable[[Size], str], keep: Callable[[str], str]
    ) -> None:
        self.net, self.m, self.var, self.size, self.keep = net, m, var, size, keep
        self.patterns = [net.factors[k] for k in m.patterns]
        self.written = [p.pattern for p in self.patterns if isinstance(p.pattern, ConvPattern)]
        self.helpers: set[str] = set()  # runtime helpers the lines call
        gathered = {
            axis: op.index
            for axis, f in enumerate(self.patterns)
            for op in (f.view.ops if f.view else ())
            if isinstance(op, GatherOp)
        }
        # sampled o (lowering decides): axis -> index whose kept windows the kernel reads one after the other
        # (stride K, no padding), or whose kept rows of grad_y go back into place
        self.tiled = {a: i for a, i in gathered.items() if self.patterns[a].legs[1] in m.tiled}
        self.masked = {a: i for a, i in gathered.items() if self.patterns[a].legs[1] in m.masked}
        self.conv = [
            _tiled(p, net.size(f.legs[1])) if axis in self.tiled else p
            for axis, (f, p) in enumerate(zip(self.patterns, self.written, strict=True))
        ]
        self.d = len(self.conv)
        self.strides = _tuple(str(p.stride) for p in self.conv)
        self.dilations = _tuple(str(p.dilation) for p in self.conv)
        self.groups = self.product(m.groups)
        self.lines: list[str] = []

    def leg(self, name: str) -> str:
        return self.size(self.net.size(name))

    def product(self, legs: tuple[str, ...]) -> str:
        """The entries of these legs together, as one printed expression."""
        return self.size(sympy.Mul(*[sympy.sympify(self.net.size(leg)) for leg in legs]))

    def spatial(self, position: int) -> tuple[str, ...]:
        return tuple(p.legs[position] for p in self.patterns)

    def arrange(self, suffix: str, position: int, order: tuple[str, ...], shape: list[str], expr: str) -> None:
        legs = self.net.factors[position].legs
        self.lines.append(f"{self.var}_{suffix} = {_arrange(expr, legs, order, shape, self.leg)}")

    def data_input(self, a: str) -> tuple[str, bool]:
        """The input on the i legs, padded (or cut) for the kernel; returns the kernel's padding argument and
        whether the output has windows beyond O to cut off."""
        m = self.m
        shape = [self.product(m.batch), self.product(m.groups + m.data_channels)]
        shape += [self.leg(x) for x in self.spatial(0)]
        self.arrange("in", m.data, m.batch + m.groups + m.data_channels + self.spatial(0), shape, a)
        for axis, index in self.tiled.items():
            self.gather_windows(axis, self.written[axis], self.keep(index))
        padding, crop, extra_windows = _symmetric(self.conv)
        if padding is None or (extra_windows and m.role == "weight"):
            rights = [0 if _is_tiling(p) else right_pad_size(p) for p in self.conv]
            cuts = [-right if isinstance(right, int) and right < 0 else 0 for right in rights]
            if any(cuts):  # cut unread rows first: F.pad cannot crop more than a tensor holds
                ends = [
                    f":{max(0, p.in_size - c)}" if c and isinstance(p.in_size, int) else ":"
                    for p, c in zip(self.conv, cuts, strict=True)
                ]
                self.lines.append(f"{self.var}_in = {self.var}_in[:, :, {', '.join(ends)}]  # rows no window reaches")
                rights = [0 if cut else right for right, cut in zip(rights, cuts, strict=True)]
            pads: list[tuple[Size, Size]] = [
                (0, 0) if _is_tiling(p) else (p.pad_left, right) for p, right in zip(self.conv, rights, strict=True)
            ]
            if any(pair != (0, 0) for pair in pads):
                padded = pad_call(f"{self.var}_in", pads, self.size, self.helpers)
                self.lines.append(f"{self.var}_in = {padded}")
            return "0", False
        if any(crop):
            ends = [f":{self.leg(x)} - {c}" if c else ":" for x, c in zip(self.spatial(0), crop, strict=True)]
            self.lines.append(f"{self.var}_in = {self.var}_in[:, :, {', '.join(ends)}]  # rows no window reaches")
        return padding, extra_windows

    def window_rows(self, axis: int, p: ConvPattern, keep: str, indent: str = "") -> tuple[str, str | None]:
        """The rows of the input that each kept window reads (K per window, one window after the other), as a
        variable, and the expression of the positions among them that lie in the padding (None: there are none).
        Returns (the row indices clamped into the input, that expression)."""
        rows = f"{self.var}_rows{axis + 1}"
        step = f"torch.arange(0, {p.kernel_size * p.dilation}, {p.dilation}, device=device)"
        shift = f" - {p.pad_left}" if p.pad_left else ""
        scale = f" * {p.stride}" if p.stride != 1 else ""
        self.lines.append(f"{indent}{rows} = ({keep}.view(-1, 1){scale} + {step}{shift}).flatten()  # rows read")
        if not _reads_padding(p):
            return rows, None
        last = self.size(p.in_size - 1)
        return f"{rows}.clamp(0, {last})", f"(({rows} < 0) | ({rows} > {last})).nonzero().flatten()"

    def gather_windows(self, axis: int, p: ConvPattern, keep: str) -> None:
        """Sampled output positions: the kernel (stride K, no padding) reads exactly the kept windows of the
        gathered rows. Rows in the padding are zeroed."""
        data, dim = f"{self.var}_in", 2 + axis
        rows, outside = self.window_rows(axis, p, keep)
        if axis < self.d - 1:
            self.lines.append(f"{data} = {data}.index_select({dim}, {rows})")
        else:  # the last axis: index_select copies single entries slowly
            self.helpers.add("_take")
            self.lines.append(f"{data} = _take({data}, {dim}, {rows})")
        if outside is not None:
            self.lines.append(f"{data}.index_fill_({dim}, {outside}, 0)  # rows in the padding")

    def call(self, expr: str, empty: list[str]) -> None:
        """`var = expr`; with sampled positions, zeros of shape `empty` when no entry was kept (the kernels reject
        inputs without rows)."""
        if not self.tiled:
            self.lines.append(f"{self.var} = {expr}")
            return
        kept = " and ".join(self.leg(self.patterns[axis].legs[1]) for axis in self.tiled)
        self.lines += [
            f"if {kept}:",
            f"    {self.var} = {expr}",
            "else:  # no entry kept",
            f"    {self.var} = {self.var}_in.new_zeros(({', '.join(empty)}))",
        ]

    def forward(self, a: str, b: str) -> tuple[str, ...]:
        m, var = self.m, self.var
        padding, extra_windows = self.data_input(a)
        shape = [self.product(m.groups + m.other_channels), self.product(m.data_channels)]
        self.arrange(
            "w",
            m.other,
            m.groups + m.other_channels + m.data_channels + self.spatial(2),
            shape + [self.leg(x) for x in self.spatial(2)],
            b,
        )
        empty = [self.product(m.batch), shape[0]] + [self.leg(x) for x in self.spatial(1)]
        self.call(
            f"torch.nn.functional.conv{self.d}d({var}_in, {var}_w, None, {self.strides}, "
            f"{padding}, {self.dilations}, {self.groups})",
            empty,
        )
        if extra_windows:
            ends = ", ".join(f":{self.size(p.out_size)}" for p in self.conv)
            self.lines.append(f"{var} = {var}[:, :, {ends}]  # the kernel's padding gives windows beyond O")
        return m.batch + m.groups + m.other_channels + self.spatial(1)

    def transpose(self, a: str, b: str) -> tuple[str, ...]:
        m = self.m
        channels = self.product(m.groups + m.data_channels)
        shape = [self.product(m.batch), channels] + [self.leg(x) for x in self.spatial(1)]
        self.arrange("in", m.data, m.batch + m.groups + m.data_channels + self.spatial(1), shape, a)
        shape = [channels, self.product(m.other_channels)] + [self.leg(x) for x in self.spatial(2)]
        self.arrange("w", m.other, m.groups + m.data_channels + m.other_channels + self.spatial(2), shape, b)
        out = f"{self.var}_taps" if self.tiled else self.var
        call = _transpose_call(
            self.var, out, self.conv, self.d, self.strides, self.dilations, self.groups, self.size, self.helpers
        )
        if not self.tiled:
            self.lines += call
        else:
            self.scatter_windows(call)
        return m.batch + m.groups + m.other_channels + self.spatial(0)

    def scatter_windows(self, call: list[str]) -> None:
        """Sampled output positions of a transpose convolution (an input VJP): the kernel (stride K, no padding)
        writes each kept window's K rows one after the other; they are added into the rows they belong to."""
        ((axis, index),) = self.tiled.items()
        var, p, kept = self.var, self.written[axis], self.leg(self.patterns[axis].legs[1])
        full = [self.product(self.m.batch), self.product(self.m.groups + self.m.other_channels)]
        full += [self.leg(x) for x in self.spatial(0)]
        self.lines.append(f"{var} = {var}_in.new_zeros(({', '.join(full)}))")
        self.lines.append(f"if {kept}:  # else no entry kept: the kernels reject inputs without rows")
        self.lines += ["    " + line for line in call]
        rows, outside = self.window_rows(axis, p, self.keep(index), "    ")
        if outside is not None:
            self.lines.append(f"    {var}_taps.index_fill_({2 + axis}, {outside}, 0)  # rows in the padding")
        self.lines.append(f"    {var}.index_add_({2 + axis}, {rows}, {var}_taps)")

    def weight(self, a: str, b: str) -> tuple[str, ...]:
        m, var = self.m, self.var
        padding, _ = self.data_input(a)
        shape = [self.product(m.batch), self.product(m.groups + m.other_channels)]
        self.arrange(
            "grad",
            m.other,
            m.batch + m.groups + m.other_channels + self.spatial(1),
            shape + [self.leg(x) for x in self.spatial(1)],
            b,
        )
        full = shape + [self.leg(x) for x in self.spatial(1)]
        for axis, index in self.masked.items():
            full[2 + axis] = self.size(self.written[axis].out_size)
            self.lines.append(
                f"{var}_grad = {var}_grad.new_zeros(({', '.join(full)})).index_copy_({2 + axis}, {self.keep(index)}, "
                f"{var}_grad)  # the kept rows in place, zeros elsewhere"
            )
        weight = [self.product(m.groups + m.other_channels), self.product(m.data_channels)]
        weight += [str(p.kernel_size) for p in self.conv]
        self.call(
            f"torch.nn.grad.conv{self.d}d_weight({var}_in, {_tuple(weight)}, {var}_grad, "
            f"{self.strides}, {padding}, {self.dilations}, {self.groups})",
            weight,
        )
        return m.groups + m.other_channels + m.data_channels + self.spatial(2)


def native_lines(
    net: Network,
    m: NativeConv,
    operands: tuple[str, str],
    target: tuple[str, ...],
    var: str,
    size: Callable[[Size], str],
    keep: Callable[[str], str],
) -> tuple[list[str], set[str]]:
    """Lines that compute the term with one native call, ending with `var` laid out as `target`, and the runtime
    helpers they call. `keep` names the tensor of kept entries of a sampled index."""
    a, b = operands
    writer = _Native(net, m, var, size, keep)
    out_legs = {"forward": writer.forward, "transpose": writer.transpose, "weight": writer.weight}[m.role](a, b)
    if out_legs != target or not _kernel_shape_matches(m):
        shape = ", ".join(writer.leg(x) for x in out_legs) or "()"
        writer.lines.append(f"{var} = {_permute(f'{var}.reshape({shape})', out_legs, target)}")
    return writer.lines, writer.helpers


def _crop_right(p: ConvPattern) -> Size:
    """I + P_left − (the kernel's full output size): what to add (or, negative, cut) on the right."""
    crop = sympy.sympify(p.in_size + p.pad_left - (sympy.sympify(p.out_size - 1) * p.stride + _extent(p)))
    return int(crop) if crop.is_Integer else crop


def _tiled(p: ConvPattern, kept: Size) -> ConvPattern:
    """The pattern a kernel sees on gathered windows: `kept` windows of K rows, one after the other."""
    k = p.kernel_size
    return ConvPattern(kept * k, kept, k, k, 0, 0, 1)


def _is_tiling(p: ConvPattern) -> bool:
    return p.stride == p.kernel_size and p.dilation == 1 and p.pad_left == 0 and p.in_size == p.out_size * p.stride


def _reads_padding(p: ConvPattern) -> bool:
    """Some window of the pattern may read a row outside the input (sizes known at call time: assume so)."""
    if p.pad_left > 0:
        return True
    if not isinstance(p.in_size, int) or not isinstance(p.out_size, int):
        return p.pad_right > 0  # sizes bound at call time obey the size rule: the windows end within I + P_right
    return _last_read(p) > p.in_size - 1


def _last_read(p: ConvPattern) -> int:
    """The input row that the last tap of the last window reads (sizes known)."""
    assert isinstance(p.out_size, int)
    return (p.out_size - 1) * p.stride + _extent(p) - 1 - p.pad_left


def _symmetric(conv: list[ConvPattern]) -> tuple[str | None, list[int], bool]:
    """The kernel's own (symmetric) padding, the right-hand input rows to drop (only rows no window reads), and
    whether the output still has windows beyond O to cut off; None where the pattern needs more padding on the
    right than on the left (then F.pad is used)."""
    crops, extra_windows = [], False
    for p in conv:
        if _is_tiling(p):
            crops.append(0)
            continue
        if not isinstance(p.in_size, int) or not isinstance(p.out_size, int):
            if p.pad_left != p.pad_right or p.pad_left < 0:
                return None, [], False
            crops.append(0)  # sizes bound at call time obey the pattern's size rule: the kernel gives exactly O
            continue
        if p.pad_left < 0:
            return None, [], False
        last_read = _last_read(p)
        if last_read - (p.in_size - 1) > p.pad_left:
            return None, [], False
        needed = max(0, p.in_size + 2 * p.pad_left - _extent(p) - p.out_size * p.stride + 1)
        allowed = max(0, p.in_size - 1 - last_read)
        if p.in_size - min(needed, allowed) < 1:
            return None, [], False  # every window lies in the padding: F.pad keeps one (zero) row to convolve
        crops.append(min(needed, allowed))
        extra_windows = extra_windows or needed > allowed
    return _tuple(str(p.pad_left) for p in conv), crops, extra_windows


def _transpose_call(
    var: str,
    out: str,
    conv: list[ConvPattern],
    d: int,
    strides: str,
    dilations: str,
    groups: str,
    size: Callable[[Size], str],
    helpers: set[str],
) -> list[str]:
    """`out` = the transpose convolution of `var`_in with `var`_w. conv_transpose writes positions o·S + k·D; ours
    are those minus P_left, cut (or zero-padded) to I. Where PyTorch's padding and output_padding express exactly
    that, they are used; otherwise F.pad crops and pads."""
    extra = [_output_padding(p) for p in conv]
    if all(e is not None for e in extra):
        padding = _tuple(str(p.pad_left) for p in conv)
        return [
            f"{out} = torch.nn.functional.conv_transpose{d}d({var}_in, {var}_w, None, {strides}, {padding}, "
            f"{_tuple(size(e) for e in extra if e is not None)}, {groups}, {dilations})"
        ]
    crops: list[tuple[Size, Size]] = [(-p.pad_left, _crop_right(p)) for p in conv]
    return [
        f"{out} = torch.nn.functional.conv_transpose{d}d({var}_in, {var}_w, None, {strides}, 0, 0, {groups}, "
        f"{dilations})",
        f"{out} = {pad_call(out, crops, size, helpers)}",
    ]


def _output_padding(p: ConvPattern) -> Size | None:
    """PyTorch's output_padding that, with padding P_left, makes the transpose kernel write exactly I rows; None
    where no valid one does. Sizes bound at call time obey the pattern's size rule: with P_left = P_right it is
    (I + 2P − extent) mod S, always valid."""
    if _is_tiling(p):
        return 0
    if p.pad_left < 0:
        return None
    extra = sympy.sympify(p.in_size) - ((p.out_size - 1) * p.stride + _extent(p)) + 2 * p.pad_left
    if not extra.is_Integer:
        return extra if p.pad_left == p.pad_right else None
    return int(extra) if 0 <= extra < max(p.stride, p.dilation) else None


def _kernel_shape_matches(m: NativeConv) -> bool:
    """The kernel's output already has one axis per leg: no group leg splits or merges an axis."""
    if m.role == "weight":
        return len(m.groups + m.other_channels) == 1 and len(m.data_channels) == 1
    return len(m.batch) == 1 and len(m.groups + m.other_channels) == 1


def _tuple(items: Iterable[str]) -> str:
    items = list(items)
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"

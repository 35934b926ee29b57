"""Small immutable values of the IR: sizes, indices, index patterns, tensor factors and layouts."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

import sympy

from tncompiler.errors import Span

__all__ = [
    "Size",
    "size_symbol",
    "kept_symbol",
    "p_symbol",
    "is_kept",
    "is_sampling_symbol",
    "SizeRule",
    "ConvPattern",
    "Select",
    "SliceOp",
    "SplitOp",
    "SqueezeOp",
    "GatherOp",
    "ViewOp",
    "View",
    "view_shape",
    "gathers_last",
    "Factor",
    "FACTOR_KINDS",
    "FactorKind",
    "Layout",
    "NativeConv",
    "Role",
    "Sampler",
    "out_size",
    "slice_length",
    "simplify_size",
]

# A size is an int when known at compile time, else a sympy expression of the call-time symbols.
Size: TypeAlias = int | sympy.Expr


def size_symbol(name: str) -> sympy.Symbol:
    """The symbol standing for an index size that is bound from the arguments at call time."""
    return sympy.Symbol(name, integer=True, positive=True)


def kept_symbol(index: str) -> sympy.Symbol:
    """The call-time number of kept entries of an index sampled by tensor dropout. Its name holds parentheses, which
    no name in a file can, so it never meets an index's own symbol."""
    return size_symbol(f"kept({index})")


def p_symbol(index: str) -> sympy.Symbol:
    """The keep-probability of an index sampled by tensor dropout: a keyword argument, so a real number known only
    at call time (the result is scaled by its inverse)."""
    return sympy.Symbol(f"p({index})", positive=True)


def is_kept(size: object) -> bool:
    """A size that tensor dropout draws at call time."""
    return isinstance(size, sympy.Expr) and any(str(s).startswith("kept(") for s in size.free_symbols)


def is_sampling_symbol(symbol: sympy.Symbol) -> bool:
    """A symbol that tensor dropout gives its value at call time (kept entries, keep-probability), not a size bound
    from the arguments."""
    return str(symbol).startswith(("kept(", "p("))


def simplify_size(size: Size) -> Size:
    """Collapse a sympy expression without free symbols to an int."""
    if isinstance(size, int):
        return size
    size = sympy.simplify(size)
    return int(size) if size.is_Integer else size


def out_size(in_size: Size, kernel: int, stride: int, pad_left: int, pad_right: int, dilation: int) -> Size:
    """O = floor((I + P_left + P_right − D·(K − 1) − 1) / S) + 1."""
    span = in_size + pad_left + pad_right - dilation * (kernel - 1) - 1
    if isinstance(span, int):
        return span // stride + 1
    return simplify_size(sympy.floor(span / stride) + 1)


def slice_length(start: int, stop: Size, step: int) -> Size:
    """len(range(start, stop, step)); a stop known at call time only (O·S) is at least `start`."""
    if isinstance(stop, int):
        return len(range(start, stop, step))
    return simplify_size(sympy.ceiling((stop - start) / step))


@dataclass(frozen=True)
class ConvPattern:
    """Π[i, o, k] = 1 iff i = o·S + k·D − P_left, for 0 ≤ i < I, 0 ≤ o < O, 0 ≤ k < K."""

    in_size: Size
    out_size: Size
    kernel_size: int
    stride: int
    pad_left: int
    pad_right: int
    dilation: int

    def describe(self) -> str:
        pad = self.pad_left if self.pad_left == self.pad_right else (self.pad_left, self.pad_right)
        return f"conv(stride={self.stride}, padding={pad}, dilation={self.dilation})"

    @property
    def extent(self) -> int:
        """D·(K − 1) + 1: the rows one window spans."""
        return self.dilation * (self.kernel_size - 1) + 1

    def last_read(self) -> Size:
        """The input row that the last tap of the last window reads: (O − 1)·S + D·(K − 1) − P_left."""
        return simplify_size(sympy.sympify(self.out_size - 1) * self.stride + self.extent - 1 - self.pad_left)

    def right_pad(self) -> Size:
        """The right padding that makes the windows end exactly at the last one (negative: a crop)."""
        end = sympy.sympify(self.out_size - 1) * self.stride + self.extent
        return simplify_size(end - self.in_size - self.pad_left)


@dataclass(frozen=True)
class SizeRule:
    """A pattern whose input or output size is left open in the file. At call time its output size is derived from
    the input's (O = floor((I + P_left + P_right − D·(K − 1) − 1) / S) + 1), the input's solved from the output's
    (stride 1 only: then I is unique), or, where arguments carry both, the two are checked against each other."""

    pattern: str
    legs: tuple[str, str]  # the pattern's i and o indices, as the file declares them
    conv: ConvPattern

    @property
    def formula(self) -> Size:
        p = self.conv
        return out_size(p.in_size, p.kernel_size, p.stride, p.pad_left, p.pad_right, p.dilation)


@dataclass(frozen=True)
class Select:
    """S[i, j] = 1 iff i = start + j·step, for 0 ≤ i < I, 0 ≤ j < J: a strided window of an index, as a tensor."""

    in_size: Size
    out_size: Size
    start: int
    step: int

    def describe(self) -> str:
        return f"select(start={self.start}, step={self.step})"


@dataclass(frozen=True)
class SliceOp:
    """Keep entries start:stop:step of an axis (stop may be a call-time size: the first O·S rows)."""

    axis: int
    start: int
    stop: Size
    step: int


@dataclass(frozen=True)
class SplitOp:
    """Split an axis into consecutive axes of these sizes (major first)."""

    axis: int
    sizes: tuple[Size, ...]


@dataclass(frozen=True)
class SqueezeOp:
    """Drop an axis of size 1."""

    axis: int


@dataclass(frozen=True)
class MergeOp:
    """Merge an axis with the next one (major first) into one axis."""

    axis: int


@dataclass(frozen=True)
class GatherOp:
    """Keep the entries of an axis that the sampler of index `index` drew (tensor dropout)."""

    axis: int
    index: str


@dataclass(frozen=True)
class WindowOp:
    """Apply an index pattern structurally: an axis i becomes axes (o, k) with x[o·S + k·D − P_left], zero outside
    (zero padding, then strided windows: a view, like im2col before the copy)."""

    axis: int
    pattern: ConvPattern


ViewOp = SliceOp | SplitOp | SqueezeOp | MergeOp | GatherOp | WindowOp


def gathers_last(ops: tuple[ViewOp, ...]) -> tuple[ViewOp, ...]:
    """Each gather (a copy) moved after the slices of other axes that follow it (views), so that it copies less: the
    order the generated code applies a view's ops in (schedule/operands.py), and the memory guard counts."""
    ordered = list(ops)
    changed = True
    while changed:
        changed = False
        for k in range(len(ordered) - 1):
            a, b = ordered[k], ordered[k + 1]
            if isinstance(a, GatherOp) and isinstance(b, SliceOp) and a.axis != b.axis:
                ordered[k], ordered[k + 1] = b, a
                changed = True
    return tuple(ordered)


@dataclass(frozen=True)
class View:
    """How a factor's tensor becomes its legs: reshaped to `base`, then each op in turn (all are views)."""

    base: tuple[Size, ...]
    ops: tuple[ViewOp, ...] = ()


def view_shape(view: View) -> tuple[Size, ...]:
    """The shape after all of a view's ops."""
    shape = list(view.base)
    for op in view.ops:
        if isinstance(op, SliceOp):
            shape[op.axis] = slice_length(op.start, op.stop, op.step)
        elif isinstance(op, SplitOp):
            shape[op.axis : op.axis + 1] = list(op.sizes)
        elif isinstance(op, SqueezeOp):
            del shape[op.axis]
        elif isinstance(op, MergeOp):
            shape[op.axis : op.axis + 2] = [shape[op.axis] * shape[op.axis + 1]]
        elif isinstance(op, WindowOp):
            shape[op.axis : op.axis + 1] = [op.pattern.out_size, op.pattern.kernel_size]
        else:
            shape[op.axis] = kept_symbol(op.index)
    return tuple(shape)


@dataclass(frozen=True)
class Fused:
    """Constants contracted into one tensor over `legs`, once per device and dtype; `sizes` covers every leg."""

    parts: tuple[Factor, ...]
    legs: tuple[str, ...]
    sizes: tuple[tuple[str, Size], ...]

    def describe(self) -> str:
        return " * ".join(f"{f.name or f.kind}({', '.join(f.legs)})" for f in self.parts)


FactorKind = Literal["input", "pattern", "delta", "select", "fused", "shared"]
FACTOR_KINDS: tuple[str, ...] = ("input", "pattern", "delta", "select", "fused", "shared")


@dataclass(frozen=True)
class Factor:
    """One tensor of a network: an argument, an index pattern, a copy tensor, a selection, fused constants, or a
    sub-network the diagram computes once (`shared`), legs in order.

    `name` is the argument, pattern or shared sub-network's name (empty for copy tensors and selections); `pattern`
    holds the constant's parameters (ConvPattern or Select); `view`, when set, narrows or reshapes the tensor first.
    """

    kind: FactorKind
    name: str
    legs: tuple[str, ...]
    span: Span | None = field(default=None, compare=False)
    pattern: ConvPattern | Select | Fused | None = None
    view: View | None = None

    def renamed(self, mapping: dict[str, str]) -> Factor:
        return replace(self, legs=tuple(mapping.get(leg, leg) for leg in self.legs))


@dataclass(frozen=True)
class Layout:
    """How a tensor's axes hold its legs: `((n,), (g, c), (i1,), (i2,))` for `[n, (g c), i1, i2]`."""

    axes: tuple[tuple[str, ...], ...]

    @property
    def legs(self) -> tuple[str, ...]:
        return tuple(leg for axis in self.axes for leg in axis)

    def text(self) -> str:
        parts = [axis[0] if len(axis) == 1 else "(" + " ".join(axis) + ")" for axis in self.axes]
        return "[" + ", ".join(parts) + "]"

    def axis_text(self, axis: int) -> str:
        names = self.axes[axis]
        return names[0] if len(names) == 1 else "(" + " ".join(names) + ")"


Role = Literal["forward", "transpose", "weight"]


@dataclass(frozen=True)
class NativeConv:
    """A term that one call of F.conv*d / F.conv_transpose*d / torch.nn.grad.conv*d_weight computes.

    `data` and `other` are factor positions: the input (or, for transpose, the input on the o legs) and the weight
    (or, for the weight gradient, the output gradient). Leg groups are in order; `patterns` in spatial order."""

    role: Role
    data: int
    other: int
    patterns: tuple[int, ...]
    batch: tuple[str, ...]
    groups: tuple[str, ...]
    data_channels: tuple[str, ...]
    other_channels: tuple[str, ...]
    tiled: tuple[str, ...] = ()  # sampled o legs: the kernel runs on the kept windows, one after the other
    masked: tuple[str, ...] = ()  # sampled o legs whose dropped rows are zeroed, for the kernel as written

    def describe(self) -> str:
        call = {"forward": "conv", "transpose": "conv_transpose", "weight": "conv_weight"}[self.role]
        kept = f" on the kept windows of {', '.join(self.tiled)} (stride K)" if self.tiled else ""
        if self.masked:
            kept = f" on grad with the dropped rows of {', '.join(self.masked)} zeroed"
        return f"native {call}{len(self.patterns)}d{kept}"


@dataclass(frozen=True)
class Sampler:
    """Index `index` of `size` entries is sampled at each call (tensor dropout): each entry kept with probability
    `p`, or, where `count` is given, exactly `count` distinct entries drawn uniformly (then `p` is the chance of each
    entry to be among them, count/size, where the size is known). p and count are the defaults of a keyword argument
    of the function, so a call may change them."""

    index: str
    size: Size
    p: float = 1.0
    count: int | None = None

    def scale(self) -> sympy.Expr:
        """What the estimate is scaled by to be unbiased: 1/p, or |index|/count (count is the number kept)."""
        if self.count is None:
            return 1 / p_symbol(self.index)
        return sympy.sympify(self.size) / kept_symbol(self.index)

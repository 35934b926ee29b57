"""Small immutable values of the IR: sizes, indices, index patterns, tensor factors and layouts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, TypeAlias

import sympy

from tncompiler.errors import Span

__all__ = ["Size", "size_symbol", "is_known", "ConvPattern", "Factor", "FactorKind", "Layout", "out_size"]

# A size is an int when known at compile time, else a sympy expression of the call-time symbols.
Size: TypeAlias = int | sympy.Expr


def size_symbol(name: str) -> sympy.Symbol:
    """The symbol standing for an index size that is bound from the arguments at call time."""
    return sympy.Symbol(name, integer=True, positive=True)


def is_known(size: Size) -> bool:
    """Whether a size is a compile-time integer."""
    return isinstance(size, int)


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


FactorKind = Literal["input", "pattern", "delta"]


@dataclass(frozen=True)
class Factor:
    """One tensor of a network: an argument, an index pattern or a copy tensor, with its legs in order.

    `name` is the argument or pattern name (empty for a copy tensor); `pattern` is set for patterns.
    """

    kind: FactorKind
    name: str
    legs: tuple[str, ...]
    span: Span | None = field(default=None, compare=False)
    pattern: ConvPattern | None = None

    def renamed(self, mapping: dict[str, str]) -> Factor:
        legs = tuple(mapping.get(leg, leg) for leg in self.legs)
        return Factor(self.kind, self.name, legs, self.span, self.pattern)


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

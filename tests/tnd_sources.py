"""`.tnd` sources for the autodiff, unfold and KFAC tests, and the plain-PyTorch functions they must equal.

A `Conv` describes one (transpose) convolution; `conv_source` writes it as a `.tnd` file defining `y`, followed
by any transform statements (`gx = vjp(y, x)`, ...). With one channel group the files leave the group index out
(`x[n, c, i1]`, `w[d, c, k1]`); with more they write it as PyTorch stores it (`x[n, (g c), i1]`,
`w[(g d), c, k1]`), so KFAC factors get a leading group axis only then.
"""

from __future__ import annotations

import functools
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.nn.functional as F

import tncompiler
from tests.helpers import pad_pairs, pattern_tensor

__all__ = [
    "Conv",
    "Padding",
    "conv",
    "conv_source",
    "group_unfold",
    "linear_source",
    "load",
    "pattern_tensor",
    "random_arguments",
    "relative_error",
    "torch_conv",
    "unfold_reference",
    "unfold_source",
]

# One spatial dimension's padding as the language writes it: an int, a pair (left, right), "same" or "valid".
Padding = int | tuple[int, int] | str
T = TypeVar("T")
Tensor = torch.Tensor


@dataclass(frozen=True)
class Conv:
    """A convolution over the pattern input sizes `i` (for a transpose convolution: the sizes of its output).

    `batch` is the declared size of the batch index `n`, or None to bind it at call time.
    """

    i: tuple[int, ...]
    k: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[Padding, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    c_in: int = 2
    c_out: int = 2
    bias: bool = False
    transpose: bool = False
    batch: int | None = None

    @property
    def dims(self) -> int:
        return len(self.i)

    def pads(self) -> tuple[tuple[int, int], ...]:
        """(left, right) per dimension; `same` puts the odd one on the right, as PyTorch does."""
        return tuple(pad_pairs(p, d, k) for p, d, k in zip(self.padding, self.dilation, self.k))

    def o(self) -> tuple[int, ...]:
        """The sizes of the pattern's o legs: O = floor((I + P_left + P_right - D(K - 1) - 1) / S) + 1."""
        return tuple((i + left + right - d * (k - 1) - 1) // s + 1
                     for i, k, s, d, (left, right) in zip(self.i, self.k, self.stride, self.dilation, self.pads()))

    def output_padding(self) -> tuple[int, ...]:
        """PyTorch's output_padding that makes a transpose convolution of size o come out with size i."""
        return tuple(i + left + right - d * (k - 1) - 1 - (o - 1) * s
                     for i, o, k, s, d, (left, right) in zip(self.i, self.o(), self.k, self.stride, self.dilation,
                                                              self.pads()))

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        """PyTorch's shapes of x, w (and b)."""
        if self.transpose:
            shapes = [(batch, self.groups * self.c_in, *self.o()), (self.groups * self.c_in, self.c_out, *self.k)]
        else:
            shapes = [(batch, self.groups * self.c_in, *self.i), (self.groups * self.c_out, self.c_in, *self.k)]
        return shapes + [(self.groups * self.c_out,)] if self.bias else shapes


def _per_dim(value: T | list[T], dims: int) -> tuple[T, ...]:
    return tuple(value) if isinstance(value, list) else (value,) * dims


def conv(i: Sequence[int], k: Sequence[int], *, stride: int | list[int] = 1, padding: Padding | list[Padding] = 0,
         dilation: int | list[int] = 1, groups: int = 1, c_in: int = 2, c_out: int = 2, bias: bool = False,
         transpose: bool = False, batch: int | None = None) -> Conv:
    """A `Conv`; stride, padding and dilation are one value for every dimension or a list with one per dimension."""
    dims = len(i)
    return Conv(tuple(i), tuple(k), _per_dim(stride, dims), _per_dim(padding, dims), _per_dim(dilation, dims),
                groups, c_in, c_out, bias, transpose, batch)


# --- .tnd text ---------------------------------------------------------------------------------------------------


def _legs(prefix: str, dims: int) -> str:
    return ", ".join(f"{prefix}{j + 1}" for j in range(dims))


def _header(spec: Conv) -> list[str]:
    """Index and pattern declarations; transpose convolutions declare the o sizes too."""
    sizes = ", ".join(f"i{j + 1} = {i}, k{j + 1} = {k}" for j, (i, k) in enumerate(zip(spec.i, spec.k)))
    groups = f"g = {spec.groups}, " if spec.groups > 1 else ""
    lines = ["index n" + (f" = {spec.batch}" if spec.batch else ""),
             f"index {groups}c = {spec.c_in}, d = {spec.c_out}", f"index {sizes}"]
    if spec.transpose:
        lines.append("index " + ", ".join(f"o{j + 1} = {o}" for j, o in enumerate(spec.o())))
    for j in range(spec.dims):
        pad = spec.padding[j]
        text = f"({pad[0]}, {pad[1]})" if isinstance(pad, tuple) else str(pad)
        args = f"stride={spec.stride[j]}, padding={text}, dilation={spec.dilation[j]}"
        lines.append(f"pattern p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1}) = conv({args})")
    return lines


def _channels(spec: Conv, name: str) -> str:
    return f"(g {name})" if spec.groups > 1 else name


def _product(spec: Conv) -> tuple[str, str, str, str]:
    """x, w, y and the pattern product, as factors."""
    c, d, dims = _channels(spec, "c"), _channels(spec, "d"), spec.dims
    patterns = " * ".join(f"p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1})" for j in range(dims))
    ins, outs, ks = _legs("i", dims), _legs("o", dims), _legs("k", dims)
    if spec.transpose:  # input on the o legs, result on the i legs, weight [(g c), d, k...]
        return f"x[n, {c}, {outs}]", f"w[{c}, d, {ks}]", f"y[n, {d}, {ins}]", patterns
    return f"x[n, {c}, {ins}]", f"w[{d}, c, {ks}]", f"y[n, {d}, {outs}]", patterns


def conv_source(spec: Conv, transforms: Sequence[str] = ()) -> str:
    """The `.tnd` text of `spec` as `y(x, w[, b])`, then one line per transform statement."""
    x, w, y, patterns = _product(spec)
    bias = f"b[{_channels(spec, 'd')}]"
    lines = _header(spec) + [f"input {x}", f"input {w}"] + ([f"input {bias}"] if spec.bias else [])
    lines.append(f"{y} = {x} * {patterns} * {w}" + (f" + {bias}" if spec.bias else ""))
    return "\n".join(lines + list(transforms)) + "\n"


def unfold_source(spec: Conv) -> str:
    """`u[n, (c k...), (o...)]`: unfold (im2col) of `spec`'s input, written directly as a definition."""
    assert spec.groups == 1 and not spec.transpose
    dims = spec.dims
    patterns = " * ".join(f"p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1})" for j in range(dims))
    ks, outs = " ".join(f"k{j + 1}" for j in range(dims)), " ".join(f"o{j + 1}" for j in range(dims))
    lines = _header(spec) + [f"input x[n, c, {_legs('i', dims)}]"]
    lines.append(f"u[n, (c {ks}), ({outs})] = x[n, c, {_legs('i', dims)}] * {patterns}")
    return "\n".join(lines) + "\n"


def linear_source(transforms: Sequence[str] = (), batch: int | None = None, c: int = 4, d: int = 3) -> str:
    """A dense layer `y[n, d] = x[n, c] * w[d, c] + b[d]` (no index patterns), then the transforms."""
    lines = ["index n" + (f" = {batch}" if batch else ""), f"index c = {c}, d = {d}",
             "input x[n, c]", "input w[d, c]", "input b[d]", "y[n, d] = x[n, c] * w[d, c] + b[d]"]
    return "\n".join(lines + list(transforms)) + "\n"


@functools.cache
def load(source: str) -> types.ModuleType:
    """Compile each `.tnd` text once per test session."""
    return tncompiler.load_source(source, "test.tnd")


# --- PyTorch references ------------------------------------------------------------------------------------------


def random_arguments(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> list[Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


def _conv_padding(spec: Conv) -> tuple[bool, str | tuple[int, ...]]:
    """Whether x needs an explicit F.pad, else the padding argument of F.convNd."""
    if len(set(spec.padding)) == 1 and spec.padding[0] in ("same", "valid"):
        return False, str(spec.padding[0])
    pairs = spec.pads()
    if all(left == right for left, right in pairs):
        return False, tuple(left for left, _ in pairs)
    return True, (0,) * spec.dims


def torch_conv(spec: Conv, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """`spec` with torch.nn.functional: F.convNd (asymmetric padding through F.pad) or F.conv_transposeNd."""
    if spec.transpose:
        assert all(left == right for left, right in spec.pads()), "transpose references take symmetric padding"
        transpose: Callable[..., Tensor] = getattr(F, f"conv_transpose{spec.dims}d")
        return transpose(x, w, b, stride=spec.stride, padding=tuple(p for p, _ in spec.pads()),
                         output_padding=spec.output_padding(), groups=spec.groups, dilation=spec.dilation)
    explicit, padding = _conv_padding(spec)
    if explicit:
        x = F.pad(x, [p for pair in reversed(spec.pads()) for p in pair])  # F.pad lists the last dimension first
    convolve: Callable[..., Tensor] = getattr(F, f"conv{spec.dims}d")
    with warnings.catch_warnings():  # PyTorch warns that padding="same" with an even kernel copies the input
        warnings.simplefilter("ignore", UserWarning)
        return convolve(x, w, b, stride=spec.stride, padding=padding, dilation=spec.dilation, groups=spec.groups)


def unfold_reference(spec: Conv, x: Tensor) -> Tensor:
    """im2col from explicit index patterns, any number of dimensions: [n, channels, (k...), (o...)]."""
    letters_i, letters_o, letters_k = "ABCDE"[:spec.dims], "FGHIJ"[:spec.dims], "KLMNO"[:spec.dims]
    patterns = [pattern_tensor(i, o, k, s, left, d).to(x.dtype) for i, o, k, s, d, (left, _)
                in zip(spec.i, spec.o(), spec.k, spec.stride, spec.dilation, spec.pads())]
    operands = ",".join(["nc" + letters_i] + ["".join(legs) for legs in zip(letters_i, letters_o, letters_k)])
    unfolded = torch.einsum(f"{operands}->nc{letters_k}{letters_o}", x, *patterns)
    return unfolded.flatten(2 + spec.dims).flatten(2, 1 + spec.dims)


def group_unfold(spec: Conv, x: Tensor) -> Tensor:
    """im2col per channel group: [n, groups, (c k...), (o...)]."""
    unfolded = unfold_reference(spec, x)  # [n, (g c), (k...), (o...)]
    n, _, taps, positions = unfolded.shape
    return unfolded.reshape(n, spec.groups, spec.c_in * taps, positions)


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|, after checking shape and dtype."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    scale = expected.abs().max().item() or 1.0
    return (actual - expected).abs().max().item() / scale

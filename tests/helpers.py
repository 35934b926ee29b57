"""Shared test helpers: `.tnd` sources for N-d (transpose) convolutions and their PyTorch references."""

from __future__ import annotations

import functools
import itertools
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
import torch.nn.functional as F

import tncompiler

__all__ = [
    "ConvSpec",
    "Padding",
    "assert_close",
    "conv_reference",
    "conv_source",
    "conv_spec",
    "load_cached",
    "make_arguments",
    "pad_pairs",
    "pattern_reference",
    "pattern_tensor",
    "transpose_reference",
]

# One spatial dimension's padding, as the language writes it: an int, a pair (left, right), "same" or "valid".
Padding = int | tuple[int, int] | str
# The file's tolerance per dtype: max abs error / max abs reference.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
T = TypeVar("T")


@dataclass(frozen=True)
class ConvSpec:
    """A (transpose) convolution with `groups` groups of `c_in` in- and `c_out` out-channels.

    For a plain convolution `spatial` are the input sizes I; for a transpose one they are the sizes of its
    input, which carries the pattern's o legs. A `None` stride, padding or dilation is left out of the file
    (the pattern's default applies). `output_padding` only matters for a transpose convolution.
    """

    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int | None, ...]
    padding: tuple[Padding | None, ...]
    dilation: tuple[int | None, ...]
    groups: int = 1
    c_in: int = 2
    c_out: int = 2
    bias: bool = False
    transpose: bool = False
    output_padding: tuple[int, ...] = field(default=())

    @property
    def dims(self) -> int:
        return len(self.spatial)

    def strides(self) -> tuple[int, ...]:
        return tuple(1 if s is None else s for s in self.stride)

    def dilations(self) -> tuple[int, ...]:
        return tuple(1 if d is None else d for d in self.dilation)

    def pads(self) -> tuple[tuple[int, int], ...]:
        """(left, right) per dimension, with `same` split as PyTorch does (the odd one on the right)."""
        return tuple(pad_pairs(p, d, k) for p, d, k in zip(self.padding, self.dilations(), self.kernel))

    def in_sizes(self) -> tuple[int, ...]:
        """The sizes of the pattern's i legs (for a transpose convolution: the sizes of its output)."""
        if not self.transpose:
            return self.spatial
        ops = self.output_padding or (0,) * self.dims
        return tuple((o - 1) * s + d * (k - 1) + 1 - left - right + op for o, s, d, k, (left, right), op
                     in zip(self.spatial, self.strides(), self.dilations(), self.kernel, self.pads(), ops))

    def out_sizes(self) -> tuple[int, ...]:
        """The sizes of the pattern's o legs."""
        if self.transpose:
            return self.spatial
        return tuple((i + left + right - d * (k - 1) - 1) // s + 1 for i, s, d, k, (left, right)
                     in zip(self.spatial, self.strides(), self.dilations(), self.kernel, self.pads()))


def _per_dim(value: T | list[T], dims: int) -> tuple[T, ...]:
    """A per-dimension tuple from one value for all dimensions or a list with one per dimension."""
    if isinstance(value, list):
        assert len(value) == dims, f"{value} needs {dims} entries"
        return tuple(value)
    return (value,) * dims


def conv_spec(spatial: Sequence[int], kernel: Sequence[int], *, stride: int | None | list[int | None] = 1,
              padding: Padding | None | list[Padding | None] = 0, dilation: int | None | list[int | None] = 1,
              output_padding: int | list[int] = 0, groups: int = 1, c_in: int = 2, c_out: int = 2,
              bias: bool = False, transpose: bool = False) -> ConvSpec:
    """A `ConvSpec` where stride, padding, dilation and output_padding are one value, or a list per dimension."""
    dims = len(spatial)
    assert len(kernel) == dims
    return ConvSpec(tuple(spatial), tuple(kernel), _per_dim(stride, dims), _per_dim(padding, dims),
                    _per_dim(dilation, dims), groups, c_in, c_out, bias, transpose, _per_dim(output_padding, dims))


def pad_pairs(padding: Padding | None, dilation: int, kernel: int) -> tuple[int, int]:
    """(left, right) for one dimension's padding."""
    if padding is None or padding == "valid":
        return 0, 0
    if padding == "same":
        total = dilation * (kernel - 1)
        return total // 2, total - total // 2
    if isinstance(padding, tuple):
        return padding
    assert isinstance(padding, int)
    return padding, padding


def _padding_text(padding: Padding) -> str:
    return f"({padding[0]}, {padding[1]})" if isinstance(padding, tuple) else str(padding)


def _pattern_line(spec: ConvSpec, dim: int) -> str:
    args = [f"{key}={_padding_text(value)}" for key, value in (
        ("stride", spec.stride[dim]), ("padding", spec.padding[dim]), ("dilation", spec.dilation[dim]))
        if value is not None]
    return f"pattern p{dim + 1}(i{dim + 1}, o{dim + 1}, k{dim + 1}) = conv({', '.join(args)})"


def _index_lines(spec: ConvSpec) -> list[str]:
    items = [f"i{j + 1} = {i}, k{j + 1} = {k}" for j, (i, k) in enumerate(zip(spec.in_sizes(), spec.kernel))]
    lines = ["index n", f"index g = {spec.groups}, c = {spec.c_in}, d = {spec.c_out}", "index " + ", ".join(items)]
    if spec.transpose:  # a transpose convolution declares the o sizes too
        lines.append("index " + ", ".join(f"o{j + 1} = {o}" for j, o in enumerate(spec.out_sizes())))
    return lines


def conv_source(spec: ConvSpec) -> str:
    """The `.tnd` text of the convolution (or transpose convolution) `spec`, defining `y`."""
    ins = ", ".join(f"i{j + 1}" for j in range(spec.dims))
    outs = ", ".join(f"o{j + 1}" for j in range(spec.dims))
    kernels = ", ".join(f"k{j + 1}" for j in range(spec.dims))
    patterns = " * ".join(f"p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1})" for j in range(spec.dims))
    if spec.transpose:  # input on the o legs, output on the i legs; weight [(g c), d, k...]
        x, y, w = f"x[n, (g c), {outs}]", f"y[n, (g d), {ins}]", f"w[(g c), d, {kernels}]"
    else:
        x, y, w = f"x[n, (g c), {ins}]", f"y[n, (g d), {outs}]", f"w[(g d), c, {kernels}]"
    lines = _index_lines(spec) + [_pattern_line(spec, j) for j in range(spec.dims)]
    lines += [f"input {x}", f"input {w}"] + (["input b[(g d)]"] if spec.bias else [])
    lines.append(f"{y} = {x} * {patterns} * {w}")
    if spec.bias:
        lines.append("    + b[(g d)]")
    return "\n".join(lines) + "\n"


@functools.cache
def load_cached(source: str) -> types.ModuleType:
    """Compile each `.tnd` text once per test session."""
    return tncompiler.load_source(source, "test.tnd")


def make_arguments(spec: ConvSpec, batch: int, dtype: torch.dtype, seed: int = 0) -> list[torch.Tensor]:
    """Random x, w (and b) for `spec`, in PyTorch's layouts."""
    generator = torch.Generator().manual_seed(seed)
    channels_in, channels_out = spec.groups * spec.c_in, spec.groups * spec.c_out
    if spec.transpose:
        shapes = [(batch, channels_in, *spec.out_sizes()), (channels_in, spec.c_out, *spec.kernel)]
    else:
        shapes = [(batch, channels_in, *spec.in_sizes()), (channels_out, spec.c_in, *spec.kernel)]
    shapes += [(channels_out,)] if spec.bias else []
    return [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype) for shape in shapes]


def _padded_arguments(spec: ConvSpec) -> tuple[bool, str | tuple[int, ...]]:
    """Whether the input needs an explicit F.pad, and else the padding argument F.conv takes."""
    kinds = set(spec.padding)
    if len(kinds) == 1 and next(iter(kinds)) in ("same", "valid"):
        return False, str(next(iter(kinds)))  # PyTorch's own split of `same`
    pairs = spec.pads()
    if all(left == right for left, right in pairs):
        return False, tuple(left for left, _ in pairs)
    return True, (0,) * spec.dims


def conv_reference(spec: ConvSpec, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The convolution with torch.nn.functional; asymmetric padding through F.pad."""
    explicit, padding = _padded_arguments(spec)
    if explicit:
        x = F.pad(x, [p for pair in reversed(spec.pads()) for p in pair])  # F.pad lists the last dimension first
    convolve: Callable[..., torch.Tensor] = getattr(F, f"conv{spec.dims}d")
    with warnings.catch_warnings():  # PyTorch warns that padding="same" with an even kernel copies the input
        warnings.simplefilter("ignore", UserWarning)
        return convolve(x, w, b, stride=spec.strides(), padding=padding, dilation=spec.dilations(),
                        groups=spec.groups)


def transpose_reference(spec: ConvSpec, x: torch.Tensor, w: torch.Tensor,
                        b: torch.Tensor | None = None) -> torch.Tensor:
    """The transpose convolution with torch.nn.functional; asymmetric padding by cropping the unpadded result."""
    convolve: Callable[..., torch.Tensor] = getattr(F, f"conv_transpose{spec.dims}d")
    pairs = spec.pads()
    if all(left == right for left, right in pairs):
        return convolve(x, w, b, stride=spec.strides(), padding=tuple(left for left, _ in pairs),
                        output_padding=spec.output_padding, dilation=spec.dilations(), groups=spec.groups)
    full = convolve(x, w, None, stride=spec.strides(), dilation=spec.dilations(), groups=spec.groups)
    for axis, ((left, _), size) in enumerate(zip(pairs, spec.in_sizes()), start=2):
        full = F.pad(full.movedim(axis, -1), [0, max(0, left + size - full.shape[axis])]).movedim(-1, axis)
        full = full.narrow(axis, left, size)
    return full if b is None else full + b.view(-1, *(1,) * spec.dims)


def pattern_tensor(in_size: int, out_size: int, kernel: int, stride: int, pad_left: int, dilation: int,
                   dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Π[i, o, k] = 1 iff i = o·S + k·D − P_left, written out entry by entry from the definition."""
    pattern = torch.zeros(in_size, out_size, kernel, dtype=dtype)
    for o, k in itertools.product(range(out_size), range(kernel)):
        i = o * stride + k * dilation - pad_left
        if 0 <= i < in_size:
            pattern[i, o, k] = 1
    return pattern


def pattern_reference(spec: ConvSpec, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    """The (transpose) convolution as one dense einsum over explicit index patterns, for any number of dims."""
    assert spec.dims <= 7
    i, o, k = "ABCDEFG"[:spec.dims], "HIJKLMN"[:spec.dims], "OPQRSTU"[:spec.dims]
    patterns = [pattern_tensor(*sizes, s, left, dil, dtype=x.dtype) for sizes, s, (left, _), dil in
                zip(zip(spec.in_sizes(), spec.out_sizes(), spec.kernel), spec.strides(), spec.pads(), spec.dilations())]
    xs = x.reshape(x.shape[0], spec.groups, spec.c_in, *x.shape[2:])
    if spec.transpose:  # x on the o legs, y on the i legs, w laid out [(g c), d, k...]
        ws = w.reshape(spec.groups, spec.c_in, spec.c_out, *w.shape[2:])
        operands, result, sizes = f"ngc{o},gcd{k}", f"ngd{i}", spec.in_sizes()
    else:
        ws = w.reshape(spec.groups, spec.c_out, spec.c_in, *w.shape[2:])
        operands, result, sizes = f"ngc{i},gdc{k}", f"ngd{o}", spec.out_sizes()
    equation = operands + "," + ",".join("".join(legs) for legs in zip(i, o, k)) + "->" + result
    y = torch.einsum(equation, xs, ws, *patterns).reshape(x.shape[0], spec.groups * spec.c_out, *sizes)
    return y if b is None else y + b.view(-1, *(1,) * spec.dims)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Same shape and dtype, and max abs error / max abs reference within the dtype's tolerance."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    scale = expected.abs().max().item() or 1.0
    error = (actual - expected).abs().max().item() / scale
    assert error <= TOLERANCE[expected.dtype], f"relative error {error:.3g} > {TOLERANCE[expected.dtype]:g}"

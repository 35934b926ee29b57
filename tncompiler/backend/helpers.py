"""The runtime helpers: runtime.py copies the source of each one a generated module uses into that module, its type
hints left out (generated code has none). Generated modules import nothing but torch, so neither may a helper; the
hints may name anything, as they are never evaluated (postponed annotations), and they are checked here by mypy.

Laid out by hand, not by ruff format: the copies must read as generated modules have always carried them."""

# I, O and K name an input, output and kernel size as the spec's formulas do (E741), and O != expected reads as one
# (SIM300 takes O for a constant).
# ruff: noqa: E741, SIM300
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence

import torch

# fmt: off

# Index patterns, copy tensors and fused constants, built once per shape, device and dtype, then reused. The cache
# keeps the most recently used of them that fit in _CONSTANTS_LIMIT bytes (change it to keep more or fewer); the
# least recently used go first, and a constant larger than the limit is built anew at each call that needs it.
_CONSTANTS: dict[Hashable, torch.Tensor] = {}  # key -> tensor, the least recently used first
_CONSTANTS_LIMIT = 256 * 2**20


def _constant(key: tuple[object, ...], build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The cached constant of `key`, or build() (kept if it fits, the least recently used making room)."""
    value = _CONSTANTS.pop(key, None)
    if value is None:
        value = build()
        if value.nbytes > _CONSTANTS_LIMIT:
            return value
        held = value.nbytes + sum(t.nbytes for t in list(_CONSTANTS.values()))
        while held > _CONSTANTS_LIMIT and _CONSTANTS:
            oldest = _CONSTANTS.pop(next(iter(_CONSTANTS), None), None)
            held -= 0 if oldest is None else oldest.nbytes
    _CONSTANTS[key] = value  # the most recently used last
    return value


def _conv_pattern(
    I: int, O: int, K: int, stride: int, pad_left: int, dilation: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Pi[i, o, k] = 1 iff i = o*stride + k*dilation - pad_left, as a dense (I, O, K) tensor (cached)."""
    def build() -> torch.Tensor:
        o = torch.arange(O, device=device).view(1, O, 1)
        k = torch.arange(K, device=device).view(1, 1, K)
        i = torch.arange(I, device=device).view(I, 1, 1)
        return (i == o * stride + k * dilation - pad_left).to(dtype)
    return _constant(("conv", I, O, K, stride, pad_left, dilation, device, dtype), build)


def _delta(size: int, legs: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The copy tensor: 1 where all of its `legs` indices (each of `size` entries) are equal (cached)."""
    def build() -> torch.Tensor:
        delta = torch.zeros((size,) * legs, device=device, dtype=dtype)
        diagonal = torch.arange(size, device=device)
        delta[(diagonal,) * legs] = 1
        return delta
    return _constant(("delta", size, legs, device, dtype), build)


def _select(I: int, J: int, start: int, step: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """S[i, j] = 1 iff i = start + j*step: a strided window of an index as a dense (I, J) tensor (cached)."""
    def build() -> torch.Tensor:
        i = torch.arange(I, device=device).view(I, 1)
        j = torch.arange(J, device=device).view(1, J)
        return (i == start + j * step).to(dtype)
    return _constant(("select", I, J, start, step, device, dtype), build)


def _keep(size: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    """Tensor dropout: the indices of the entries kept, each independently with probability p. Drawn on the host (or
    on the generator's device): the same seed keeps the same entries whatever the arguments' device, and the call
    never waits for that device."""
    where = "cpu" if generator is None else generator.device
    return torch.nonzero(torch.rand(size, generator=generator, device=where) < p).flatten()


def _choose(size: int, count: int, generator: torch.Generator | None) -> torch.Tensor:
    """Tensor dropout with a fixed budget: `count` distinct indices out of `size`, drawn uniformly without
    replacement, in increasing order; drawn where _keep draws."""
    where = "cpu" if generator is None else generator.device
    return torch.randperm(size, generator=generator, device=where)[:count].sort().values


def _keep_probability(function: str, name: str, p: object) -> float:
    """A keep-probability given per call: a number in (0, 1]."""
    if isinstance(p, (bool, torch.Tensor)) or not isinstance(p, (int, float)):
        raise TypeError(f"{function}(): keyword {name}= is the probability to keep each entry and must be a number, "
                         f"got {type(p).__name__}")
    if not 0 < p <= 1:
        raise ValueError(f"{function}(): keyword {name}= is the probability to keep each entry and must be in (0, 1], "
                         f"got {p}")
    return p


def _keep_count(function: str, name: str, count: int, index: str, size: int) -> int:
    """A number of entries to keep given per call: a whole number from 1 to the size of the sampled index."""
    if isinstance(count, (bool, torch.Tensor)) or not hasattr(count, "__index__"):
        raise TypeError(f"{function}(): keyword {name}= is the number of entries of index {index} to keep and must be "
                         f"an int, got {type(count).__name__}")
    if not 1 <= count <= size:
        raise ValueError(f"{function}(): keyword {name}={count}, but index {index} has {size} entries: "
                         f"keep from 1 to {size} of them")
    return count


def _window_sum(
    t: torch.Tensor, axis: int, I: int, O: int, K: int, stride: int, pad_left: int, dilation: int
) -> torch.Tensor:
    """sum_o t[.., o*stride + k*dilation - pad_left, ..] for each k (indices outside 0..I-1 read zero): axis i of t
    goes and axis k comes last, as in a tensordot with the (I, K) matrix sum_o Pi. One strided sum per residue of
    i mod stride, minus the few entries outside each k's windows."""
    def part(start: int, stop: int) -> torch.Tensor:  # t[.., start:stop:stride, ..], summed over the axis
        return t[(slice(None),) * axis + (slice(start, stop, stride),)].sum(axis)
    totals, sums = {}, []
    for k in range(K):
        first = k * dilation - pad_left
        lo = first if first >= 0 else first + (-first + stride - 1) // stride * stride
        hi = min(first + (O - 1) * stride, first + (I - 1 - first) // stride * stride)
        if lo > hi:
            sums.append(t.narrow(axis, 0, 1).sum(axis) * 0)
            continue
        kept = (hi - lo) // stride + 1
        residue = lo % stride
        if 2 * kept <= (I - residue + stride - 1) // stride:  # few windows: sum them directly
            sums.append(part(lo, hi + 1))
            continue
        if residue not in totals:
            totals[residue] = part(residue, I)
        value = totals[residue]
        if lo > residue:
            value = value - part(residue, lo)
        if hi + stride < I:
            value = value - part(hi + stride, I)
        sums.append(value)
    return torch.stack(sums, -1)


def _take(t: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """t.index_select(axis, index); on the last axis torch.gather, which copies single entries 4x faster."""
    if axis < t.dim() - 1:
        return t.index_select(axis, index)
    return torch.gather(t, axis, index.expand(*t.shape[:-1], -1))


def _pad(t: torch.Tensor, pads: Sequence[int]) -> torch.Tensor:
    """F.pad for amounts known at call time only: pads lists (left, right) per axis, the last axis first; a negative
    amount crops, also more entries than there are (the rest is zeros), and nothing is copied where nothing changes."""
    if all(amount == 0 for amount in pads):
        return t
    if all(amount >= 0 for amount in pads):
        return torch.nn.functional.pad(t, pads)
    shape, kept, positive = list(t.shape), [], []
    for k in range(len(pads) // 2):
        axis, left, right = t.dim() - 1 - k, pads[2 * k], pads[2 * k + 1]
        size = shape[axis]
        kept.append((axis, max(0, -left), min(size, size + right)))  # the entries that stay
        shape[axis] = size + left + right
        positive += [max(left, 0), max(right, 0)]
    if any(hi <= lo for _, lo, hi in kept) or min(shape) <= 0:  # nothing stays: zeros
        return t.new_zeros([max(0, size) for size in shape])
    for axis, lo, hi in kept:
        t = t.narrow(axis, lo, hi - lo)
    return torch.nn.functional.pad(t, positive) if any(positive) else t


def _cached(key: tuple[object, ...], build: Callable[[], torch.Tensor]) -> torch.Tensor:
    """A constant built once per key (function, position, device, dtype), then reused while the cache keeps it."""
    return _constant(key, build)


def _check_arguments(function: str, arguments: Iterable[tuple[str, object, Sequence[str]]]) -> None:
    """Each argument is a tensor of the declared rank; all share one floating dtype and one device."""
    first: tuple[str, torch.Tensor] | None = None
    for name, value, layout in arguments:
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{function}(): argument {name!r} must be a torch.Tensor, got {type(value).__name__}")
        if value.layout != torch.strided:
            raise TypeError(f"{function}(): argument {name!r} must be a dense (strided) tensor, got layout "
                            f"{value.layout}; call .to_dense() first")
        if value.dim() != len(layout):
            raise ValueError(f"{function}(): argument {name!r} must have {len(layout)} axes "
                             f"[{', '.join(layout)}], got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise ValueError(f"{function}(): argument {name!r} must have a real floating dtype (float16, bfloat16, "
                             f"float32 or float64), got {value.dtype}"
                             + ("; complex arguments are not supported (a VJP here is the plain transpose, not "
                                "PyTorch's conjugate one)" if value.is_complex() else ""))
        if first is None:
            first = (name, value)
        elif value.dtype != first[1].dtype:
            raise ValueError(f"{function}(): argument {name!r} has dtype {value.dtype}, "
                             f"but {first[0]!r} has {first[1].dtype}")
        elif value.device != first[1].device:
            raise ValueError(f"{function}(): argument {name!r} is on {value.device}, "
                             f"but {first[0]!r} is on {first[1].device}")


def _check_size(function: str, argument: str, axis: int, index: str, actual: int, expected: int) -> None:
    """An axis has the size the file gives its index (or that an earlier argument bound)."""
    if actual != expected:
        raise ValueError(f"{function}(): argument {argument!r} axis {axis} ({index}) has size {actual}, "
                         f"expected {expected}")


def _check_shapes(
    function: str, arguments: Iterable[tuple[str, torch.Tensor, Sequence[str], Sequence[int]]]
) -> None:
    """Each argument has the declared rank (the fast check leaves a rank to this one where nothing reads the axes
    before), and each axis the size the file gives its index (or that an earlier argument bound): the first that
    does not is named."""
    for name, value, layout, expected in arguments:
        if value.dim() != len(layout):
            raise ValueError(f"{function}(): argument {name!r} must have {len(layout)} axes "
                             f"[{', '.join(layout)}], got shape {tuple(value.shape)}")
        for axis, (index, actual, size) in enumerate(zip(layout, value.shape, expected)):
            if actual != size:
                raise ValueError(f"{function}(): argument {name!r} axis {axis} ({index}) has size {actual}, "
                                 f"expected {size}")


def _nonzero(function: str, index: str, size: int) -> int:
    """A size the result is divided by (a KFAC factor's 1/|n|, a file's / size(n)) must not be 0."""
    if size == 0:
        raise ValueError(f"{function}(): index {index} has size 0 (an empty batch?), and the result is divided by it")
    return size


def _bind_size(function: str, argument: str, axis: int, index: str, actual: int, known: int) -> int:
    """The size of the one call-time index in an axis whose other indices hold `known` entries."""
    if actual % known:
        raise ValueError(f"{function}(): argument {argument!r} axis {axis} ({index}) has size {actual}, "
                         f"which is not a multiple of {known}")
    return actual // known


def _size_keyword(function: str, name: str, value: int) -> int:
    """A size given as a keyword argument: a positive int."""
    if isinstance(value, (bool, torch.Tensor)) or not hasattr(value, "__index__"):
        raise TypeError(f"{function}(): keyword {name}= is the size of index {name} and must be an int, "
                         f"got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{function}(): keyword {name}= is the size of index {name} and must be at least 1, "
                         f"got {value}")
    return value


def _out_size(
    function: str, where: str, I: int, pattern: str, K: int, stride: int, pad_left: int, pad_right: int, dilation: int
) -> int:
    """A pattern's output size O = (I + P_left + P_right - D*(K - 1) - 1) // S + 1 for its input size I."""
    extent = dilation * (K - 1) + 1
    O = (I + pad_left + pad_right - extent) // stride + 1
    if O < 1:
        raise ValueError(f"{function}(): {where} has size {I}, too small for pattern {pattern!r}: its windows span "
                         f"{extent} entries and the padding adds {pad_left + pad_right}, so no window fits "
                         f"(the size must be at least {extent - pad_left - pad_right})")
    return O


def _in_size(
    function: str, where: str, O: int, pattern: str, K: int, stride: int, pad_left: int, pad_right: int, dilation: int
) -> int:
    """A stride-1 pattern's input size I = O - 1 + D*(K - 1) + 1 - P_left - P_right for its output size O."""
    I = O - 1 + dilation * (K - 1) + 1 - pad_left - pad_right
    if I < 1:
        raise ValueError(f"{function}(): {where} has size {O}, but pattern {pattern!r} has at most "
                         f"{pad_left + pad_right - dilation * (K - 1)} windows over no input")
    return I


def _check_out_size(
    function: str, where_o: str, O: int, where_i: str, I: int, pattern: str,
    K: int, stride: int, pad_left: int, pad_right: int, dilation: int,
) -> None:
    """A pattern's output size agrees with its input size: O = (I + P_left + P_right - D*(K - 1) - 1) // S + 1."""
    expected = (I + pad_left + pad_right - dilation * (K - 1) - 1) // stride + 1
    if O != expected:
        raise ValueError(f"{function}(): {where_o} has size {O}, but pattern {pattern!r} gives "
                         f"{max(expected, 0)} windows over {where_i} of size {I}")


def _device_keyword(function: str, device: torch.device | str | int | None) -> torch.device:
    """The device= of a function without tensor arguments: torch's default device where None."""
    if device is None:
        return torch.empty(0).device
    if not isinstance(device, (str, int, torch.device)) or isinstance(device, bool):
        raise TypeError(f"{function}(): keyword device= must be a torch.device, a str or an int, "
                        f"got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError:
        raise ValueError(f"{function}(): keyword device={device!r} is not a device torch knows (e.g. 'cpu', "
                         f"'cuda:0')") from None


def _dtype_keyword(function: str, dtype: torch.dtype | None) -> torch.dtype:
    """The dtype= of a function without tensor arguments: a real floating dtype, torch's default where None."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{function}(): keyword dtype= must be a torch.dtype, got {type(dtype).__name__}")
    if not dtype.is_floating_point:
        raise ValueError(f"{function}(): keyword dtype= must be a real floating dtype (float16, bfloat16, float32 or "
                         f"float64), got {dtype}")
    return dtype


def _generator_keyword(function: str, generator: torch.Generator | None) -> torch.Generator | None:
    """The generator= of a sampled function: None (torch's default CPU generator) or a torch.Generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{function}(): keyword generator= must be a torch.Generator or None, "
                        f"got {type(generator).__name__}")
    return generator

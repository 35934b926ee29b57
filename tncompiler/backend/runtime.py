"""Helper functions copied into generated modules, only those a module uses. They need only torch."""

from __future__ import annotations

__all__ = ["HELPERS", "helper_source"]

_CONSTANTS = '''
# Index patterns, copy tensors and fused constants, built once per shape, device and dtype, then reused. The cache
# keeps the most recently used of them that fit in _CONSTANTS_LIMIT bytes (change it to keep more or fewer); the
# least recently used go first, and a constant larger than the limit is built anew at each call that needs it.
_CONSTANTS = {}  # key -> tensor, the least recently used first
_CONSTANTS_LIMIT = 256 * 2**20


def _constant(key, build):
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
'''

_CONV_PATTERN = '''
def _conv_pattern(I, O, K, stride, pad_left, dilation, device, dtype):
    """Pi[i, o, k] = 1 iff i = o*stride + k*dilation - pad_left, as a dense (I, O, K) tensor (cached)."""
    def build():
        o = torch.arange(O, device=device).view(1, O, 1)
        k = torch.arange(K, device=device).view(1, 1, K)
        i = torch.arange(I, device=device).view(I, 1, 1)
        return (i == o * stride + k * dilation - pad_left).to(dtype)
    return _constant(("conv", I, O, K, stride, pad_left, dilation, device, dtype), build)
'''

_DELTA = '''
def _delta(size, legs, device, dtype):
    """The copy tensor: 1 where all of its `legs` indices (each of `size` entries) are equal (cached)."""
    def build():
        delta = torch.zeros((size,) * legs, device=device, dtype=dtype)
        diagonal = torch.arange(size, device=device)
        delta[(diagonal,) * legs] = 1
        return delta
    return _constant(("delta", size, legs, device, dtype), build)
'''

_SELECT = '''
def _select(I, J, start, step, device, dtype):
    """S[i, j] = 1 iff i = start + j*step: a strided window of an index as a dense (I, J) tensor (cached)."""
    def build():
        i = torch.arange(I, device=device).view(I, 1)
        j = torch.arange(J, device=device).view(1, J)
        return (i == start + j * step).to(dtype)
    return _constant(("select", I, J, start, step, device, dtype), build)
'''

_KEEP = '''
def _keep(size, p, generator):
    """Tensor dropout: the indices of the entries kept, each independently with probability p. Drawn on the host (or
    on the generator's device): the same seed keeps the same entries whatever the arguments' device, and the call
    never waits for that device."""
    where = "cpu" if generator is None else generator.device
    return torch.nonzero(torch.rand(size, generator=generator, device=where) < p).flatten()
'''

_CHOOSE = '''
def _choose(size, count, generator):
    """Tensor dropout with a fixed budget: `count` distinct indices out of `size`, drawn uniformly without
    replacement, in increasing order; drawn where _keep draws."""
    where = "cpu" if generator is None else generator.device
    return torch.randperm(size, generator=generator, device=where)[:count].sort().values
'''

_KEEP_PROBABILITY = '''
def _keep_probability(function, name, p):
    """A keep-probability given per call: a number in (0, 1]."""
    if isinstance(p, (bool, torch.Tensor)) or not isinstance(p, (int, float)):
        raise TypeError(f"{function}(): keyword {name}= is the probability to keep each entry and must be a number, "
                         f"got {type(p).__name__}")
    if not 0 < p <= 1:
        raise ValueError(f"{function}(): keyword {name}= is the probability to keep each entry and must be in (0, 1], "
                         f"got {p}")
    return p
'''

_KEEP_COUNT = '''
def _keep_count(function, name, count, index, size):
    """A number of entries to keep given per call: a whole number from 1 to the size of the sampled index."""
    if isinstance(count, (bool, torch.Tensor)) or not hasattr(count, "__index__"):
        raise TypeError(f"{function}(): keyword {name}= is the number of entries of index {index} to keep and must be "
                         f"an int, got {type(count).__name__}")
    if not 1 <= count <= size:
        raise ValueError(f"{function}(): keyword {name}={count}, but index {index} has {size} entries: "
                         f"keep from 1 to {size} of them")
    return count
'''

_WINDOW_SUM = '''
def _window_sum(t, axis, I, O, K, stride, pad_left, dilation):
    """sum_o t[.., o*stride + k*dilation - pad_left, ..] for each k (indices outside 0..I-1 read zero): axis i of t
    goes and axis k comes last, as in a tensordot with the (I, K) matrix sum_o Pi. One strided sum per residue of
    i mod stride, minus the few entries outside each k's windows."""
    def part(start, stop):  # t[.., start:stop:stride, ..], summed over the axis
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
'''

_PAD = '''
def _pad(t, pads):
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
'''

_TAKE = '''
def _take(t, axis, index):
    """t.index_select(axis, index); on the last axis torch.gather, which copies single entries 4x faster."""
    if axis < t.dim() - 1:
        return t.index_select(axis, index)
    return torch.gather(t, axis, index.expand(*t.shape[:-1], -1))
'''

_CACHED = '''
def _cached(key, build):
    """A constant built once per key (function, position, device, dtype), then reused while the cache keeps it."""
    return _constant(key, build)
'''

_CHECK_ARGUMENTS = '''
def _check_arguments(function, arguments):
    """Each argument is a tensor of the declared rank; all share one floating dtype and one device."""
    first = None
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
'''

_NONZERO = '''
def _nonzero(function, index, size):
    """A size the result is divided by (a KFAC factor's 1/|n|, a file's / size(n)) must not be 0."""
    if size == 0:
        raise ValueError(f"{function}(): index {index} has size 0 (an empty batch?), and the result is divided by it")
    return size
'''

_CHECK_SHAPES = '''
def _check_shapes(function, arguments):
    """Each axis has the size the file gives its index (or that an earlier argument bound): the first that does not
    is named."""
    for name, value, layout, expected in arguments:
        for axis, (index, actual, size) in enumerate(zip(layout, value.shape, expected)):
            if actual != size:
                raise ValueError(f"{function}(): argument {name!r} axis {axis} ({index}) has size {actual}, "
                                 f"expected {size}")
'''

_CHECK_SIZE = '''
def _check_size(function, argument, axis, index, actual, expected):
    """An axis has the size the file gives its index (or that an earlier argument bound)."""
    if actual != expected:
        raise ValueError(f"{function}(): argument {argument!r} axis {axis} ({index}) has size {actual}, "
                         f"expected {expected}")
'''

_BIND_SIZE = '''
def _bind_size(function, argument, axis, index, actual, known):
    """The size of the one call-time index in an axis whose other indices hold `known` entries."""
    if actual % known:
        raise ValueError(f"{function}(): argument {argument!r} axis {axis} ({index}) has size {actual}, "
                         f"which is not a multiple of {known}")
    return actual // known
'''

_SIZE_KEYWORD = '''
def _size_keyword(function, name, value):
    """A size given as a keyword argument: a positive int."""
    if isinstance(value, (bool, torch.Tensor)) or not hasattr(value, "__index__"):
        raise TypeError(f"{function}(): keyword {name}= is the size of index {name} and must be an int, "
                         f"got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{function}(): keyword {name}= is the size of index {name} and must be at least 1, "
                         f"got {value}")
    return value
'''

_OUT_SIZE = '''
def _out_size(function, where, I, pattern, K, stride, pad_left, pad_right, dilation):
    """A pattern's output size O = (I + P_left + P_right - D*(K - 1) - 1) // S + 1 for its input size I."""
    extent = dilation * (K - 1) + 1
    O = (I + pad_left + pad_right - extent) // stride + 1
    if O < 1:
        raise ValueError(f"{function}(): {where} has size {I}, too small for pattern {pattern!r}: its windows span "
                         f"{extent} entries and the padding adds {pad_left + pad_right}, so no window fits "
                         f"(the size must be at least {extent - pad_left - pad_right})")
    return O
'''

_IN_SIZE = '''
def _in_size(function, where, O, pattern, K, stride, pad_left, pad_right, dilation):
    """A stride-1 pattern's input size I = O - 1 + D*(K - 1) + 1 - P_left - P_right for its output size O."""
    I = O - 1 + dilation * (K - 1) + 1 - pad_left - pad_right
    if I < 1:
        raise ValueError(f"{function}(): {where} has size {O}, but pattern {pattern!r} has at most "
                         f"{pad_left + pad_right - dilation * (K - 1)} windows over no input")
    return I
'''

_CHECK_OUT_SIZE = '''
def _check_out_size(function, where_o, O, where_i, I, pattern, K, stride, pad_left, pad_right, dilation):
    """A pattern's output size agrees with its input size: O = (I + P_left + P_right - D*(K - 1) - 1) // S + 1."""
    expected = (I + pad_left + pad_right - dilation * (K - 1) - 1) // stride + 1
    if O != expected:
        raise ValueError(f"{function}(): {where_o} has size {O}, but pattern {pattern!r} gives "
                         f"{max(expected, 0)} windows over {where_i} of size {I}")
'''

_DEVICE_KEYWORD = '''
def _device_keyword(function, device):
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
'''

_DTYPE_KEYWORD = '''
def _dtype_keyword(function, dtype):
    """The dtype= of a function without tensor arguments: a real floating dtype, torch's default where None."""
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{function}(): keyword dtype= must be a torch.dtype, got {type(dtype).__name__}")
    if not dtype.is_floating_point:
        raise ValueError(f"{function}(): keyword dtype= must be a real floating dtype (float16, bfloat16, float32 or "
                         f"float64), got {dtype}")
    return dtype
'''

_GENERATOR_KEYWORD = '''
def _generator_keyword(function, generator):
    """The generator= of a sampled function: None (torch's default CPU generator) or a torch.Generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{function}(): keyword generator= must be a torch.Generator or None, "
                        f"got {type(generator).__name__}")
    return generator
'''

HELPERS = {
    "_CONSTANTS": _CONSTANTS,
    "_conv_pattern": _CONV_PATTERN,
    "_delta": _DELTA,
    "_select": _SELECT,
    "_keep": _KEEP,
    "_choose": _CHOOSE,
    "_keep_probability": _KEEP_PROBABILITY,
    "_keep_count": _KEEP_COUNT,
    "_window_sum": _WINDOW_SUM,
    "_take": _TAKE,
    "_pad": _PAD,
    "_cached": _CACHED,
    "_check_arguments": _CHECK_ARGUMENTS,
    "_check_size": _CHECK_SIZE,
    "_check_shapes": _CHECK_SHAPES,
    "_nonzero": _NONZERO,
    "_bind_size": _BIND_SIZE,
    "_size_keyword": _SIZE_KEYWORD,
    "_out_size": _OUT_SIZE,
    "_in_size": _IN_SIZE,
    "_check_out_size": _CHECK_OUT_SIZE,
    "_device_keyword": _DEVICE_KEYWORD,
    "_dtype_keyword": _DTYPE_KEYWORD,
    "_generator_keyword": _GENERATOR_KEYWORD,
}
_NEEDS = {
    "_conv_pattern": ("_CONSTANTS",),
    "_delta": ("_CONSTANTS",),
    "_select": ("_CONSTANTS",),
    "_cached": ("_CONSTANTS",),
}


def _closure(used: set[str]) -> set[str]:
    """The used helpers and every helper they need."""
    closure, todo = set(used), list(used)
    while todo:
        for needed in _NEEDS.get(todo.pop(), ()):
            if needed not in closure:
                closure.add(needed)
                todo.append(needed)
    return closure


def helper_source(used: set[str]) -> list[str]:
    """Source blocks of the used helpers and what they need, in a fixed order."""
    closure = _closure(used)
    return [HELPERS[name].strip("\n") for name in HELPERS if name in closure]

"""Tensor-network functions compiled by tnc from conv2d_open.tnd: y, gx, gw, Ar.

Generated code: edit the .tnd file and recompile."""

import functools

import torch

__all__ = ['y', 'gx', 'gw', 'Ar']


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


def _conv_pattern(I, O, K, stride, pad_left, dilation, device, dtype):
    """Pi[i, o, k] = 1 iff i = o*stride + k*dilation - pad_left, as a dense (I, O, K) tensor (cached)."""
    def build():
        o = torch.arange(O, device=device).view(1, O, 1)
        k = torch.arange(K, device=device).view(1, 1, K)
        i = torch.arange(I, device=device).view(I, 1, 1)
        return (i == o * stride + k * dilation - pad_left).to(dtype)
    return _constant(("conv", I, O, K, stride, pad_left, dilation, device, dtype), build)


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


def _cached(key, build):
    """A constant built once per key (function, position, device, dtype), then reused while the cache keeps it."""
    return _constant(key, build)


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


def _check_shapes(function, arguments):
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


def _nonzero(function, index, size):
    """A size the result is divided by (a KFAC factor's 1/|n|, a file's / size(n)) must not be 0."""
    if size == 0:
        raise ValueError(f"{function}(): index {index} has size 0 (an empty batch?), and the result is divided by it")
    return size


def _size_keyword(function, name, value):
    """A size given as a keyword argument: a positive int."""
    if isinstance(value, (bool, torch.Tensor)) or not hasattr(value, "__index__"):
        raise TypeError(f"{function}(): keyword {name}= is the size of index {name} and must be an int, "
                         f"got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{function}(): keyword {name}= is the size of index {name} and must be at least 1, "
                         f"got {value}")
    return value


def _out_size(function, where, I, pattern, K, stride, pad_left, pad_right, dilation):
    """A pattern's output size O = (I + P_left + P_right - D*(K - 1) - 1) // S + 1 for its input size I."""
    extent = dilation * (K - 1) + 1
    O = (I + pad_left + pad_right - extent) // stride + 1
    if O < 1:
        raise ValueError(f"{function}(): {where} has size {I}, too small for pattern {pattern!r}: its windows span "
                         f"{extent} entries and the padding adds {pad_left + pad_right}, so no window fits "
                         f"(the size must be at least {extent - pad_left - pad_right})")
    return O


def _check_out_size(function, where_o, O, where_i, I, pattern, K, stride, pad_left, pad_right, dilation):
    """A pattern's output size agrees with its input size: O = (I + P_left + P_right - D*(K - 1) - 1) // S + 1."""
    expected = (I + pad_left + pad_right - dilation * (K - 1) - 1) // stride + 1
    if O != expected:
        raise ValueError(f"{function}(): {where_o} has size {O}, but pattern {pattern!r} gives "
                         f"{max(expected, 0)} windows over {where_i} of size {I}")


def y(x, w, b):
    """y[n, d, o1, o2]: compiled from conv2d_open.tnd:20.

        y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]

    Args:
        x: [n, c, i1, i2], sizes [n, c, i1, i2]
        w: [d, c, k1, k2], sizes [d, c, 3, 3]
        b: [d], sizes [d]

    Returns:
        [n, d, o1, o2], sizes [n, d, o1, o2]

    Rewrites applied:
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (i1, o1, 3)
        p2: conv(stride=2, padding=1, dilation=1), (I, O, K) = (i2, o2, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and x.dim() == 4
        and w.dim() == 4
        and x.layout == w.layout == b.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype == b.dtype
        and x.device == w.device == b.device
    ):
        _check_arguments('y', (('x', x, ('n', 'c', 'i1', 'i2')), ('w', w, ('d', 'c', 'k1', 'k2')), ('b', b, ('d',))))
    n = x.shape[0]  # index n, bound at call time
    c = x.shape[1]  # index c, bound at call time
    i1 = x.shape[2]  # index i1, bound at call time
    i2 = x.shape[3]  # index i2, bound at call time
    d = w.shape[0]  # index d, bound at call time
    o1 = _out_size('y', "argument 'x' axis 2 (i1)", i1, 'p1', 3, 2, 1, 1, 1)
    o2 = _out_size('y', "argument 'x' axis 3 (i2)", i2, 'p2', 3, 2, 1, 1, 1)
    if w.shape != (d, c, 3, 3) or b.shape != (d,):
        _check_shapes('y', (('w', w, ('d', 'c', 'k1', 'k2'), (d, c, 3, 3)), ('b', b, ('d',), (d,))))
    # term 1 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + bias
    # native conv2d
    result = torch.nn.functional.conv2d(x, w, b, stride=2, padding=1)
    return result


def gx(w, grad_y, *, i1, i2):
    """gx[n, c, i1, i2]: compiled from conv2d_open.tnd:22.

        gx = vjp(y, x)    # gx(w, grad_y, *, i1, i2): a strided layer's output size does not say which input it came from

    Args:
        w: [d, c, k1, k2], sizes [d, c, 3, 3]
        grad_y: [n, d, o1, o2], sizes [n, d, o1, o2]
        i1: keyword-only int, the size of index i1 (no argument carries it)
        i2: keyword-only int, the size of index i2 (no argument carries it)

    Returns:
        [n, c, i1, i2], sizes [n, c, i1, i2]

    Rewrites applied:
        lower: p1 * p2 * w * grad_y -> native conv_transpose2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (i1, o1, 3)
        p2: conv(stride=2, padding=1, dilation=1), (I, O, K) = (i2, o2, 3)
    """
    if not (
        isinstance(w, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and w.dim() == 4
        and grad_y.dim() == 4
        and w.layout == grad_y.layout == torch.strided
        and w.is_floating_point()
        and w.dtype == grad_y.dtype
        and w.device == grad_y.device
    ):
        _check_arguments('gx', (('w', w, ('d', 'c', 'k1', 'k2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    d = w.shape[0]  # index d, bound at call time
    c = w.shape[1]  # index c, bound at call time
    n = grad_y.shape[0]  # index n, bound at call time
    o1 = grad_y.shape[2]  # index o1, bound at call time
    o2 = grad_y.shape[3]  # index o2, bound at call time
    i1 = _size_keyword('gx', 'i1', i1)
    i2 = _size_keyword('gx', 'i2', i2)
    if w.shape != (d, c, 3, 3) or grad_y.shape != (n, d, o1, o2):
        _check_shapes(
            'gx',
            (
                ('w', w, ('d', 'c', 'k1', 'k2'), (d, c, 3, 3)),
                ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, d, o1, o2)),
            ),
        )
    _check_out_size('gx', "argument 'grad_y' axis 2 (o1)", o1, 'keyword i1=', i1, 'p1', 3, 2, 1, 1, 1)
    _check_out_size('gx', "argument 'grad_y' axis 3 (o2)", o2, 'keyword i2=', i2, 'p2', 3, 2, 1, 1, 1)
    # p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] * grad_y[n, d, o1, o2]
    # native conv_transpose2d
    result = torch.nn.functional.conv_transpose2d(
        grad_y,
        w,
        stride=2,
        padding=1,
        output_padding=(i1 - 2 * o1 + 1, i2 - 2 * o2 + 1),
    )
    return result


def gw(x, grad_y):
    """gw[d, c, k1, k2]: compiled from conv2d_open.tnd:23.

        gw = vjp(y, w)    # gw(x, grad_y): x and grad_y both carry the image size, and are checked against each other

    Args:
        x: [n, c, i1, i2], sizes [n, c, i1, i2]
        grad_y: [n, d, o1, o2], sizes [n, d, o1, o2]

    Returns:
        [d, c, k1, k2], sizes [d, c, 3, 3]

    Rewrites applied:
        lower: x * p1 * p2 * grad_y -> native conv_weight2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (i1, o1, 3)
        p2: conv(stride=2, padding=1, dilation=1), (I, O, K) = (i2, o2, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and x.dim() == 4
        and grad_y.dim() == 4
        and x.layout == grad_y.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == grad_y.dtype
        and x.device == grad_y.device
    ):
        _check_arguments('gw', (('x', x, ('n', 'c', 'i1', 'i2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    n = x.shape[0]  # index n, bound at call time
    c = x.shape[1]  # index c, bound at call time
    i1 = x.shape[2]  # index i1, bound at call time
    i2 = x.shape[3]  # index i2, bound at call time
    d = grad_y.shape[1]  # index d, bound at call time
    o1 = grad_y.shape[2]  # index o1, bound at call time
    o2 = grad_y.shape[3]  # index o2, bound at call time
    if grad_y.shape != (n, d, o1, o2):
        _check_shapes('gw', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, d, o1, o2)),))
    _check_out_size('gw', "argument 'grad_y' axis 2 (o1)", o1, "argument 'x' axis 2 (i1)", i1, 'p1', 3, 2, 1, 1, 1)
    _check_out_size('gw', "argument 'grad_y' axis 3 (o2)", o2, "argument 'x' axis 3 (i2)", i2, 'p2', 3, 2, 1, 1, 1)
    # x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * grad_y[n, d, o1, o2]
    # native conv_weight2d
    result = torch.nn.grad.conv2d_weight(x, (d, c, 3, 3), grad_y, stride=2, padding=1)
    return result


@functools.lru_cache(maxsize=None)
def _Ar_plan1(c, i1, i2, n):
    """The cheapest order for Ar term 1, chosen once per shape."""
    costs = (
        81 * n * c ** 2 + 6 * c * i1 * i2 * n + 18 * c * i1 * n,
        (
            n * c ** 2 * i1 ** 2 * i2 ** 2
            + 3 * c ** 2 * i1 ** 2 * i2 ** 2
            + 9 * i1 * c ** 2 * i2 ** 2
            + 81 * i1 * i2 * c ** 2
            + 9 * i1 * i2
        ),
    )
    return costs.index(min(costs))


def Ar(x):
    """Ar[(c k1 k2), (c' k1' k2')]: compiled from conv2d_open.tnd:24.

        Ar = kfac(y, w, batch=n, approx=reduce)

    Args:
        x: [n, c, i1, i2], sizes [n, c, i1, i2]

    Returns:
        [(c k1 k2), (c' k1' k2')], sizes [9*c, 9*c]

    Rewrites applied:
        fuse: p1(i1, o1, k1) -> one constant over (i1, k1), built once
        fuse: p2(i2, o2, k2) -> one constant over (i2, k2), built once
        fuse: p1(i1', o1', k1') -> one constant over (i1', k1'), built once
        fuse: p2(i2', o2', k2') -> one constant over (i2', k2'), built once
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.layout == torch.strided and x.is_floating_point()):
        _check_arguments('Ar', (('x', x, ('n', 'c', 'i1', 'i2')),))
    n = x.shape[0]  # index n, bound at call time
    c = x.shape[1]  # index c, bound at call time
    i1 = x.shape[2]  # index i1, bound at call time
    i2 = x.shape[3]  # index i2, bound at call time
    o1 = _out_size('Ar', "argument 'x' axis 2 (i1)", i1, 'p1', 3, 2, 1, 1, 1)
    o2 = _out_size('Ar', "argument 'x' axis 3 (i2)", i2, 'p2', 3, 2, 1, 1, 1)
    _nonzero('Ar', 'n', n)
    _nonzero('Ar', 'o1', o1)
    _nonzero('Ar', 'o2', o2)
    device = x.device
    dtype = x.dtype
    # 1/(n*o1**2*o2**2) * x[n, c, i1, i2] * x[n, c', i1', i2'] * fused(i1, k1) * fused(i2, k2) * fused(i1', k1') *
    # fused(i2', k2')
    fused = _cached(
        ('Ar.fused', i1, o1, device, dtype),
        lambda: torch.einsum('abc->ac', _conv_pattern(i1, o1, 3, 2, 1, 1, device, dtype)),
    )  # p1(i1, o1, k1), contracted once per shape
    fused_2 = _cached(
        ('Ar.fused_2', i2, o2, device, dtype),
        lambda: torch.einsum('abc->ac', _conv_pattern(i2, o2, 3, 2, 1, 1, device, dtype)),
    )  # p2(i2, o2, k2), contracted once per shape
    if _Ar_plan1(c, i1, i2, n) == 0:  # plan 1: 81*c**2*n + 6*c*i1*i2*n + 18*c*i1*n multiply-adds
        t1 = (
            _window_sum(x, 3, i2, o2, 3, 2, 1, 1).permute(3, 0, 1, 2)
            if i2 >= 56
            else torch.tensordot(fused_2, x, dims=((0,), (3,)))
        )  # [k2, n, c, i1]
        t2 = (
            _window_sum(t1, 3, i1, o1, 3, 2, 1, 1).permute(3, 0, 1, 2)
            if i1 >= 56
            else torch.tensordot(fused, t1, dims=((0,), (3,)))
        )  # [k1, k2, n, c]
        result_rows = t2.permute(3, 0, 1, 2).reshape(9 * c, n)  # laid out once
        result = (
            ((result_rows * (1 / (n * o1 ** 2 * o2 ** 2))) @ result_rows.T)
            .reshape(c, 3, 3, c, 3, 3)
        )  # [c, k1, k2, c', k1', k2']
    else:  # plan 2: c**2*i1**2*i2**2*n + 3*c**2*i1**2*i2**2 + 9*c**2*i1*i2**2 + 81*c**2*i1*i2 + 9*i1*i2 multiply-adds
        t1_2_rows = x.reshape(n, c * i1 * i2)  # laid out once
        t1_2 = (t1_2_rows.T @ t1_2_rows).reshape(c, i1, i2, c, i1, i2)  # [c, i1, i2, c', i1', i2']
        t2_2 = (
            _window_sum(t1_2, 1, i1, o1, 3, 2, 1, 1).permute(5, 0, 1, 2, 3, 4)
            if i1 >= 56
            else torch.tensordot(fused, t1_2, dims=((0,), (1,)))
        )  # [k1, c, i2, c', i1', i2']
        t3 = torch.tensordot(fused_2, fused, dims=((), ()))  # [i2, k2, i1', k1']
        t4 = (
            _window_sum(t2_2, 5, i2, o2, 3, 2, 1, 1).permute(5, 0, 1, 2, 3, 4)
            if i2 >= 56
            else torch.tensordot(fused_2, t2_2, dims=((0,), (5,)))
        )  # [k2', k1, c, i2, c', i1']
        result = torch.einsum('abcd,efgahc->gfbhde', t3, t4)  # [c, k1, k2, c', k1', k2']
        result.mul_(1 / (n * o1 ** 2 * o2 ** 2))
    result = result.reshape(9 * c, 9 * c)  # [(c k1 k2), (c' k1' k2')]
    return result

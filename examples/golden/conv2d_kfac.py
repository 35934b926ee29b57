"""Tensor-network functions compiled by tnc from conv2d_kfac.tnd: y, A, Ar, B, Br.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'A', 'Ar', 'B', 'Br']


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


def y(x, w, b):
    """y[n, d, o1, o2]: compiled from conv2d_kfac.tnd:36.

        y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]

    Args:
        x: [n, c, i1, i2], sizes [n, 2, 6, 7]
        w: [d, c, k1, k2], sizes [3, 2, 3, 2]
        b: [d], sizes [3]

    Returns:
        [n, d, o1, o2], sizes [n, 3, 3, 5]

    Rewrites applied:
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (6, 3, 3)
        p2: conv(stride=1, padding=0, dilation=2), (I, O, K) = (7, 5, 2)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and x.dim() == 4
        and x.layout == w.layout == b.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype == b.dtype
        and x.device == w.device == b.device
    ):
        _check_arguments('y', (('x', x, ('n', 'c', 'i1', 'i2')), ('w', w, ('d', 'c', 'k1', 'k2')), ('b', b, ('d',))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 6, 7) or w.shape != (3, 2, 3, 2) or b.shape != (3,):
        _check_shapes(
            'y',
            (
                ('x', x, ('n', 'c', 'i1', 'i2'), (n, 2, 6, 7)),
                ('w', w, ('d', 'c', 'k1', 'k2'), (3, 2, 3, 2)),
                ('b', b, ('d',), (3,)),
            ),
        )
    # term 1 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + bias
    # native conv2d
    result = torch.nn.functional.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    return result


def A(x):
    """A[(c k1 k2), (c' k1' k2')]: compiled from conv2d_kfac.tnd:38.

        A = kfac(y, w, batch=n)                        # [(c k1 k2), (c' k1' k2')] = [12, 12]

    Args:
        x: [n, c, i1, i2], sizes [n, 2, 6, 7]

    Returns:
        [(c k1 k2), (c' k1' k2')], sizes [12, 12]

    Rewrites applied:
        lower: p1(i1, o1, k1) -> a strided window view of the tensor on i1
        lower: p2(i2, o2, k2) -> a strided window view of the tensor on i2
        lower: p1(i1', o1, k1') -> a strided window view of the tensor on i1'
        lower: p2(i2', o2, k2') -> a strided window view of the tensor on i2'
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.layout == torch.strided and x.is_floating_point()):
        _check_arguments('A', (('x', x, ('n', 'c', 'i1', 'i2')),))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 6, 7):
        _check_shapes('A', (('x', x, ('n', 'c', 'i1', 'i2'), (n, 2, 6, 7)),))
    _nonzero('A', 'n', n)
    # 1/n * x[n, c, o1, k1, o2, k2] * x[n, c', o1, k1', o2, k2']
    x_view = (
        torch.nn.functional.pad(x, (0, 0, 1, 0))
        .unfold(2, 3, 2)
        .movedim(-1, 3)
        .unfold(4, 3, 1)[..., ::2]
        .movedim(-1, 5)
    )  # [n, c, o1, k1, o2, k2]
    result_rows = x_view.permute(1, 3, 5, 0, 2, 4).reshape(12, 15 * n)  # laid out once
    result = (result_rows @ result_rows.T).reshape(2, 3, 2, 2, 3, 2)  # [c, k1, k2, c', k1', k2']
    result.mul_(1 / n)
    result = result.reshape(12, 12)  # [(c k1 k2), (c' k1' k2')]
    return result


def Ar(x):
    """Ar[(c k1 k2), (c' k1' k2')]: compiled from conv2d_kfac.tnd:39.

        Ar = kfac(y, w, batch=n, approx=reduce)

    Args:
        x: [n, c, i1, i2], sizes [n, 2, 6, 7]

    Returns:
        [(c k1 k2), (c' k1' k2')], sizes [12, 12]

    Rewrites applied:
        fuse: p1(i1, o1, k1) -> one constant over (i1, k1), built once
        fuse: p2(i2, o2, k2) -> one constant over (i2, k2), built once
        fuse: p1(i1', o1', k1') -> one constant over (i1', k1'), built once
        fuse: p2(i2', o2', k2') -> one constant over (i2', k2'), built once
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.layout == torch.strided and x.is_floating_point()):
        _check_arguments('Ar', (('x', x, ('n', 'c', 'i1', 'i2')),))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 6, 7):
        _check_shapes('Ar', (('x', x, ('n', 'c', 'i1', 'i2'), (n, 2, 6, 7)),))
    _nonzero('Ar', 'n', n)
    device = x.device
    dtype = x.dtype
    # 1/(225*n) * x[n, c, i1, i2] * x[n, c', i1', i2'] * fused(i1, k1) * fused(i2, k2) * fused(i1', k1') *
    # fused(i2', k2')
    fused = _cached(
        ('Ar.fused', device, dtype),
        lambda: torch.einsum('abc->ac', _conv_pattern(6, 3, 3, 2, 1, 1, device, dtype)),
    )  # p1(i1, o1, k1), contracted once per shape
    fused_2 = _cached(
        ('Ar.fused_2', device, dtype),
        lambda: torch.einsum('abc->ac', _conv_pattern(7, 5, 2, 1, 0, 2, device, dtype)),
    )  # p2(i2, o2, k2), contracted once per shape
    t1 = torch.tensordot(fused_2, x, dims=((0,), (3,)))  # [k2, n, c, i1]
    t2 = torch.tensordot(fused, t1, dims=((0,), (3,)))  # [k1, k2, n, c]
    result_rows = t2.permute(3, 0, 1, 2).reshape(12, n)  # laid out once
    result = (result_rows @ result_rows.T).reshape(2, 3, 2, 2, 3, 2)  # [c, k1, k2, c', k1', k2']
    result.mul_(1 / (225 * n))
    result = result.reshape(12, 12)  # [(c k1 k2), (c' k1' k2')]
    return result


def B(grad_y):
    """B[d, d']: compiled from conv2d_kfac.tnd:40.

        B = kfac_grad(y, w, batch=n)                   # [d, d'] = [3, 3]

    Args:
        grad_y: [n, d, o1, o2], sizes [n, 3, 3, 5]

    Returns:
        [d, d'], sizes [3, 3]

    Rewrites applied:
        merge: o1 and o2 always travel together -> one leg o1.o2
    """
    if not (
        isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 4
        and grad_y.layout == torch.strided
        and grad_y.is_floating_point()
    ):
        _check_arguments('B', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2')),))
    n = grad_y.shape[0]  # index n, bound at call time
    if grad_y.shape != (n, 3, 3, 5):
        _check_shapes('B', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 3, 3, 5)),))
    _nonzero('B', 'n', n)
    # 1/n * grad_y[n, d, (o1 o2)] * grad_y[n, d', (o1 o2)]
    grad_y_view = grad_y.reshape(n, 3, 15)  # [n, d, (o1 o2)]
    result_rows = grad_y_view.permute(1, 0, 2).reshape(3, 15 * n)  # laid out once
    result = result_rows @ result_rows.T  # [d, d']
    result.mul_(1 / n)
    return result


def Br(grad_y):
    """Br[d, d']: compiled from conv2d_kfac.tnd:41.

        Br = kfac_grad(y, w, batch=n, approx=reduce)

    Args:
        grad_y: [n, d, o1, o2], sizes [n, 3, 3, 5]

    Returns:
        [d, d'], sizes [3, 3]

    Rewrites applied:
        merge: o1 and o2 always travel together -> one leg o1.o2
        merge: o1' and o2' always travel together -> one leg o1'.o2'
    """
    if not (
        isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 4
        and grad_y.layout == torch.strided
        and grad_y.is_floating_point()
    ):
        _check_arguments('Br', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2')),))
    n = grad_y.shape[0]  # index n, bound at call time
    if grad_y.shape != (n, 3, 3, 5):
        _check_shapes('Br', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 3, 3, 5)),))
    _nonzero('Br', 'n', n)
    # 1/n * grad_y[n, d, (o1 o2)] * grad_y[n, d', (o1' o2')]
    t1 = grad_y.sum((2, 3))  # [n, d]
    result = t1.T @ t1  # [d, d']
    result.mul_(1 / n)
    return result

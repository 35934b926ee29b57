"""Tensor-network functions compiled by tnc from conv2d_curvature.tnd: y, J, diag, gn, G.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'J', 'diag', 'gn', 'G']


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


def _delta(size, legs, device, dtype):
    """The copy tensor: 1 where all of its `legs` indices (each of `size` entries) are equal (cached)."""
    def build():
        delta = torch.zeros((size,) * legs, device=device, dtype=dtype)
        diagonal = torch.arange(size, device=device)
        delta[(diagonal,) * legs] = 1
        return delta
    return _constant(("delta", size, legs, device, dtype), build)


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


def y(x, w):
    """y[n, d, o1, o2]: compiled from conv2d_curvature.tnd:38.

        y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]

    Args:
        x: [n, c, i1, i2], sizes [n, 2, 8, 6]
        w: [d, c, k1, k2], sizes [3, 2, 3, 3]

    Returns:
        [n, d, o1, o2], sizes [n, 3, 4, 6]

    Rewrites applied:
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (6, 6, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and x.dim() == 4
        and x.layout == w.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype
        and x.device == w.device
    ):
        _check_arguments('y', (('x', x, ('n', 'c', 'i1', 'i2')), ('w', w, ('d', 'c', 'k1', 'k2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 8, 6) or w.shape != (3, 2, 3, 3):
        _check_shapes(
            'y',
            (('x', x, ('n', 'c', 'i1', 'i2'), (n, 2, 8, 6)), ('w', w, ('d', 'c', 'k1', 'k2'), (3, 2, 3, 3))),
        )
    # x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
    # native conv2d
    result = torch.nn.functional.conv2d(x, w, stride=(2, 1), padding=1)
    return result


def J(x):
    """J[n, d, o1, o2, d', c, k1, k2]: compiled from conv2d_curvature.tnd:40.

        J = jacobian(y, w)               # J(x): [n, d, o1, o2, d', c, k1, k2]

    Args:
        x: [n, c, i1, i2], sizes [n, 2, 8, 6]

    Returns:
        [n, d, o1, o2, d', c, k1, k2], sizes [n, 3, 4, 6, 3, 2, 3, 3]

    Rewrites applied:
        lower: p1(i1, o1, k1) -> a strided window view of the tensor on i1
        lower: p2(i2, o2, k2) -> a strided window view of the tensor on i2
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.layout == torch.strided and x.is_floating_point()):
        _check_arguments('J', (('x', x, ('n', 'c', 'i1', 'i2')),))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 8, 6):
        _check_shapes('J', (('x', x, ('n', 'c', 'i1', 'i2'), (n, 2, 8, 6)),))
    device = x.device
    dtype = x.dtype
    # x[n, c, o1, k1, o2, k2] * delta(d, d')
    x_view = (
        torch.nn.functional.pad(x, (1, 1, 1, 0))
        .unfold(2, 3, 2)
        .movedim(-1, 3)
        .unfold(4, 3, 1)
        .movedim(-1, 5)
    )  # [n, c, o1, k1, o2, k2]
    delta = _delta(3, 2, device, dtype)  # copy tensor
    result = torch.einsum('abcdef,gh->agcehbdf', x_view, delta)  # [n, d, o1, o2, d', c, k1, k2]
    return result


def diag(x):
    """diag[e, c, k1, k2]: compiled from conv2d_curvature.tnd:43.

        diag[e, c, k1, k2] = J[n, d, o1, o2, e, c, k1, k2] * J[n, d, o1, o2, e, c, k1, k2]

    Args:
        x: [n, c, i1, i2], sizes [n, 2, 8, 6]

    Returns:
        [e, c, k1, k2], sizes [3, 2, 3, 3]

    Rewrites applied:
        copy-tensor: delta(d, e) pruned
        copy-tensor: delta(e, e) pruned
        lower: p1(i1~0, o1, k1) -> a strided window view of the tensor on i1~0
        lower: p2(i2~1, o2, k2) -> a strided window view of the tensor on i2~1
        lower: p1(i1~2, o1, k1) -> a strided window view of the tensor on i1~2
        lower: p2(i2~3, o2, k2) -> a strided window view of the tensor on i2~3
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 4 and x.layout == torch.strided and x.is_floating_point()):
        _check_arguments('diag', (('x', x, ('n', 'c', 'i1', 'i2')),))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 8, 6):
        _check_shapes('diag', (('x', x, ('n', 'c', 'i1', 'i2'), (n, 2, 8, 6)),))
    # x[n, c, o1, k1, o2, k2] * x[n, c, o1, k1, o2, k2]
    x_view = (
        torch.nn.functional.pad(x, (1, 1, 1, 0))
        .unfold(2, 3, 2)
        .movedim(-1, 3)
        .unfold(4, 3, 1)
        .movedim(-1, 5)
    )  # [n, c, o1, k1, o2, k2]
    result = x_view.square().sum(0).sum(1).sum(2)  # [c, k1, k2]
    result = result.reshape(1, 2, 3, 3)
    result = result.expand(3, 2, 3, 3)
    return result


def gn(x, grad_y):
    """gn[n, e, c, k1, k2]: compiled from conv2d_curvature.tnd:46.

        gn[n, e, c, k1, k2] = grad_y[n, d, o1, o2] * J[n, d, o1, o2, e, c, k1, k2]

    Args:
        x: [n, c, i1, i2], sizes [n, 2, 8, 6]
        grad_y: [n, d, o1, o2], sizes [n, 3, 4, 6]

    Returns:
        [n, e, c, k1, k2], sizes [n, 3, 2, 3, 3]

    Rewrites applied:
        copy-tensor: delta(d, e) pruned
        lower: grad_y * x * p1 * p2 -> native conv_weight2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (6, 6, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and x.dim() == 4
        and x.layout == grad_y.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == grad_y.dtype
        and x.device == grad_y.device
    ):
        _check_arguments('gn', (('x', x, ('n', 'c', 'i1', 'i2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 8, 6) or grad_y.shape != (n, 3, 4, 6):
        _check_shapes(
            'gn',
            (('x', x, ('n', 'c', 'i1', 'i2'), (n, 2, 8, 6)), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 3, 4, 6))),
        )
    # grad_y[n, e, o1, o2] * x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)
    # native conv_weight2d
    result_in = x.reshape(1, 2 * n, 8, 6)
    result_grad = grad_y.reshape(1, 3 * n, 4, 6)
    result = torch.nn.grad.conv2d_weight(result_in, (3 * n, 2, 3, 3), result_grad, stride=(2, 1), padding=1, groups=n)
    result = result.reshape(n, 3, 2, 3, 3)  # [n, e, c, k1, k2]
    return result


def G(x, grad_y):
    """G[n, m]: compiled from conv2d_curvature.tnd:47.

        G[n, m] = gn[n, e, c, k1, k2] * gn[m, e, c, k1, k2]

    Args:
        x: [n, c, i1, i2], sizes [n, 2, 8, 6]
        grad_y: [n, d, o1, o2], sizes [n, 3, 4, 6]

    Returns:
        [n, m], sizes [n, n]

    Rewrites applied:
        share: grad_y * x * p1 * p2 * delta computed once as shared1[n, c, k1, k2, e], read twice
        copy-tensor: delta(d~6, e) pruned
        lower: grad_y * x * p1 * p2 -> native conv_weight2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (6, 6, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and x.dim() == 4
        and x.layout == grad_y.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == grad_y.dtype
        and x.device == grad_y.device
    ):
        _check_arguments('G', (('x', x, ('n', 'c', 'i1', 'i2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 8, 6) or grad_y.shape != (n, 3, 4, 6):
        _check_shapes(
            'G',
            (('x', x, ('n', 'c', 'i1', 'i2'), (n, 2, 8, 6)), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 3, 4, 6))),
        )
    # shared1[n, c, k1, k2, e] = grad_y[n, e, o1, o2] * x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2), computed once
    # native conv_weight2d
    shared1_in = x.reshape(1, 2 * n, 8, 6)
    shared1_grad = grad_y.reshape(1, 3 * n, 4, 6)
    shared1 = torch.nn.grad.conv2d_weight(
        shared1_in,
        (3 * n, 2, 3, 3),
        shared1_grad,
        stride=(2, 1),
        padding=1,
        groups=n,
    )
    shared1 = shared1.reshape(n, 3, 2, 3, 3)  # [n, e, c, k1, k2]
    # shared1[n, c, k1, k2, e] * shared1[m, c, k1, k2, e]
    result_rows = shared1.reshape(n, 54)  # laid out once
    result = result_rows @ result_rows.T  # [n, m]
    return result

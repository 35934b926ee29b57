"""Tensor-network functions compiled by tnc from conv2d_vjp.tnd: y, gx, gw, gb.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'gx', 'gw', 'gb']


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


def y(x, w, b):
    """y[n, d, o1, o2]: compiled from conv2d_vjp.tnd:33.

        y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]

    Args:
        x: [n, c, i1, i2], sizes [n, 3, 8, 6]
        w: [d, c, k1, k2], sizes [4, 3, 3, 3]
        b: [d], sizes [4]

    Returns:
        [n, d, o1, o2], sizes [n, 4, 4, 3]

    Rewrites applied:
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=2, padding=1, dilation=1), (I, O, K) = (6, 3, 3)
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
    if x.shape != (n, 3, 8, 6) or w.shape != (4, 3, 3, 3) or b.shape != (4,):
        _check_shapes(
            'y',
            (
                ('x', x, ('n', 'c', 'i1', 'i2'), (n, 3, 8, 6)),
                ('w', w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 3)),
                ('b', b, ('d',), (4,)),
            ),
        )
    # term 1 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + bias
    # native conv2d
    result = torch.nn.functional.conv2d(x, w, b, stride=2, padding=1)
    return result


def gx(w, grad_y):
    """gx[n, c, i1, i2]: compiled from conv2d_vjp.tnd:38.

        gx = vjp(y, x)                   # laid out like x: [n, c, i1, i2]

    Args:
        w: [d, c, k1, k2], sizes [4, 3, 3, 3]
        grad_y: [n, d, o1, o2], sizes [n, 4, 4, 3]

    Returns:
        [n, c, i1, i2], sizes [n, 3, 8, 6]

    Rewrites applied:
        lower: p1 * p2 * w * grad_y -> native conv_transpose2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=2, padding=1, dilation=1), (I, O, K) = (6, 3, 3)
    """
    if not (
        isinstance(w, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 4
        and w.layout == grad_y.layout == torch.strided
        and w.is_floating_point()
        and w.dtype == grad_y.dtype
        and w.device == grad_y.device
    ):
        _check_arguments('gx', (('w', w, ('d', 'c', 'k1', 'k2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    n = grad_y.shape[0]  # index n, bound at call time
    if w.shape != (4, 3, 3, 3) or grad_y.shape != (n, 4, 4, 3):
        _check_shapes(
            'gx',
            (('w', w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 3)), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 4, 4, 3))),
        )
    # p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] * grad_y[n, d, o1, o2]
    # native conv_transpose2d
    result = torch.nn.functional.conv_transpose2d(grad_y, w, stride=2, padding=1, output_padding=1)
    return result


def gw(x, grad_y):
    """gw[d, c, k1, k2]: compiled from conv2d_vjp.tnd:39.

        gw = vjp(y, w)                   # laid out like w: [d, c, k1, k2]

    Args:
        x: [n, c, i1, i2], sizes [n, 3, 8, 6]
        grad_y: [n, d, o1, o2], sizes [n, 4, 4, 3]

    Returns:
        [d, c, k1, k2], sizes [4, 3, 3, 3]

    Rewrites applied:
        lower: x * p1 * p2 * grad_y -> native conv_weight2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=2, padding=1, dilation=1), (I, O, K) = (6, 3, 3)
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
        _check_arguments('gw', (('x', x, ('n', 'c', 'i1', 'i2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 3, 8, 6) or grad_y.shape != (n, 4, 4, 3):
        _check_shapes(
            'gw',
            (('x', x, ('n', 'c', 'i1', 'i2'), (n, 3, 8, 6)), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 4, 4, 3))),
        )
    # x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * grad_y[n, d, o1, o2]
    # native conv_weight2d
    result = torch.nn.grad.conv2d_weight(x, (4, 3, 3, 3), grad_y, stride=2, padding=1)
    return result


def gb(grad_y):
    """gb[d]: compiled from conv2d_vjp.tnd:40.

        gb = vjp(y, b)                   # laid out like b: [d]; the bias term is summed over n, o1, o2

    Args:
        grad_y: [n, d, o1, o2], sizes [n, 4, 4, 3]

    Returns:
        [d], sizes [4]

    Rewrites applied:
        merge: o1 and o2 always travel together -> one leg o1.o2
    """
    if not (
        isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 4
        and grad_y.layout == torch.strided
        and grad_y.is_floating_point()
    ):
        _check_arguments('gb', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2')),))
    n = grad_y.shape[0]  # index n, bound at call time
    if grad_y.shape != (n, 4, 4, 3):
        _check_shapes('gb', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 4, 4, 3)),))
    # grad_y[n, d, (o1 o2)]
    result = grad_y.sum((0, 2, 3))  # [d]
    return result

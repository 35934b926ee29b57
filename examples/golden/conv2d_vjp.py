"""Tensor-network functions compiled by tnc from conv2d_vjp.tnd: y, gx, gw, gb.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'gx', 'gw', 'gb']


def _check_arguments(function, arguments):
    """Each argument is a tensor of the declared rank; all share one floating dtype and one device."""
    first = None
    for name, value, layout in arguments:
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{function}(): argument {name!r} must be a torch.Tensor, got {type(value).__name__}")
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


def _check_size(function, argument, axis, index, actual, expected):
    """An axis has the size the file gives its index (or that an earlier argument bound)."""
    if actual != expected:
        raise ValueError(f"{function}(): argument {argument!r} axis {axis} ({index}) has size {actual}, "
                         f"expected {expected}")


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
    _check_arguments('y', (
        ('x', x, ('n', 'c', 'i1', 'i2')),
        ('w', w, ('d', 'c', 'k1', 'k2')),
        ('b', b, ('d',)),
    ))
    n = x.shape[0]  # index n, bound at call time
    _check_size('y', 'x', 1, 'c', x.shape[1], 3)
    _check_size('y', 'x', 2, 'i1', x.shape[2], 8)
    _check_size('y', 'x', 3, 'i2', x.shape[3], 6)
    _check_size('y', 'w', 0, 'd', w.shape[0], 4)
    _check_size('y', 'w', 1, 'c', w.shape[1], 3)
    _check_size('y', 'w', 2, 'k1', w.shape[2], 3)
    _check_size('y', 'w', 3, 'k2', w.shape[3], 3)
    _check_size('y', 'b', 0, 'd', b.shape[0], 4)
    device, dtype = x.device, x.dtype
    # term 1 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
    # native conv2d
    term1_in = x
    term1_w = w
    term1 = torch.nn.functional.conv2d(term1_in, term1_w, None, (2, 2), (1, 1), (1, 1), 1)
    # term 2 of 2: b[d]
    term2 = b
    term2 = term2.reshape(1, 4, 1, 1)  # broadcast over the missing legs
    result = term1 + term2
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
    _check_arguments('gx', (
        ('w', w, ('d', 'c', 'k1', 'k2')),
        ('grad_y', grad_y, ('n', 'd', 'o1', 'o2')),
    ))
    n = grad_y.shape[0]  # index n, bound at call time
    _check_size('gx', 'w', 0, 'd', w.shape[0], 4)
    _check_size('gx', 'w', 1, 'c', w.shape[1], 3)
    _check_size('gx', 'w', 2, 'k1', w.shape[2], 3)
    _check_size('gx', 'w', 3, 'k2', w.shape[3], 3)
    _check_size('gx', 'grad_y', 1, 'd', grad_y.shape[1], 4)
    _check_size('gx', 'grad_y', 2, 'o1', grad_y.shape[2], 4)
    _check_size('gx', 'grad_y', 3, 'o2', grad_y.shape[3], 3)
    device, dtype = w.device, w.dtype
    # p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] * grad_y[n, d, o1, o2]
    # native conv_transpose2d
    result_in = grad_y
    result_w = w
    result = torch.nn.functional.conv_transpose2d(result_in, result_w, None, (2, 2), (1, 1), (1, 1), 1, (1, 1))
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
    _check_arguments('gw', (
        ('x', x, ('n', 'c', 'i1', 'i2')),
        ('grad_y', grad_y, ('n', 'd', 'o1', 'o2')),
    ))
    n = x.shape[0]  # index n, bound at call time
    _check_size('gw', 'x', 1, 'c', x.shape[1], 3)
    _check_size('gw', 'x', 2, 'i1', x.shape[2], 8)
    _check_size('gw', 'x', 3, 'i2', x.shape[3], 6)
    _check_size('gw', 'grad_y', 0, 'n', grad_y.shape[0], n)
    _check_size('gw', 'grad_y', 1, 'd', grad_y.shape[1], 4)
    _check_size('gw', 'grad_y', 2, 'o1', grad_y.shape[2], 4)
    _check_size('gw', 'grad_y', 3, 'o2', grad_y.shape[3], 3)
    device, dtype = x.device, x.dtype
    # x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * grad_y[n, d, o1, o2]
    # native conv_weight2d
    result_in = x
    result_grad = grad_y
    result = torch.nn.grad.conv2d_weight(result_in, (4, 3, 3, 3), result_grad, (2, 2), (1, 1), (1, 1), 1)
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
    _check_arguments('gb', (
        ('grad_y', grad_y, ('n', 'd', 'o1', 'o2')),
    ))
    n = grad_y.shape[0]  # index n, bound at call time
    _check_size('gb', 'grad_y', 1, 'd', grad_y.shape[1], 4)
    _check_size('gb', 'grad_y', 2, 'o1', grad_y.shape[2], 4)
    _check_size('gb', 'grad_y', 3, 'o2', grad_y.shape[3], 3)
    device, dtype = grad_y.device, grad_y.dtype
    # grad_y[n, d, o1.o2]
    grad_y_view = grad_y.reshape(n, 4, 12)  # [n, d, o1.o2]
    result = torch.einsum("abc->b", grad_y_view)  # [d]
    return result

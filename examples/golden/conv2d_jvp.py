"""Tensor-network functions compiled by tnc from conv2d_jvp.tnd: y, tx, tw, t.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'tx', 'tw', 't']


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
    """y[n, d, o1, o2]: compiled from conv2d_jvp.tnd:31.

        y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]

    Args:
        x: [n, c, i1, i2], sizes [n, 3, 8, 7]
        w: [d, c, k1, k2], sizes [4, 3, 3, 2]
        b: [d], sizes [4]

    Returns:
        [n, d, o1, o2], sizes [n, 4, 4, 5]

    Rewrites applied:
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=1, padding=0, dilation=2), (I, O, K) = (7, 5, 2)
    """
    _check_arguments('y', (
        ('x', x, ('n', 'c', 'i1', 'i2')),
        ('w', w, ('d', 'c', 'k1', 'k2')),
        ('b', b, ('d',)),
    ))
    n = x.shape[0]  # index n, bound at call time
    _check_size('y', 'x', 1, 'c', x.shape[1], 3)
    _check_size('y', 'x', 2, 'i1', x.shape[2], 8)
    _check_size('y', 'x', 3, 'i2', x.shape[3], 7)
    _check_size('y', 'w', 0, 'd', w.shape[0], 4)
    _check_size('y', 'w', 1, 'c', w.shape[1], 3)
    _check_size('y', 'w', 2, 'k1', w.shape[2], 3)
    _check_size('y', 'w', 3, 'k2', w.shape[3], 2)
    _check_size('y', 'b', 0, 'd', b.shape[0], 4)
    device, dtype = x.device, x.dtype
    # term 1 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
    # native conv2d
    term1_in = x
    term1_w = w
    term1 = torch.nn.functional.conv2d(term1_in, term1_w, None, (2, 1), (1, 0), (1, 2), 1)
    # term 2 of 2: b[d]
    term2 = b
    term2 = term2.reshape(1, 4, 1, 1)  # broadcast over the missing legs
    result = term1 + term2
    return result


def tx(w, tangent_x):
    """tx[n, d, o1, o2]: compiled from conv2d_jvp.tnd:34.

        tx = jvp(y, x)                   # tx(w, tangent_x): laid out like y, [n, d, o1, o2]

    Args:
        w: [d, c, k1, k2], sizes [4, 3, 3, 2]
        tangent_x: [n, c, i1, i2], sizes [n, 3, 8, 7]

    Returns:
        [n, d, o1, o2], sizes [n, 4, 4, 5]

    Rewrites applied:
        lower: tangent_x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=1, padding=0, dilation=2), (I, O, K) = (7, 5, 2)
    """
    _check_arguments('tx', (
        ('w', w, ('d', 'c', 'k1', 'k2')),
        ('tangent_x', tangent_x, ('n', 'c', 'i1', 'i2')),
    ))
    n = tangent_x.shape[0]  # index n, bound at call time
    _check_size('tx', 'w', 0, 'd', w.shape[0], 4)
    _check_size('tx', 'w', 1, 'c', w.shape[1], 3)
    _check_size('tx', 'w', 2, 'k1', w.shape[2], 3)
    _check_size('tx', 'w', 3, 'k2', w.shape[3], 2)
    _check_size('tx', 'tangent_x', 1, 'c', tangent_x.shape[1], 3)
    _check_size('tx', 'tangent_x', 2, 'i1', tangent_x.shape[2], 8)
    _check_size('tx', 'tangent_x', 3, 'i2', tangent_x.shape[3], 7)
    device, dtype = w.device, w.dtype
    # tangent_x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
    # native conv2d
    result_in = tangent_x
    result_w = w
    result = torch.nn.functional.conv2d(result_in, result_w, None, (2, 1), (1, 0), (1, 2), 1)
    return result


def tw(x, tangent_w):
    """tw[n, d, o1, o2]: compiled from conv2d_jvp.tnd:35.

        tw = jvp(y, w)                   # tw(x, tangent_w): laid out like y

    Args:
        x: [n, c, i1, i2], sizes [n, 3, 8, 7]
        tangent_w: [d, c, k1, k2], sizes [4, 3, 3, 2]

    Returns:
        [n, d, o1, o2], sizes [n, 4, 4, 5]

    Rewrites applied:
        lower: x * p1 * p2 * tangent_w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=1, padding=0, dilation=2), (I, O, K) = (7, 5, 2)
    """
    _check_arguments('tw', (
        ('x', x, ('n', 'c', 'i1', 'i2')),
        ('tangent_w', tangent_w, ('d', 'c', 'k1', 'k2')),
    ))
    n = x.shape[0]  # index n, bound at call time
    _check_size('tw', 'x', 1, 'c', x.shape[1], 3)
    _check_size('tw', 'x', 2, 'i1', x.shape[2], 8)
    _check_size('tw', 'x', 3, 'i2', x.shape[3], 7)
    _check_size('tw', 'tangent_w', 0, 'd', tangent_w.shape[0], 4)
    _check_size('tw', 'tangent_w', 1, 'c', tangent_w.shape[1], 3)
    _check_size('tw', 'tangent_w', 2, 'k1', tangent_w.shape[2], 3)
    _check_size('tw', 'tangent_w', 3, 'k2', tangent_w.shape[3], 2)
    device, dtype = x.device, x.dtype
    # x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * tangent_w[d, c, k1, k2]
    # native conv2d
    result_in = x
    result_w = tangent_w
    result = torch.nn.functional.conv2d(result_in, result_w, None, (2, 1), (1, 0), (1, 2), 1)
    return result


def t(x, w, tangent_x, tangent_w):
    """t[n, d, o1, o2]: compiled from conv2d_jvp.tnd:38.

        t[n, d, o1, o2] = tx[n, d, o1, o2] + tw[n, d, o1, o2]

    Args:
        x: [n, c, i1, i2], sizes [n, 3, 8, 7]
        w: [d, c, k1, k2], sizes [4, 3, 3, 2]
        tangent_x: [n, c, i1, i2], sizes [n, 3, 8, 7]
        tangent_w: [d, c, k1, k2], sizes [4, 3, 3, 2]

    Returns:
        [n, d, o1, o2], sizes [n, 4, 4, 5]

    Rewrites applied:
        lower: tangent_x * p1 * p2 * w -> native conv2d
        lower: x * p1 * p2 * tangent_w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p2: conv(stride=1, padding=0, dilation=2), (I, O, K) = (7, 5, 2)
    """
    _check_arguments('t', (
        ('x', x, ('n', 'c', 'i1', 'i2')),
        ('w', w, ('d', 'c', 'k1', 'k2')),
        ('tangent_x', tangent_x, ('n', 'c', 'i1', 'i2')),
        ('tangent_w', tangent_w, ('d', 'c', 'k1', 'k2')),
    ))
    n = x.shape[0]  # index n, bound at call time
    _check_size('t', 'x', 1, 'c', x.shape[1], 3)
    _check_size('t', 'x', 2, 'i1', x.shape[2], 8)
    _check_size('t', 'x', 3, 'i2', x.shape[3], 7)
    _check_size('t', 'w', 0, 'd', w.shape[0], 4)
    _check_size('t', 'w', 1, 'c', w.shape[1], 3)
    _check_size('t', 'w', 2, 'k1', w.shape[2], 3)
    _check_size('t', 'w', 3, 'k2', w.shape[3], 2)
    _check_size('t', 'tangent_x', 0, 'n', tangent_x.shape[0], n)
    _check_size('t', 'tangent_x', 1, 'c', tangent_x.shape[1], 3)
    _check_size('t', 'tangent_x', 2, 'i1', tangent_x.shape[2], 8)
    _check_size('t', 'tangent_x', 3, 'i2', tangent_x.shape[3], 7)
    _check_size('t', 'tangent_w', 0, 'd', tangent_w.shape[0], 4)
    _check_size('t', 'tangent_w', 1, 'c', tangent_w.shape[1], 3)
    _check_size('t', 'tangent_w', 2, 'k1', tangent_w.shape[2], 3)
    _check_size('t', 'tangent_w', 3, 'k2', tangent_w.shape[3], 2)
    device, dtype = x.device, x.dtype
    # term 1 of 2: tangent_x[n, c~0, i1~1, i2~2] * p1(i1~1, o1, k1~3) * p2(i2~2, o2, k2~4) * w[d, c~0, k1~3, k2~4]
    # native conv2d
    term1_in = tangent_x
    term1_w = w
    term1 = torch.nn.functional.conv2d(term1_in, term1_w, None, (2, 1), (1, 0), (1, 2), 1)
    # term 2 of 2: x[n, c~5, i1~6, i2~7] * p1(i1~6, o1, k1~8) * p2(i2~7, o2, k2~9) * tangent_w[d, c~5, k1~8, k2~9]
    # native conv2d
    term2_in = x
    term2_w = tangent_w
    term2 = torch.nn.functional.conv2d(term2_in, term2_w, None, (2, 1), (1, 0), (1, 2), 1)
    result = term1 + term2
    return result

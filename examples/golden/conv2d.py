"""Tensor-network functions compiled by tnc from conv2d.tnd: y.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y']


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
    """y[n, (g d), o1, o2]: compiled from conv2d.tnd:30.

        y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2]
                            + b[(g d)]

    Args:
        x: [n, (g c), i1, i2], sizes [n, 8, 16, 16]
        w: [(g d), c, k1, k2], sizes [16, 4, 3, 3]
        b: [(g d)], sizes [16]

    Returns:
        [n, (g d), o1, o2], sizes [n, 16, 8, 8]

    Rewrites applied:
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (16, 8, 3)
        p2: conv(stride=2, padding=1, dilation=1), (I, O, K) = (16, 8, 3)
    """
    _check_arguments('y', (
        ('x', x, ('n', '(g c)', 'i1', 'i2')),
        ('w', w, ('(g d)', 'c', 'k1', 'k2')),
        ('b', b, ('(g d)',)),
    ))
    n = x.shape[0]  # index n, bound at call time
    _check_size('y', 'x', 1, '(g c)', x.shape[1], 8)
    _check_size('y', 'x', 2, 'i1', x.shape[2], 16)
    _check_size('y', 'x', 3, 'i2', x.shape[3], 16)
    _check_size('y', 'w', 0, '(g d)', w.shape[0], 16)
    _check_size('y', 'w', 1, 'c', w.shape[1], 4)
    _check_size('y', 'w', 2, 'k1', w.shape[2], 3)
    _check_size('y', 'w', 3, 'k2', w.shape[3], 3)
    _check_size('y', 'b', 0, '(g d)', b.shape[0], 16)
    device, dtype = x.device, x.dtype
    # term 1 of 2: x[n, g, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[g, d, c, k1, k2]
    x_legs = x.reshape(n, 2, 4, 16, 16)
    w_legs = w.reshape(2, 8, 4, 3, 3)
    # native conv2d
    term1_in = x_legs.reshape(n, 8, 16, 16)
    term1_w = w_legs.reshape(16, 4, 3, 3)
    term1 = torch.nn.functional.conv2d(term1_in, term1_w, None, (2, 2), (1, 1), (1, 1), 2)
    term1 = term1.reshape(n, 2, 8, 8, 8)
    # term 2 of 2: b[g, d]
    b_legs = b.reshape(2, 8)
    term2 = b_legs
    term2 = term2.reshape(1, 2, 8, 1, 1)  # broadcast over the missing legs
    result = term1 + term2
    result = result.reshape(n, 16, 8, 8)  # [n, (g d), o1, o2]
    return result

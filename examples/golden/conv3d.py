"""Tensor-network functions compiled by tnc from conv3d.tnd: y.

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
    """y[n, d, o1, o2, o3]: compiled from conv3d.tnd:24.

        y[n, d, o1, o2, o3] = x[n, c, i1, i2, i3] * p1(i1, o1, k1) * p2(i2, o2, k2) * p3(i3, o3, k3) *
                              w[d, c, k1, k2, k3] + b[d]

    Args:
        x: [n, c, i1, i2, i3], sizes [n, 3, 6, 8, 8]
        w: [d, c, k1, k2, k3], sizes [4, 3, 3, 3, 2]
        b: [d], sizes [4]

    Returns:
        [n, d, o1, o2, o3], sizes [n, 4, 6, 4, 4]

    Rewrites applied:
        dense: p3(i3, o3, k3) -> i3 split into (o3, k3)
        lower: x * p1 * p2 * p3 * w -> native conv3d (the kernel beats the rewritten network)

    Index patterns:
        p1: conv(stride=1, padding=1, dilation=1), (I, O, K) = (6, 6, 3)
        p2: conv(stride=2, padding=1, dilation=1), (I, O, K) = (8, 4, 3)
        p3: conv(stride=2, padding=0, dilation=1), (I, O, K) = (8, 4, 2)
    """
    _check_arguments('y', (
        ('x', x, ('n', 'c', 'i1', 'i2', 'i3')),
        ('w', w, ('d', 'c', 'k1', 'k2', 'k3')),
        ('b', b, ('d',)),
    ))
    n = x.shape[0]  # index n, bound at call time
    _check_size('y', 'x', 1, 'c', x.shape[1], 3)
    _check_size('y', 'x', 2, 'i1', x.shape[2], 6)
    _check_size('y', 'x', 3, 'i2', x.shape[3], 8)
    _check_size('y', 'x', 4, 'i3', x.shape[4], 8)
    _check_size('y', 'w', 0, 'd', w.shape[0], 4)
    _check_size('y', 'w', 1, 'c', w.shape[1], 3)
    _check_size('y', 'w', 2, 'k1', w.shape[2], 3)
    _check_size('y', 'w', 3, 'k2', w.shape[3], 3)
    _check_size('y', 'w', 4, 'k3', w.shape[4], 2)
    _check_size('y', 'b', 0, 'd', b.shape[0], 4)
    device, dtype = x.device, x.dtype
    # term 1 of 2: x[n, c, i1, i2, i3] * p1(i1, o1, k1) * p2(i2, o2, k2) * p3(i3, o3, k3) * w[d, c, k1, k2, k3]
    # native conv3d
    term1_in = x
    term1_w = w
    term1 = torch.nn.functional.conv3d(term1_in, term1_w, None, (1, 2, 2), (1, 1, 0), (1, 1, 1), 1)
    # term 2 of 2: b[d]
    term2 = b
    term2 = term2.reshape(1, 4, 1, 1, 1)  # broadcast over the missing legs
    result = term1 + term2
    return result

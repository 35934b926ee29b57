"""Tensor-network functions compiled by tnc from matmul.tnd: c, bc.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['c', 'bc']


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


def c(a, b):
    """c[r, t]: compiled from matmul.tnd:13.

        c[r, t] = a[r, s] * b[s, t]

    Args:
        a: [r, s], sizes [8, 12]
        b: [s, t], sizes [12, 10]

    Returns:
        [r, t], sizes [8, 10]
    """
    _check_arguments('c', (
        ('a', a, ('r', 's')),
        ('b', b, ('s', 't')),
    ))
    _check_size('c', 'a', 0, 'r', a.shape[0], 8)
    _check_size('c', 'a', 1, 's', a.shape[1], 12)
    _check_size('c', 'b', 0, 's', b.shape[0], 12)
    _check_size('c', 'b', 1, 't', b.shape[1], 10)
    device, dtype = a.device, a.dtype
    # a[r, s] * b[s, t]
    result = torch.tensordot(a, b, dims=([1], [0]))  # [r, t]
    return result


def bc(u, v):
    """bc[batch, r, t]: compiled from matmul.tnd:17.

        bc[batch, r, t] = u[batch, r, s] * v[batch, s, t]

    Args:
        u: [batch, r, s], sizes [batch, 8, 12]
        v: [batch, s, t], sizes [batch, 12, 10]

    Returns:
        [batch, r, t], sizes [batch, 8, 10]
    """
    _check_arguments('bc', (
        ('u', u, ('batch', 'r', 's')),
        ('v', v, ('batch', 's', 't')),
    ))
    batch = u.shape[0]  # index batch, bound at call time
    _check_size('bc', 'u', 1, 'r', u.shape[1], 8)
    _check_size('bc', 'u', 2, 's', u.shape[2], 12)
    _check_size('bc', 'v', 0, 'batch', v.shape[0], batch)
    _check_size('bc', 'v', 1, 's', v.shape[1], 12)
    _check_size('bc', 'v', 2, 't', v.shape[2], 10)
    device, dtype = u.device, u.dtype
    # u[batch, r, s] * v[batch, s, t]
    result = torch.einsum("abc,acd->abd", u, v)  # [batch, r, t]
    return result

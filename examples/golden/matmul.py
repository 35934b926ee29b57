"""Tensor-network functions compiled by tnc from matmul.tnd: c, bc.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['c', 'bc']


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


def c(a, b):
    """c[r, t]: compiled from matmul.tnd:13.

        c[r, t] = a[r, s] * b[s, t]

    Args:
        a: [r, s], sizes [8, 12]
        b: [s, t], sizes [12, 10]

    Returns:
        [r, t], sizes [8, 10]
    """
    if not (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.layout == b.layout == torch.strided
        and a.is_floating_point()
        and a.dtype == b.dtype
        and a.device == b.device
    ):
        _check_arguments('c', (('a', a, ('r', 's')), ('b', b, ('s', 't'))))
    if a.shape != (8, 12) or b.shape != (12, 10):
        _check_shapes('c', (('a', a, ('r', 's'), (8, 12)), ('b', b, ('s', 't'), (12, 10))))
    # a[r, s] * b[s, t]
    result = torch.tensordot(a, b, dims=((1,), (0,)))  # [r, t]
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
    if not (
        isinstance(u, torch.Tensor)
        and isinstance(v, torch.Tensor)
        and u.dim() == 3
        and u.layout == v.layout == torch.strided
        and u.is_floating_point()
        and u.dtype == v.dtype
        and u.device == v.device
    ):
        _check_arguments('bc', (('u', u, ('batch', 'r', 's')), ('v', v, ('batch', 's', 't'))))
    batch = u.shape[0]  # index batch, bound at call time
    if u.shape != (batch, 8, 12) or v.shape != (batch, 12, 10):
        _check_shapes(
            'bc',
            (('u', u, ('batch', 'r', 's'), (batch, 8, 12)), ('v', v, ('batch', 's', 't'), (batch, 12, 10))),
        )
    # u[batch, r, s] * v[batch, s, t]
    result = torch.einsum('abc,acd->abd', u, v)  # [batch, r, t]
    return result

"""Tensor-network functions compiled by tnc from unfold3d.tnd: u.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['u']


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


def u(x):
    """u[n, (c k1 k2 k3), (o1 o2 o3)]: compiled from unfold3d.tnd:25.

        u[n, (c k1 k2 k3), (o1 o2 o3)] = x[n, c, i1, i2, i3] * p1(i1, o1, k1) * p2(i2, o2, k2) * p3(i3, o3, k3)

    Args:
        x: [n, c, i1, i2, i3], sizes [n, 2, 4, 6, 7]

    Returns:
        [n, (c k1 k2 k3), (o1 o2 o3)], sizes [n, 36, 18]

    Rewrites applied:
        lower: p1(i1, o1, k1) -> a strided window view of the tensor on i1
        lower: p2(i2, o2, k2) -> a strided window view of the tensor on i2
        lower: p3(i3, o3, k3) -> a strided window view of the tensor on i3
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 5 and x.layout == torch.strided and x.is_floating_point()):
        _check_arguments('u', (('x', x, ('n', 'c', 'i1', 'i2', 'i3')),))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 2, 4, 6, 7):
        _check_shapes('u', (('x', x, ('n', 'c', 'i1', 'i2', 'i3'), (n, 2, 4, 6, 7)),))
    # x[n, c, o1, k1, o2, k2, o3, k3]
    x_view = (
        torch.nn.functional.pad(x, (0, 0, 1, 0, 0, 0))
        .unfold(2, 2, 1)
        .movedim(-1, 3)
        .unfold(4, 3, 2)
        .movedim(-1, 5)
        .unfold(6, 5, 2)[..., ::2]
        .movedim(-1, 7)
    )  # [n, c, o1, k1, o2, k2, o3, k3]
    result = torch.einsum('abcdefgh->abdfhceg', x_view)  # [n, c, k1, k2, k3, o1, o2, o3]
    result = result.reshape(n, 36, 18)  # [n, (c k1 k2 k3), (o1 o2 o3)]
    return result

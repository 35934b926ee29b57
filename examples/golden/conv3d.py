"""Tensor-network functions compiled by tnc from conv3d.tnd: y.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y']


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
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and x.dim() == 5
        and x.layout == w.layout == b.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype == b.dtype
        and x.device == w.device == b.device
    ):
        _check_arguments(
            'y',
            (('x', x, ('n', 'c', 'i1', 'i2', 'i3')), ('w', w, ('d', 'c', 'k1', 'k2', 'k3')), ('b', b, ('d',))),
        )
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 3, 6, 8, 8) or w.shape != (4, 3, 3, 3, 2) or b.shape != (4,):
        _check_shapes(
            'y',
            (
                ('x', x, ('n', 'c', 'i1', 'i2', 'i3'), (n, 3, 6, 8, 8)),
                ('w', w, ('d', 'c', 'k1', 'k2', 'k3'), (4, 3, 3, 3, 2)),
                ('b', b, ('d',), (4,)),
            ),
        )
    # term 1 of 2: x[n, c, i1, i2, i3] * p1(i1, o1, k1) * p2(i2, o2, k2) * p3(i3, o3, k3) * w[d, c, k1, k2, k3] + bias
    # native conv3d
    result = torch.nn.functional.conv3d(x, w, b, stride=(1, 2, 2), padding=(1, 1, 0))
    return result

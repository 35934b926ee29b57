"""Tensor-network functions compiled by tnc from dilated_conv1d.tnd: y.

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
    """y[n, d, o]: compiled from dilated_conv1d.tnd:22.

        y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k] + b[d]

    Args:
        x: [n, c, i], sizes [n, 3, 16]
        w: [d, c, k], sizes [5, 3, 3]
        b: [d], sizes [5]

    Returns:
        [n, d, o], sizes [n, 5, 16]

    Rewrites applied:
        lower: x * p * w -> native conv1d

    Index patterns:
        p: conv(stride=1, padding=2, dilation=2), (I, O, K) = (16, 16, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and x.dim() == 3
        and x.layout == w.layout == b.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype == b.dtype
        and x.device == w.device == b.device
    ):
        _check_arguments('y', (('x', x, ('n', 'c', 'i')), ('w', w, ('d', 'c', 'k')), ('b', b, ('d',))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 3, 16) or w.shape != (5, 3, 3) or b.shape != (5,):
        _check_shapes(
            'y',
            (('x', x, ('n', 'c', 'i'), (n, 3, 16)), ('w', w, ('d', 'c', 'k'), (5, 3, 3)), ('b', b, ('d',), (5,))),
        )
    # term 1 of 2: x[n, c, i] * p(i, o, k) * w[d, c, k] + bias
    # native conv1d
    result = torch.nn.functional.conv1d(x, w, b, padding=2, dilation=2)
    return result

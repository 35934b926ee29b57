"""Tensor-network functions compiled by tnc from depthwise_conv2d.tnd: y.

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


def y(x, w):
    """y[n, (g m), o1, o2]: compiled from depthwise_conv2d.tnd:25.

        y[n, (g m), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g m), c, k1, k2]

    Args:
        x: [n, (g c), i1, i2], sizes [n, 8, 12, 10]
        w: [(g m), c, k1, k2], sizes [16, 1, 3, 3]

    Returns:
        [n, (g m), o1, o2], sizes [n, 16, 12, 10]

    Rewrites applied:
        squeeze: size-1 legs c of x(n, g, c, i1, i2)
        squeeze: size-1 legs c of w(g, m, c, k1, k2)
        lower: x * p1 * p2 * w -> native conv2d (the kernel beats the rewritten network)

    Index patterns:
        p1: conv(stride=1, padding=1, dilation=1), (I, O, K) = (12, 12, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and x.dim() == 4
        and x.layout == w.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype
        and x.device == w.device
    ):
        _check_arguments('y', (('x', x, ('n', '(g c)', 'i1', 'i2')), ('w', w, ('(g m)', 'c', 'k1', 'k2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 8, 12, 10) or w.shape != (16, 1, 3, 3):
        _check_shapes(
            'y',
            (('x', x, ('n', '(g c)', 'i1', 'i2'), (n, 8, 12, 10)), ('w', w, ('(g m)', 'c', 'k1', 'k2'), (16, 1, 3, 3))),
        )
    # x[n, g, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[g, m, c, k1, k2]
    # native conv2d
    result = torch.nn.functional.conv2d(x, w, padding=1, groups=8)
    return result

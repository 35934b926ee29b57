"""Tensor-network functions compiled by tnc from conv2d_jvp.tnd: y, tx, tw, t.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'tx', 'tw', 't']


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
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and x.dim() == 4
        and x.layout == w.layout == b.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype == b.dtype
        and x.device == w.device == b.device
    ):
        _check_arguments('y', (('x', x, ('n', 'c', 'i1', 'i2')), ('w', w, ('d', 'c', 'k1', 'k2')), ('b', b, ('d',))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 3, 8, 7) or w.shape != (4, 3, 3, 2) or b.shape != (4,):
        _check_shapes(
            'y',
            (
                ('x', x, ('n', 'c', 'i1', 'i2'), (n, 3, 8, 7)),
                ('w', w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 2)),
                ('b', b, ('d',), (4,)),
            ),
        )
    # term 1 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + bias
    # native conv2d
    result = torch.nn.functional.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
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
    if not (
        isinstance(w, torch.Tensor)
        and isinstance(tangent_x, torch.Tensor)
        and tangent_x.dim() == 4
        and w.layout == tangent_x.layout == torch.strided
        and w.is_floating_point()
        and w.dtype == tangent_x.dtype
        and w.device == tangent_x.device
    ):
        _check_arguments('tx', (('w', w, ('d', 'c', 'k1', 'k2')), ('tangent_x', tangent_x, ('n', 'c', 'i1', 'i2'))))
    n = tangent_x.shape[0]  # index n, bound at call time
    if w.shape != (4, 3, 3, 2) or tangent_x.shape != (n, 3, 8, 7):
        _check_shapes(
            'tx',
            (
                ('w', w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 2)),
                ('tangent_x', tangent_x, ('n', 'c', 'i1', 'i2'), (n, 3, 8, 7)),
            ),
        )
    # tangent_x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
    # native conv2d
    result = torch.nn.functional.conv2d(tangent_x, w, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
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
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(tangent_w, torch.Tensor)
        and x.dim() == 4
        and x.layout == tangent_w.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == tangent_w.dtype
        and x.device == tangent_w.device
    ):
        _check_arguments('tw', (('x', x, ('n', 'c', 'i1', 'i2')), ('tangent_w', tangent_w, ('d', 'c', 'k1', 'k2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 3, 8, 7) or tangent_w.shape != (4, 3, 3, 2):
        _check_shapes(
            'tw',
            (
                ('x', x, ('n', 'c', 'i1', 'i2'), (n, 3, 8, 7)),
                ('tangent_w', tangent_w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 2)),
            ),
        )
    # x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * tangent_w[d, c, k1, k2]
    # native conv2d
    result = torch.nn.functional.conv2d(x, tangent_w, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
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
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and isinstance(tangent_x, torch.Tensor)
        and isinstance(tangent_w, torch.Tensor)
        and x.dim() == 4
        and x.layout == w.layout == tangent_x.layout == tangent_w.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype == tangent_x.dtype == tangent_w.dtype
        and x.device == w.device == tangent_x.device == tangent_w.device
    ):
        _check_arguments(
            't',
            (
                ('x', x, ('n', 'c', 'i1', 'i2')),
                ('w', w, ('d', 'c', 'k1', 'k2')),
                ('tangent_x', tangent_x, ('n', 'c', 'i1', 'i2')),
                ('tangent_w', tangent_w, ('d', 'c', 'k1', 'k2')),
            ),
        )
    n = x.shape[0]  # index n, bound at call time
    if (
        x.shape != (n, 3, 8, 7)
        or w.shape != (4, 3, 3, 2)
        or tangent_x.shape != (n, 3, 8, 7)
        or tangent_w.shape != (4, 3, 3, 2)
    ):
        _check_shapes(
            't',
            (
                ('x', x, ('n', 'c', 'i1', 'i2'), (n, 3, 8, 7)),
                ('w', w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 2)),
                ('tangent_x', tangent_x, ('n', 'c', 'i1', 'i2'), (n, 3, 8, 7)),
                ('tangent_w', tangent_w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 2)),
            ),
        )
    # term 1 of 2: tangent_x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
    # native conv2d
    term1 = torch.nn.functional.conv2d(tangent_x, w, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    # term 2 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * tangent_w[d, c, k1, k2]
    # native conv2d
    term2 = torch.nn.functional.conv2d(x, tangent_w, stride=(2, 1), padding=(1, 0), dilation=(1, 2))
    result = term1 + term2
    return result

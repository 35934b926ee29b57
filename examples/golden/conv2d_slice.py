"""Tensor-network functions compiled by tnc from conv2d_slice.tnd: y, top, even, last, gw, gw_rows, gx, gx_crop, masked.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'top', 'even', 'last', 'gw', 'gw_rows', 'gx', 'gx_crop', 'masked']


# Index patterns, copy tensors and fused constants, built once per shape, device and dtype, then reused. The cache
# keeps the most recently used of them that fit in _CONSTANTS_LIMIT bytes (change it to keep more or fewer); the
# least recently used go first, and a constant larger than the limit is built anew at each call that needs it.
_CONSTANTS = {}  # key -> tensor, the least recently used first
_CONSTANTS_LIMIT = 256 * 2**20


def _constant(key, build):
    """The cached constant of `key`, or build() (kept if it fits, the least recently used making room)."""
    value = _CONSTANTS.pop(key, None)
    if value is None:
        value = build()
        if value.nbytes > _CONSTANTS_LIMIT:
            return value
        held = value.nbytes + sum(t.nbytes for t in list(_CONSTANTS.values()))
        while held > _CONSTANTS_LIMIT and _CONSTANTS:
            oldest = _CONSTANTS.pop(next(iter(_CONSTANTS), None), None)
            held -= 0 if oldest is None else oldest.nbytes
    _CONSTANTS[key] = value  # the most recently used last
    return value


def _select(I, J, start, step, device, dtype):
    """S[i, j] = 1 iff i = start + j*step: a strided window of an index as a dense (I, J) tensor (cached)."""
    def build():
        i = torch.arange(I, device=device).view(I, 1)
        j = torch.arange(J, device=device).view(1, J)
        return (i == start + j * step).to(dtype)
    return _constant(("select", I, J, start, step, device, dtype), build)


def _pad(t, pads):
    """F.pad for amounts known at call time only: pads lists (left, right) per axis, the last axis first; a negative
    amount crops, also more entries than there are (the rest is zeros), and nothing is copied where nothing changes."""
    if all(amount == 0 for amount in pads):
        return t
    if all(amount >= 0 for amount in pads):
        return torch.nn.functional.pad(t, pads)
    shape, kept, positive = list(t.shape), [], []
    for k in range(len(pads) // 2):
        axis, left, right = t.dim() - 1 - k, pads[2 * k], pads[2 * k + 1]
        size = shape[axis]
        kept.append((axis, max(0, -left), min(size, size + right)))  # the entries that stay
        shape[axis] = size + left + right
        positive += [max(left, 0), max(right, 0)]
    if any(hi <= lo for _, lo, hi in kept) or min(shape) <= 0:  # nothing stays: zeros
        return t.new_zeros([max(0, size) for size in shape])
    for axis, lo, hi in kept:
        t = t.narrow(axis, lo, hi - lo)
    return torch.nn.functional.pad(t, positive) if any(positive) else t


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
    """y[n, (g d), o1, o2]: compiled from conv2d_slice.tnd:32.

        y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2]
                            + b[(g d)]

    Args:
        x: [n, (g c), i1, i2], sizes [n, 6, 12, 10]
        w: [(g d), c, k1, k2], sizes [8, 3, 3, 3]
        b: [(g d)], sizes [8]

    Returns:
        [n, (g d), o1, o2], sizes [n, 8, 6, 10]

    Rewrites applied:
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (12, 6, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
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
        _check_arguments(
            'y',
            (('x', x, ('n', '(g c)', 'i1', 'i2')), ('w', w, ('(g d)', 'c', 'k1', 'k2')), ('b', b, ('(g d)',))),
        )
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 6, 12, 10) or w.shape != (8, 3, 3, 3) or b.shape != (8,):
        _check_shapes(
            'y',
            (
                ('x', x, ('n', '(g c)', 'i1', 'i2'), (n, 6, 12, 10)),
                ('w', w, ('(g d)', 'c', 'k1', 'k2'), (8, 3, 3, 3)),
                ('b', b, ('(g d)',), (8,)),
            ),
        )
    # term 1 of 2: x[n, g, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[g, d, c, k1, k2] + bias
    # native conv2d
    result = torch.nn.functional.conv2d(x, w, b, stride=(2, 1), padding=1, groups=2)
    return result


def top(x, w, b):
    """top[n, (g d), o1', o2]: compiled from conv2d_slice.tnd:35.

        top = slice(y, o1=0:3)              # the top three output rows: y[:, :, 0:3] = [n, 8, 3, 10]

    Args:
        x: [n, (g c), i1, i2], sizes [n, 6, 12, 10]
        w: [(g d), c, k1, k2], sizes [8, 3, 3, 3]
        b: [(g d)], sizes [8]

    Returns:
        [n, (g d), o1', o2], sizes [n, 8, 3, 10]

    Rewrites applied:
        select-slice: select(o1, o1') -> p1[0:3:1] on o1'
        pattern-slice: p1(i1, o1', k1) -> conv(stride=2, padding=(1, 0), dilation=1)
        narrow-input: p1(i1, o1', k1) reads only i1[0:6]
        select-slice: select(i1, i1~) -> x[0:6:1] on i1~
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=(1, 0), dilation=1), (I, O, K) = (6, 3, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
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
        _check_arguments(
            'top',
            (('x', x, ('n', '(g c)', 'i1', 'i2')), ('w', w, ('(g d)', 'c', 'k1', 'k2')), ('b', b, ('(g d)',))),
        )
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 6, 12, 10) or w.shape != (8, 3, 3, 3) or b.shape != (8,):
        _check_shapes(
            'top',
            (
                ('x', x, ('n', '(g c)', 'i1', 'i2'), (n, 6, 12, 10)),
                ('w', w, ('(g d)', 'c', 'k1', 'k2'), (8, 3, 3, 3)),
                ('b', b, ('(g d)',), (8,)),
            ),
        )
    # term 1 of 2: x[n, g, c, i1, i2] * p1(i1, o1', k1) * p2(i2, o2, k2) * w[g, d, c, k1, k2] + bias
    # native conv2d
    x_legs = x.reshape(n, 2, 3, 12, 10)
    x_view = x_legs[:, :, :, 0:6]  # [n, g, c, i1, i2]
    result_in = x_view.reshape(n, 6, 6, 10)
    result = torch.nn.functional.conv2d(result_in, w, b, stride=(2, 1), padding=1, groups=2)
    return result


def even(x, w, b):
    """even[n, (g d'), o1, o2']: compiled from conv2d_slice.tnd:36.

        even = slice(y, o2=::2, d=1:3)      # every other column, out-channels 1 and 2 of each group

    Args:
        x: [n, (g c), i1, i2], sizes [n, 6, 12, 10]
        w: [(g d), c, k1, k2], sizes [8, 3, 3, 3]
        b: [(g d)], sizes [8]

    Returns:
        [n, (g d'), o1, o2'], sizes [n, 4, 6, 5]

    Rewrites applied:
        select-slice: select(o2, o2') -> p2[0:9:2] on o2'
        pattern-slice: p2(i2, o2', k2) -> conv(stride=2, padding=(1, 0), dilation=1)
        select-slice: select(d, d') -> w[1:3:1] on d'
        select-slice: select(d, d') -> b[1:3:1] on d'
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (12, 6, 3)
        p2: conv(stride=2, padding=(1, 0), dilation=1), (I, O, K) = (10, 5, 3)
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
        _check_arguments(
            'even',
            (('x', x, ('n', '(g c)', 'i1', 'i2')), ('w', w, ('(g d)', 'c', 'k1', 'k2')), ('b', b, ('(g d)',))),
        )
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 6, 12, 10) or w.shape != (8, 3, 3, 3) or b.shape != (8,):
        _check_shapes(
            'even',
            (
                ('x', x, ('n', '(g c)', 'i1', 'i2'), (n, 6, 12, 10)),
                ('w', w, ('(g d)', 'c', 'k1', 'k2'), (8, 3, 3, 3)),
                ('b', b, ('(g d)',), (8,)),
            ),
        )
    # term 1 of 2: x[n, g, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2', k2) * w[g, d', c, k1, k2]
    # native conv2d
    w_legs = w.reshape(2, 4, 3, 3, 3)
    w_view = w_legs[:, 1:3]  # [g, d', c, k1, k2]
    term1_w = w_view.reshape(4, 3, 3, 3)
    term1 = torch.nn.functional.conv2d(x, term1_w, stride=2, padding=1, groups=2)
    # term 2 of 2: b[g, d']
    b_legs = b.reshape(2, 4)
    b_view = b_legs[:, 1:3]  # [g, d']
    term2 = b_view
    term1 = term1.reshape(n, 2, 2, 6, 5)
    term2 = term2.reshape(1, 2, 2, 1, 1)  # broadcast over the missing legs
    result = term1 + term2
    result = result.reshape(n, 4, 6, 5)  # [n, (g d'), o1, o2']
    return result


def last(x, w, b):
    """last[n, (g' d), o1', o2]: compiled from conv2d_slice.tnd:38.

        last = slice(y, g=-1:, o1=-2:)      # the last group's channels, the last two rows:

    Args:
        x: [n, (g c), i1, i2], sizes [n, 6, 12, 10]
        w: [(g d), c, k1, k2], sizes [8, 3, 3, 3]
        b: [(g d)], sizes [8]

    Returns:
        [n, (g' d), o1', o2], sizes [n, 4, 2, 10]

    Rewrites applied:
        select-slice: select(o1, o1') -> p1[4:6:1] on o1'
        pattern-slice: p1(i1, o1', k1) -> conv(stride=2, padding=(-7, 0), dilation=1)
        narrow-input: p1(i1, o1', k1) reads only i1[7:12]
        select-slice: select(i1, i1~) -> x[7:12:1] on i1~
        select-slice: select(g, g') -> b[1:2:1] on g'
        squeeze: size-1 legs g' of b(g', d)
        lower: p1(i1~, o1', k1) -> a strided window view of the tensor on i1~
        lower: p2(i2, o2, k2) -> a strided window view of the tensor on i2
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
        _check_arguments(
            'last',
            (('x', x, ('n', '(g c)', 'i1', 'i2')), ('w', w, ('(g d)', 'c', 'k1', 'k2')), ('b', b, ('(g d)',))),
        )
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 6, 12, 10) or w.shape != (8, 3, 3, 3) or b.shape != (8,):
        _check_shapes(
            'last',
            (
                ('x', x, ('n', '(g c)', 'i1', 'i2'), (n, 6, 12, 10)),
                ('w', w, ('(g d)', 'c', 'k1', 'k2'), (8, 3, 3, 3)),
                ('b', b, ('(g d)',), (8,)),
            ),
        )
    device = x.device
    dtype = x.dtype
    # term 1 of 2: x[n, g, c, o1', k1, o2, k2] * w[g, d, c, k1, k2] * select(g, g')
    x_legs = x.reshape(n, 2, 3, 12, 10)
    x_view = (
        torch.nn.functional.pad(x_legs[:, :, :, 7:12], (1, 1, 0, 0))
        .unfold(3, 3, 2)
        .movedim(-1, 4)
        .unfold(5, 3, 1)
        .movedim(-1, 6)
    )  # [n, g, c, o1', k1, o2, k2]
    w_legs = w.reshape(2, 4, 3, 3, 3)
    select = _select(2, 1, 1, 1, device, dtype)  # select(start=1, step=1)
    t1 = torch.einsum('ab,acdef->abcdef', select, w_legs)  # [g, g', d, c, k1, k2]
    term1 = torch.einsum('abcdefg,bhiceg->ahidf', x_view, t1)  # [n, g', d, o1', o2]
    # term 2 of 2: b[d]
    b_legs = b.reshape(2, 4)
    b_view = b_legs[1:2].squeeze(0)  # [d]
    term2 = b_view
    term2 = term2.reshape(1, 1, 4, 1, 1)  # broadcast over the missing legs
    result = term1 + term2
    result = result.reshape(n, 4, 2, 10)  # [n, (g' d), o1', o2]
    return result


def gw(x, grad_y):
    """gw[(g d), c, k1, k2]: compiled from conv2d_slice.tnd:42.

        gw = vjp(y, w)                      # the weight gradient gw(x, grad_y): [8, 3, 3, 3]

    Args:
        x: [n, (g c), i1, i2], sizes [n, 6, 12, 10]
        grad_y: [n, (g d), o1, o2], sizes [n, 8, 6, 10]

    Returns:
        [(g d), c, k1, k2], sizes [8, 3, 3, 3]

    Rewrites applied:
        lower: x * p1 * p2 * grad_y -> native conv_weight2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (12, 6, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and x.dim() == 4
        and x.layout == grad_y.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == grad_y.dtype
        and x.device == grad_y.device
    ):
        _check_arguments('gw', (('x', x, ('n', '(g c)', 'i1', 'i2')), ('grad_y', grad_y, ('n', '(g d)', 'o1', 'o2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 6, 12, 10) or grad_y.shape != (n, 8, 6, 10):
        _check_shapes(
            'gw',
            (
                ('x', x, ('n', '(g c)', 'i1', 'i2'), (n, 6, 12, 10)),
                ('grad_y', grad_y, ('n', '(g d)', 'o1', 'o2'), (n, 8, 6, 10)),
            ),
        )
    # x[n, g, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * grad_y[n, g, d, o1, o2]
    # native conv_weight2d
    result = torch.nn.grad.conv2d_weight(x, (8, 3, 3, 3), grad_y, stride=(2, 1), padding=1, groups=2)
    return result


def gw_rows(x, grad_y):
    """gw_rows[(g d), c, k1', k2]: compiled from conv2d_slice.tnd:43.

        gw_rows = slice(gw, k1=1:)          # only kernel rows 1 and 2: [8, 3, 2, 3]

    Args:
        x: [n, (g c), i1, i2], sizes [n, 6, 12, 10]
        grad_y: [n, (g d), o1, o2], sizes [n, 8, 6, 10]

    Returns:
        [(g d), c, k1', k2], sizes [8, 3, 2, 3]

    Rewrites applied:
        select-slice: select(k1, k1') -> p1[1:3:1] on k1'
        pattern-slice: p1(i1, o1, k1') -> conv(stride=2, padding=0, dilation=1)
        dense: p1(i1, o1, k1') -> i1 split into (o1, k1')
        lower: x * p2 * grad_y -> native conv_weight1d

    Index patterns:
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and x.dim() == 4
        and x.layout == grad_y.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == grad_y.dtype
        and x.device == grad_y.device
    ):
        _check_arguments(
            'gw_rows',
            (('x', x, ('n', '(g c)', 'i1', 'i2')), ('grad_y', grad_y, ('n', '(g d)', 'o1', 'o2'))),
        )
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 6, 12, 10) or grad_y.shape != (n, 8, 6, 10):
        _check_shapes(
            'gw_rows',
            (
                ('x', x, ('n', '(g c)', 'i1', 'i2'), (n, 6, 12, 10)),
                ('grad_y', grad_y, ('n', '(g d)', 'o1', 'o2'), (n, 8, 6, 10)),
            ),
        )
    # x[n, g, c, o1, k1', i2] * p2(i2, o2, k2) * grad_y[n, g, d, o1, o2]
    # native conv_weight1d
    x_view = x.reshape(n, 2, 3, 6, 2, 10)  # [n, g, c, o1, k1', i2]
    result_in = x_view.permute(0, 3, 1, 2, 4, 5).reshape(6 * n, 12, 10)
    grad_y_legs = grad_y.reshape(n, 2, 4, 6, 10)
    result_grad = grad_y_legs.permute(0, 3, 1, 2, 4).reshape(6 * n, 8, 10)
    result = torch.nn.grad.conv1d_weight(result_in, (8, 6, 3), result_grad, padding=1, groups=2)
    result = result.reshape(8, 3, 2, 3)  # [(g d), c, k1', k2]
    return result


def gx(w, grad_y):
    """gx[n, (g c), i1, i2]: compiled from conv2d_slice.tnd:44.

        gx = vjp(y, x)                      # the input gradient gx(w, grad_y): [n, 6, 12, 10]

    Args:
        w: [(g d), c, k1, k2], sizes [8, 3, 3, 3]
        grad_y: [n, (g d), o1, o2], sizes [n, 8, 6, 10]

    Returns:
        [n, (g c), i1, i2], sizes [n, 6, 12, 10]

    Rewrites applied:
        lower: p1 * p2 * w * grad_y -> native conv_transpose2d

    Index patterns:
        p1: conv(stride=2, padding=1, dilation=1), (I, O, K) = (12, 6, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
    """
    if not (
        isinstance(w, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 4
        and w.layout == grad_y.layout == torch.strided
        and w.is_floating_point()
        and w.dtype == grad_y.dtype
        and w.device == grad_y.device
    ):
        _check_arguments('gx', (('w', w, ('(g d)', 'c', 'k1', 'k2')), ('grad_y', grad_y, ('n', '(g d)', 'o1', 'o2'))))
    n = grad_y.shape[0]  # index n, bound at call time
    if w.shape != (8, 3, 3, 3) or grad_y.shape != (n, 8, 6, 10):
        _check_shapes(
            'gx',
            (
                ('w', w, ('(g d)', 'c', 'k1', 'k2'), (8, 3, 3, 3)),
                ('grad_y', grad_y, ('n', '(g d)', 'o1', 'o2'), (n, 8, 6, 10)),
            ),
        )
    # p1(i1, o1, k1) * p2(i2, o2, k2) * w[g, d, c, k1, k2] * grad_y[n, g, d, o1, o2]
    # native conv_transpose2d
    result = torch.nn.functional.conv_transpose2d(grad_y, w, stride=(2, 1), padding=1, output_padding=(1, 0), groups=2)
    return result


def gx_crop(w, grad_y):
    """gx_crop[n, (g c), i1', i2']: compiled from conv2d_slice.tnd:45.

        gx_crop = slice(gx, i1=2:10, i2=2:8)  # the input gradient of a crop of the image: [n, 6, 8, 6]

    Args:
        w: [(g d), c, k1, k2], sizes [8, 3, 3, 3]
        grad_y: [n, (g d), o1, o2], sizes [n, 8, 6, 10]

    Returns:
        [n, (g c), i1', i2'], sizes [n, 6, 8, 6]

    Rewrites applied:
        select-slice: select(i1, i1') -> p1[2:10:1] on i1'
        pattern-slice: p1(i1', o1, k1) -> conv(stride=2, padding=(3, 2), dilation=1)
        narrow-output: p1(i1', o1, k1) reads the input only in windows o1[1:6]
        select-slice: select(o1, o1~) -> grad_y[1:6:1] on o1~
        select-slice: select(i2, i2') -> p2[2:8:1] on i2'
        pattern-slice: p2(i2', o2, k2) -> conv(stride=1, padding=3, dilation=1)
        narrow-output: p2(i2', o2, k2) reads the input only in windows o2[1:9]
        select-slice: select(o2, o2~) -> grad_y[1:9:1] on o2~
        lower: p1 * p2 * w * grad_y -> native conv_transpose2d

    Index patterns:
        p1: conv(stride=2, padding=(1, 2), dilation=1), (I, O, K) = (8, 5, 3)
        p2: conv(stride=1, padding=2, dilation=1), (I, O, K) = (6, 8, 3)
    """
    if not (
        isinstance(w, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 4
        and w.layout == grad_y.layout == torch.strided
        and w.is_floating_point()
        and w.dtype == grad_y.dtype
        and w.device == grad_y.device
    ):
        _check_arguments(
            'gx_crop',
            (('w', w, ('(g d)', 'c', 'k1', 'k2')), ('grad_y', grad_y, ('n', '(g d)', 'o1', 'o2'))),
        )
    n = grad_y.shape[0]  # index n, bound at call time
    if w.shape != (8, 3, 3, 3) or grad_y.shape != (n, 8, 6, 10):
        _check_shapes(
            'gx_crop',
            (
                ('w', w, ('(g d)', 'c', 'k1', 'k2'), (8, 3, 3, 3)),
                ('grad_y', grad_y, ('n', '(g d)', 'o1', 'o2'), (n, 8, 6, 10)),
            ),
        )
    # p1(i1', o1, k1) * p2(i2', o2, k2) * w[g, d, c, k1, k2] * grad_y[n, g, d, o1, o2]
    # native conv_transpose2d
    grad_y_legs = grad_y.reshape(n, 2, 4, 6, 10)
    grad_y_view = grad_y_legs[:, :, :, 1:6][:, :, :, :, 1:9]  # [n, g, d, o1, o2]
    result_in = grad_y_view.reshape(n, 8, 5, 8)
    result = torch.nn.functional.conv_transpose2d(result_in, w, stride=(2, 1), groups=2)
    result = _pad(result, (-2, -2, -1, -2))  # cropped to I
    return result


def masked(x, w):
    """masked[n, (g d), o1, o2]: compiled from conv2d_slice.tnd:50.

        masked[n, (g d), o1, o2] = x[n, (g c), 0:8, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2]

    Args:
        x: [n, (g c), i1, i2], sizes [n, 6, 12, 10]
        w: [(g d), c, k1, k2], sizes [8, 3, 3, 3]

    Returns:
        [n, (g d), o1, o2], sizes [n, 8, 6, 10]

    Rewrites applied:
        select-slice: select(i1~0, i1~1) -> x[0:8:1] on i1~1
        select-slice: select(i1, i1~1) -> p1[0:8:1] on i1~1
        pattern-slice: p1(i1~1, o1, k1) -> conv(stride=2, padding=(1, 4), dilation=1)
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=2, padding=(1, 4), dilation=1), (I, O, K) = (8, 6, 3)
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
        _check_arguments('masked', (('x', x, ('n', '(g c)', 'i1', 'i2')), ('w', w, ('(g d)', 'c', 'k1', 'k2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 6, 12, 10) or w.shape != (8, 3, 3, 3):
        _check_shapes(
            'masked',
            (('x', x, ('n', '(g c)', 'i1', 'i2'), (n, 6, 12, 10)), ('w', w, ('(g d)', 'c', 'k1', 'k2'), (8, 3, 3, 3))),
        )
    # x[n, g, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[g, d, c, k1, k2]
    # native conv2d
    x_legs = x.reshape(n, 2, 3, 12, 10)
    x_view = x_legs[:, :, :, 0:8]  # [n, g, c, i1, i2]
    result_in = x_view.reshape(n, 6, 8, 10)
    result_in_2 = torch.nn.functional.pad(result_in, (1, 1, 1, 4))  # padded
    result = torch.nn.functional.conv2d(result_in_2, w, stride=(2, 1), groups=2)
    return result

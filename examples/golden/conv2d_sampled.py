"""Tensor-network functions compiled by tnc from conv2d_sampled.tnd: y, gw, gw_batch, _y_vjp_x, _y_vjp_b.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'gw', 'gw_batch', 'y_sampled_autograd']


def _keep(size, p, generator):
    """Tensor dropout: the indices of the entries kept, each independently with probability p. Drawn on the host (or
    on the generator's device): the same seed keeps the same entries whatever the arguments' device, and the call
    never waits for that device."""
    where = "cpu" if generator is None else generator.device
    return torch.nonzero(torch.rand(size, generator=generator, device=where) < p).flatten()


def _keep_probability(function, name, p):
    """A keep-probability given per call: a number in (0, 1]."""
    if isinstance(p, (bool, torch.Tensor)) or not isinstance(p, (int, float)):
        raise TypeError(f"{function}(): keyword {name}= is the probability to keep each entry and must be a number, "
                         f"got {type(p).__name__}")
    if not 0 < p <= 1:
        raise ValueError(f"{function}(): keyword {name}= is the probability to keep each entry and must be in (0, 1], "
                         f"got {p}")
    return p


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


def _generator_keyword(function, generator):
    """The generator= of a sampled function: None (torch's default CPU generator) or a torch.Generator."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{function}(): keyword generator= must be a torch.Generator or None, "
                        f"got {type(generator).__name__}")
    return generator


def y(x, w, b):
    """y[n, d, o1, o2]: compiled from conv2d_sampled.tnd:41.

        y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]

    Args:
        x: [n, c, i1, i2], sizes [n, 3, 10, 8]
        w: [d, c, k1, k2], sizes [4, 3, 3, 3]
        b: [d], sizes [4]

    Returns:
        [n, d, o1, o2], sizes [n, 4, 10, 8]

    Rewrites applied:
        lower: x * p1 * p2 * w -> native conv2d

    Index patterns:
        p1: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (8, 8, 3)
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
    if x.shape != (n, 3, 10, 8) or w.shape != (4, 3, 3, 3) or b.shape != (4,):
        _check_shapes(
            'y',
            (
                ('x', x, ('n', 'c', 'i1', 'i2'), (n, 3, 10, 8)),
                ('w', w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 3)),
                ('b', b, ('d',), (4,)),
            ),
        )
    # term 1 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + bias
    # native conv2d
    result = torch.nn.functional.conv2d(x, w, b, padding=1)
    return result


def gw(x, grad_y, *, p=0.5, generator=None):
    """gw[d, c, k1, k2]: compiled from conv2d_sampled.tnd:44.

        gw = sample(vjp(y, w), index=o1, p=0.5)         # gw(x, grad_y, *, generator=None): [4, 3, 3, 3]

    Args:
        x: [n, c, i1, i2], sizes [n, 3, 10, 8]
        grad_y: [n, d, o1, o2], sizes [n, 4, 10, 8]
        p: keyword-only float in (0, 1], the probability to keep each entry of o1
        generator: keyword-only torch.Generator or None (torch's default CPU one), for the draws

    Returns:
        [d, c, k1, k2], sizes [4, 3, 3, 3]

    Rewrites applied:
        lower: x * p1 * p2 * grad_y -> native conv_weight2d on the kept windows of o1' (stride K)

    Index patterns:
        p1: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (8, 8, 3)
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
        _check_arguments('gw', (('x', x, ('n', 'c', 'i1', 'i2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 3, 10, 8) or grad_y.shape != (n, 4, 10, 8):
        _check_shapes(
            'gw',
            (
                ('x', x, ('n', 'c', 'i1', 'i2'), (n, 3, 10, 8)),
                ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 4, 10, 8)),
            ),
        )
    device = x.device
    generator = _generator_keyword('gw', generator)
    p = _keep_probability('gw', 'p', p)
    drawn_o1 = _keep(10, p, generator)  # each entry of o1 kept with probability p, drawn on the host
    o1_kept = drawn_o1.numel()
    keep_o1 = drawn_o1.to(device, non_blocking=True)
    # 1/p(o1) * x[n, c, i1, i2] * p1(i1, o1', k1) * p2(i2, o2, k2) * grad_y[n, d, o1', o2]
    # native conv_weight2d on the kept windows of o1' (stride K)
    result_rows1 = (drawn_o1.view(-1, 1) + torch.arange(0, 3, 1, device=drawn_o1.device) - 1).flatten()  # rows read
    result_outside1 = (result_rows1 < 0) | (result_rows1 > 9)  # rows in the padding
    result_in = x.index_select(2, result_rows1.clamp(0, 9).to(device, non_blocking=True))
    result_in[:, :, :3].masked_fill_(result_outside1[:3].to(device, non_blocking=True).view(-1, 1), 0)
    result_in[:, :, -3:].masked_fill_(result_outside1[-3:].to(device, non_blocking=True).view(-1, 1), 0)
    grad_y_view = grad_y.index_select(2, keep_o1)  # [n, d, o1', o2]
    if o1_kept:
        result = torch.nn.grad.conv2d_weight(result_in, (4, 3, 3, 3), grad_y_view, stride=(3, 1), padding=(0, 1))
    else:  # no entry kept
        result = result_in.new_zeros((4, 3, 3, 3))
    result.mul_(1 / p)
    return result


def gw_batch(x, grad_y, *, p=0.25, generator=None):
    """gw_batch[d, c, k1, k2]: compiled from conv2d_sampled.tnd:45.

        gw_batch = sample(vjp(y, w), index=n, p=0.25)   # a quarter of the examples, on average

    Args:
        x: [n, c, i1, i2], sizes [n, 3, 10, 8]
        grad_y: [n, d, o1, o2], sizes [n, 4, 10, 8]
        p: keyword-only float in (0, 1], the probability to keep each entry of n
        generator: keyword-only torch.Generator or None (torch's default CPU one), for the draws

    Returns:
        [d, c, k1, k2], sizes [4, 3, 3, 3]

    Rewrites applied:
        lower: x * p1 * p2 * grad_y -> native conv_weight2d

    Index patterns:
        p1: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (8, 8, 3)
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
        _check_arguments('gw_batch', (('x', x, ('n', 'c', 'i1', 'i2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 3, 10, 8) or grad_y.shape != (n, 4, 10, 8):
        _check_shapes(
            'gw_batch',
            (
                ('x', x, ('n', 'c', 'i1', 'i2'), (n, 3, 10, 8)),
                ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 4, 10, 8)),
            ),
        )
    device = x.device
    generator = _generator_keyword('gw_batch', generator)
    p = _keep_probability('gw_batch', 'p', p)
    drawn_n = _keep(n, p, generator)  # each entry of n kept with probability p, drawn on the host
    n_kept = drawn_n.numel()
    keep_n = drawn_n.to(device, non_blocking=True)
    # 1/p(n) * x[n', c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * grad_y[n', d, o1, o2]
    # native conv_weight2d
    x_view = x.index_select(0, keep_n)  # [n', c, i1, i2]
    grad_y_view = grad_y.index_select(0, keep_n)  # [n', d, o1, o2]
    result = torch.nn.grad.conv2d_weight(x_view, (4, 3, 3, 3), grad_y_view, padding=1)
    result.mul_(1 / p)
    return result


def _y_vjp_x(w, grad_y):
    """_y_vjp_x[n, c, i1, i2]: compiled from conv2d_sampled.tnd:41.

        y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]

    Args:
        w: [d, c, k1, k2], sizes [4, 3, 3, 3]
        grad_y: [n, d, o1, o2], sizes [n, 4, 10, 8]

    Returns:
        [n, c, i1, i2], sizes [n, 3, 10, 8]

    Rewrites applied:
        lower: p1 * p2 * w * grad_y -> native conv_transpose2d

    Index patterns:
        p1: conv(stride=1, padding=1, dilation=1), (I, O, K) = (10, 10, 3)
        p2: conv(stride=1, padding=1, dilation=1), (I, O, K) = (8, 8, 3)
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
        _check_arguments('_y_vjp_x', (('w', w, ('d', 'c', 'k1', 'k2')), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'))))
    n = grad_y.shape[0]  # index n, bound at call time
    if w.shape != (4, 3, 3, 3) or grad_y.shape != (n, 4, 10, 8):
        _check_shapes(
            '_y_vjp_x',
            (('w', w, ('d', 'c', 'k1', 'k2'), (4, 3, 3, 3)), ('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 4, 10, 8))),
        )
    # p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] * grad_y[n, d, o1, o2]
    # native conv_transpose2d
    result = torch.nn.functional.conv_transpose2d(grad_y, w, padding=1)
    return result


def _y_vjp_b(grad_y):
    """_y_vjp_b[d]: compiled from conv2d_sampled.tnd:41.

        y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]

    Args:
        grad_y: [n, d, o1, o2], sizes [n, 4, 10, 8]

    Returns:
        [d], sizes [4]

    Rewrites applied:
        merge: o1 and o2 always travel together -> one leg o1.o2
    """
    if not (
        isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 4
        and grad_y.layout == torch.strided
        and grad_y.is_floating_point()
    ):
        _check_arguments('_y_vjp_b', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2')),))
    n = grad_y.shape[0]  # index n, bound at call time
    if grad_y.shape != (n, 4, 10, 8):
        _check_shapes('_y_vjp_b', (('grad_y', grad_y, ('n', 'd', 'o1', 'o2'), (n, 4, 10, 8)),))
    # grad_y[n, d, (o1 o2)]
    result = grad_y.sum((0, 2, 3))  # [d]
    return result


class y_sampled_autograd(torch.autograd.Function):
    """y exactly in the forward pass; in the backward pass, the sampled VJPs gw and exact VJPs for the other arguments.

    Use as y_sampled_autograd.apply(x, w, b, generator=None, p=0.5).
    generator: a torch.Generator or None, for the draws.
    p: passed on to gw.
    """

    @staticmethod
    def forward(x, w, b, generator=None, p=0.5):
        return y(x, w, b)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, w, _, ctx.generator, ctx.p = inputs
        ctx.save_for_backward(x, w)

    @staticmethod
    def backward(ctx, grad_y):
        x, w = ctx.saved_tensors
        grad_x = _y_vjp_x(w, grad_y) if ctx.needs_input_grad[0] else None
        grad_w = gw(x, grad_y, p=ctx.p, generator=ctx.generator) if ctx.needs_input_grad[1] else None
        grad_b = _y_vjp_b(grad_y) if ctx.needs_input_grad[2] else None
        return (grad_x, grad_w, grad_b, None, None)

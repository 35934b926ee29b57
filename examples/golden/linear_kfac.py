"""Tensor-network functions compiled by tnc from linear_kfac.tnd: y, gx, gw, gb, A, Ar, B, Br.

Generated code: edit the .tnd file and recompile."""

import torch

__all__ = ['y', 'gx', 'gw', 'gb', 'A', 'Ar', 'B', 'Br']


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


def _nonzero(function, index, size):
    """A size the result is divided by (a KFAC factor's 1/|n|, a file's / size(n)) must not be 0."""
    if size == 0:
        raise ValueError(f"{function}(): index {index} has size 0 (an empty batch?), and the result is divided by it")
    return size


def y(x, w, b):
    """y[n, d]: compiled from linear_kfac.tnd:19.

        y[n, d] = x[n, c] * w[d, c] + b[d]

    Args:
        x: [n, c], sizes [n, 5]
        w: [d, c], sizes [3, 5]
        b: [d], sizes [3]

    Returns:
        [n, d], sizes [n, 3]
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(w, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and x.dim() == 2
        and x.layout == w.layout == b.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == w.dtype == b.dtype
        and x.device == w.device == b.device
    ):
        _check_arguments('y', (('x', x, ('n', 'c')), ('w', w, ('d', 'c')), ('b', b, ('d',))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 5) or w.shape != (3, 5) or b.shape != (3,):
        _check_shapes('y', (('x', x, ('n', 'c'), (n, 5)), ('w', w, ('d', 'c'), (3, 5)), ('b', b, ('d',), (3,))))
    # term 1 of 2: x[n, c] * w[d, c]
    term1 = torch.tensordot(x, w, dims=((1,), (1,)))  # [n, d]
    # term 2 of 2: b[d]
    term2 = b
    term2 = term2.reshape(1, 3)  # broadcast over the missing legs
    result = term1 + term2
    return result


def gx(w, grad_y):
    """gx[n, c]: compiled from linear_kfac.tnd:21.

        gx = vjp(y, x)                   # gx(w, grad_y) -> [n, c]

    Args:
        w: [d, c], sizes [3, 5]
        grad_y: [n, d], sizes [n, 3]

    Returns:
        [n, c], sizes [n, 5]
    """
    if not (
        isinstance(w, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 2
        and w.layout == grad_y.layout == torch.strided
        and w.is_floating_point()
        and w.dtype == grad_y.dtype
        and w.device == grad_y.device
    ):
        _check_arguments('gx', (('w', w, ('d', 'c')), ('grad_y', grad_y, ('n', 'd'))))
    n = grad_y.shape[0]  # index n, bound at call time
    if w.shape != (3, 5) or grad_y.shape != (n, 3):
        _check_shapes('gx', (('w', w, ('d', 'c'), (3, 5)), ('grad_y', grad_y, ('n', 'd'), (n, 3))))
    # w[d, c] * grad_y[n, d]
    result = torch.einsum('ab,ca->cb', w, grad_y)  # [n, c]
    return result


def gw(x, grad_y):
    """gw[d, c]: compiled from linear_kfac.tnd:22.

        gw = vjp(y, w)                   # gw(x, grad_y) -> [d, c]

    Args:
        x: [n, c], sizes [n, 5]
        grad_y: [n, d], sizes [n, 3]

    Returns:
        [d, c], sizes [3, 5]
    """
    if not (
        isinstance(x, torch.Tensor)
        and isinstance(grad_y, torch.Tensor)
        and x.dim() == 2
        and x.layout == grad_y.layout == torch.strided
        and x.is_floating_point()
        and x.dtype == grad_y.dtype
        and x.device == grad_y.device
    ):
        _check_arguments('gw', (('x', x, ('n', 'c')), ('grad_y', grad_y, ('n', 'd'))))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 5) or grad_y.shape != (n, 3):
        _check_shapes('gw', (('x', x, ('n', 'c'), (n, 5)), ('grad_y', grad_y, ('n', 'd'), (n, 3))))
    # x[n, c] * grad_y[n, d]
    result = torch.einsum('ab,ac->cb', x, grad_y)  # [d, c]
    return result


def gb(grad_y):
    """gb[d]: compiled from linear_kfac.tnd:23.

        gb = vjp(y, b)                   # gb(grad_y) -> [d]

    Args:
        grad_y: [n, d], sizes [n, 3]

    Returns:
        [d], sizes [3]
    """
    if not (
        isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 2
        and grad_y.layout == torch.strided
        and grad_y.is_floating_point()
    ):
        _check_arguments('gb', (('grad_y', grad_y, ('n', 'd')),))
    n = grad_y.shape[0]  # index n, bound at call time
    if grad_y.shape != (n, 3):
        _check_shapes('gb', (('grad_y', grad_y, ('n', 'd'), (n, 3)),))
    # grad_y[n, d]
    result = grad_y.sum(0)  # [d]
    return result


def A(x):
    """A[c, c']: compiled from linear_kfac.tnd:25.

        A = kfac(y, w, batch=n)                        # A(x) -> [c, c']

    Args:
        x: [n, c], sizes [n, 5]

    Returns:
        [c, c'], sizes [5, 5]
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 2 and x.layout == torch.strided and x.is_floating_point()):
        _check_arguments('A', (('x', x, ('n', 'c')),))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 5):
        _check_shapes('A', (('x', x, ('n', 'c'), (n, 5)),))
    _nonzero('A', 'n', n)
    # 1/n * x[n, c] * x[n, c']
    result = x.T @ x  # [c, c']
    result.mul_(1 / n)
    return result


def Ar(x):
    """Ar[c, c']: compiled from linear_kfac.tnd:26.

        Ar = kfac(y, w, batch=n, approx=reduce)        # equal to A here

    Args:
        x: [n, c], sizes [n, 5]

    Returns:
        [c, c'], sizes [5, 5]
    """
    if not (isinstance(x, torch.Tensor) and x.dim() == 2 and x.layout == torch.strided and x.is_floating_point()):
        _check_arguments('Ar', (('x', x, ('n', 'c')),))
    n = x.shape[0]  # index n, bound at call time
    if x.shape != (n, 5):
        _check_shapes('Ar', (('x', x, ('n', 'c'), (n, 5)),))
    _nonzero('Ar', 'n', n)
    # 1/n * x[n, c] * x[n, c']
    result = x.T @ x  # [c, c']
    result.mul_(1 / n)
    return result


def B(grad_y):
    """B[d, d']: compiled from linear_kfac.tnd:27.

        B = kfac_grad(y, w, batch=n)                   # B(grad_y) -> [d, d']

    Args:
        grad_y: [n, d], sizes [n, 3]

    Returns:
        [d, d'], sizes [3, 3]
    """
    if not (
        isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 2
        and grad_y.layout == torch.strided
        and grad_y.is_floating_point()
    ):
        _check_arguments('B', (('grad_y', grad_y, ('n', 'd')),))
    n = grad_y.shape[0]  # index n, bound at call time
    if grad_y.shape != (n, 3):
        _check_shapes('B', (('grad_y', grad_y, ('n', 'd'), (n, 3)),))
    _nonzero('B', 'n', n)
    # 1/n * grad_y[n, d] * grad_y[n, d']
    result = grad_y.T @ grad_y  # [d, d']
    result.mul_(1 / n)
    return result


def Br(grad_y):
    """Br[d, d']: compiled from linear_kfac.tnd:28.

        Br = kfac_grad(y, w, batch=n, approx=reduce)   # equal to B here

    Args:
        grad_y: [n, d], sizes [n, 3]

    Returns:
        [d, d'], sizes [3, 3]
    """
    if not (
        isinstance(grad_y, torch.Tensor)
        and grad_y.dim() == 2
        and grad_y.layout == torch.strided
        and grad_y.is_floating_point()
    ):
        _check_arguments('Br', (('grad_y', grad_y, ('n', 'd')),))
    n = grad_y.shape[0]  # index n, bound at call time
    if grad_y.shape != (n, 3):
        _check_shapes('Br', (('grad_y', grad_y, ('n', 'd'), (n, 3)),))
    _nonzero('Br', 'n', n)
    # 1/n * grad_y[n, d] * grad_y[n, d']
    result = grad_y.T @ grad_y  # [d, d']
    result.mul_(1 / n)
    return result

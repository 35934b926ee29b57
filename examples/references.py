"""Plain-PyTorch references for the examples: what each generated function must equal.

`REFERENCES[file][function]` takes the same arguments, in the same order, as the function that
`tncompiler.load(file)` generates for that definition. `CALL_TIME_SIZES` gives the demo a size for
every index that a file declares without one (it is bound from the arguments at call time).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["CALL_TIME_SIZES", "REFERENCES", "Reference"]

Reference = Callable[..., torch.Tensor]

# Sizes for the indices declared without one, e.g. `index n` (the batch); i1, i2, c and d are conv2d_open.tnd's.
CALL_TIME_SIZES: dict[str, int] = {"n": 4, "batch": 3, "i1": 11, "i2": 8, "c": 3, "d": 5}


def conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv1d(x, w, b, stride=2, padding=1)


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b, stride=2, padding=1, groups=2)


def depthwise_conv2d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, padding=1, groups=x.shape[1])


def conv3d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv3d(x, w, b, stride=(1, 2, 2), padding=(1, 1, 0))


def transpose_conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)


def dilated_conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv1d(x, w, b, padding="same", dilation=2)


# --- derived diagrams: conv2d_vjp.tnd, conv2d_kfac.tnd, linear_kfac.tnd, and unfold3d.tnd ---------------------------

# conv2d_vjp.tnd: F.conv2d(x, w, b, stride=2, padding=1) with x [n, 3, 8, 6] and w [4, 3, 3, 3].
VJP_CONV = {"stride": 2, "padding": 1}


def conv2d_vjp_x(w: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """The input gradient of the convolution (a transpose convolution of grad_y); needs only x's shape."""
    return torch.nn.grad.conv2d_input((grad_y.shape[0], 3, 8, 6), w, grad_y, **VJP_CONV)


def conv2d_vjp_w(x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    return torch.nn.grad.conv2d_weight(x, (4, 3, 3, 3), grad_y, **VJP_CONV)


def conv2d_vjp_b(grad_y: torch.Tensor) -> torch.Tensor:
    return grad_y.sum(dim=(0, 2, 3))


def input_factor(unfolded: torch.Tensor, approx: str) -> torch.Tensor:
    """KFAC's input factor from the unfolded input [n, features, positions]: 1/n Σ u uᵀ over batch and
    positions (expand), or 1/(n P²) Σ over the batch of (Σ_positions u)(Σ_positions u)ᵀ (reduce)."""
    n, _, positions = unfolded.shape
    if approx == "expand":
        return torch.einsum("nip,njp->ij", unfolded, unfolded) / n
    summed = unfolded.sum(-1)
    return summed.T @ summed / (n * positions**2)


def gradient_factor(grad_y: torch.Tensor, approx: str) -> torch.Tensor:
    """KFAC's output-gradient factor from grad_y [n, features, positions...]; 1/n for both approximations."""
    g = grad_y.reshape(grad_y.shape[0], grad_y.shape[1], -1)  # [n, features, positions]: one position for a dense layer
    if approx == "expand":
        return torch.einsum("nip,njp->ij", g, g) / g.shape[0]
    summed = g.sum(-1)
    return summed.T @ summed / g.shape[0]


def conv2d_unfold(x: torch.Tensor) -> torch.Tensor:
    """conv2d_kfac.tnd's input unfolded (im2col): kernel (3, 2), stride (2, 1), padding (1, 0), dilation (1, 2)."""
    return F.unfold(x, (3, 2), dilation=(1, 2), padding=(1, 0), stride=(2, 1))


def unfold3d(x: torch.Tensor) -> torch.Tensor:
    """im2col in 3-d with Tensor.unfold: kernel (2, 3, 3), stride (1, 2, 2), padding (0, 1, 0), dilation (1, 1, 2)."""
    x = F.pad(x, (0, 0, 1, 1))  # the last dimension first: (i3 left, i3 right, i2 left, i2 right)
    for axis, (kernel, stride, dilation) in enumerate(((2, 1, 1), (3, 2, 1), (3, 2, 2)), start=2):
        x = x.unfold(axis, dilation * (kernel - 1) + 1, stride)[..., ::dilation]  # [..., o, ..., k]
    n, c, o1, o2, o3, k1, k2, k3 = x.shape
    return x.permute(0, 1, 5, 6, 7, 2, 3, 4).reshape(n, c * k1 * k2 * k3, o1 * o2 * o3)


def linear_vjp_x(w: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    return grad_y @ w


def linear_vjp_w(x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    return grad_y.T @ x


def kfac_functions(unfold: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Reference]:
    """A, Ar (from the input, unfolded by `unfold`) and B, Br (from grad_y), as conv2d_kfac.tnd names them."""
    return {
        "A": lambda x: input_factor(unfold(x), "expand"),
        "Ar": lambda x: input_factor(unfold(x), "reduce"),
        "B": lambda grad_y: gradient_factor(grad_y, "expand"),
        "Br": lambda grad_y: gradient_factor(grad_y, "reduce"),
    }


# --- conv2d_slice.tnd: slices of a grouped convolution and of its gradients -----------------------------------------

SLICE_CONV = {"stride": (2, 1), "padding": 1, "groups": 2}


def slice_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b, **SLICE_CONV)  # [n, (g d), o1, o2] = [n, 8, 6, 10]


def by_group(y: torch.Tensor) -> torch.Tensor:
    """[n, (g d), o1, o2] -> [n, g, d, o1, o2], so that d and g can be sliced apart."""
    return y.reshape(y.shape[0], 2, -1, *y.shape[2:])


def blank_rows(x: torch.Tensor, rows: int) -> torch.Tensor:
    """x with every image row from `rows` on set to zero."""
    out = x.clone()
    out[:, :, rows:] = 0
    return out


def slice_gx(w: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    return torch.nn.grad.conv2d_input((grad_y.shape[0], 6, 12, 10), w, grad_y, **SLICE_CONV)


def slice_gw(x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    return torch.nn.grad.conv2d_weight(x, (8, 3, 3, 3), grad_y, **SLICE_CONV)


SLICES: dict[str, Reference] = {
    "y": slice_conv,
    "top": lambda x, w, b: slice_conv(x, w, b)[:, :, 0:3],
    "even": lambda x, w, b: by_group(slice_conv(x, w, b))[:, :, 1:3, :, ::2].flatten(1, 2),
    "last": lambda x, w, b: by_group(slice_conv(x, w, b))[:, -1:, :, -2:].flatten(1, 2),
    "gw": slice_gw,
    "gw_rows": lambda x, grad_y: slice_gw(x, grad_y)[:, :, 1:],
    "gx": slice_gx,
    "gx_crop": lambda w, grad_y: slice_gx(w, grad_y)[:, :, 2:10, 2:8],
    "masked": lambda x, w: F.conv2d(blank_rows(x, 8), w, **SLICE_CONV),
}


# --- conv2d_sampled.tnd: tensor dropout in the weight gradient -------------------------------------------------------
#
# A sampled function draws its kept entries at random, so the demo calls it, and its reference, with generators
# seeded alike (the `generator=` keyword). The reference draws the same entries as the generated code does: entry
# j of the sampled index is kept iff the j-th number of torch.rand(size, generator=generator) is below p. Then it
# computes the estimate explicitly, by zeroing the dropped entries and scaling by 1/p.


def kept(size: int, p: float, generator: torch.Generator) -> torch.Tensor:
    """1 for each kept entry, 0 for each dropped one (float64)."""
    return (torch.rand(size, generator=generator) < p).double()


def sampled_gw(x: torch.Tensor, grad_y: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """gw with each output row o1 kept with probability 1/2: the kept rows of grad_y, times 2."""
    mask = kept(grad_y.shape[2], 0.5, generator).to(grad_y.dtype).view(1, 1, -1, 1)
    return torch.nn.grad.conv2d_weight(x, (4, 3, 3, 3), grad_y * mask / 0.5, padding=1)


def sampled_gw_batch(x: torch.Tensor, grad_y: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
    """gw with each example kept with probability 1/4: the kept examples, times 4."""
    mask = kept(x.shape[0], 0.25, generator).to(x.dtype).view(-1, 1, 1, 1)
    return torch.nn.grad.conv2d_weight(x * mask / 0.25, (4, 3, 3, 3), grad_y, padding=1)


SAMPLED: dict[str, Reference] = {
    "y": lambda x, w, b: F.conv2d(x, w, b, padding=1),
    "gw": sampled_gw,
    "gw_batch": sampled_gw_batch,
    # the exact VJPs that y_sampled_autograd uses for the arguments without a sampled one
    "_y_vjp_x": lambda w, grad_y: torch.nn.grad.conv2d_input((grad_y.shape[0], 3, 10, 8), w, grad_y, padding=1),
    "_y_vjp_b": lambda grad_y: grad_y.sum(dim=(0, 2, 3)),
}


# --- conv2d_jvp.tnd and conv2d_curvature.tnd: forward mode, Jacobians and curvature, with torch.func ----------------

JVP_CONV = {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}


def conv2d_jvp(x: torch.Tensor, w: torch.Tensor, tangent_x: torch.Tensor, tangent_w: torch.Tensor) -> torch.Tensor:
    """The JVP of F.conv2d in x and w together (the bias drops out of a derivative)."""
    return torch.func.jvp(lambda x, w: F.conv2d(x, w, **JVP_CONV), (x, w), (tangent_x, tangent_w))[1]


def conv2d_jvp_x(w: torch.Tensor, tangent_x: torch.Tensor) -> torch.Tensor:
    """The JVP in x alone; y is linear in x, so any point will do (zeros)."""
    return torch.func.jvp(lambda x: F.conv2d(x, w, **JVP_CONV), (torch.zeros_like(tangent_x),), (tangent_x,))[1]


def conv2d_jvp_w(x: torch.Tensor, tangent_w: torch.Tensor) -> torch.Tensor:
    return torch.func.jvp(lambda w: F.conv2d(x, w, **JVP_CONV), (torch.zeros_like(tangent_w),), (tangent_w,))[1]


CURVATURE_CONV = {"stride": (2, 1), "padding": 1}
CURVATURE_WEIGHT = (3, 2, 3, 3)  # [d, c, k1, k2]


def one_example(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The convolution of a single example x [c, i1, i2]."""
    return F.conv2d(x.unsqueeze(0), w, **CURVATURE_CONV).squeeze(0)


def per_sample_jacobian(x: torch.Tensor) -> torch.Tensor:
    """d y[n] / d w for each example: [n, d, o1, o2, d, c, k1, k2] (y is linear in w: taken at w = 0)."""
    w = torch.zeros(CURVATURE_WEIGHT, dtype=x.dtype)
    return torch.func.vmap(lambda xn: torch.func.jacrev(one_example)(w, xn))(x)


def per_sample_gradients(x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """grad_y[n] pulled back through example n's convolution: [n, d, c, k1, k2]."""
    w = torch.zeros(CURVATURE_WEIGHT, dtype=x.dtype)

    def one(xn: torch.Tensor, gn: torch.Tensor) -> torch.Tensor:
        return torch.func.vjp(lambda w: one_example(w, xn), w)[1](gn)[0]

    return torch.func.vmap(one)(x, grad_y)


def gram(x: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    flat = per_sample_gradients(x, grad_y).flatten(1)
    return flat @ flat.T


# conv2d_open.tnd: the same layer at the call-time sizes above (x [4, 3, 11, 8], w [5, 3, 3, 3]).
OPEN_CONV = {"stride": 2, "padding": 1}
OPEN = {
    "y": lambda x, w, b: F.conv2d(x, w, b, **OPEN_CONV),
    "gx": lambda w, grad_y: torch.nn.grad.conv2d_input((grad_y.shape[0], 3, 11, 8), w, grad_y, **OPEN_CONV),
    "gw": lambda x, grad_y: torch.nn.grad.conv2d_weight(x, (5, 3, 3, 3), grad_y, **OPEN_CONV),
    "Ar": lambda x: input_factor(F.unfold(x, (3, 3), **OPEN_CONV), "reduce"),
}


REFERENCES: dict[str, dict[str, Reference]] = {
    "conv1d.tnd": {"y": conv1d},
    "conv2d.tnd": {"y": conv2d},
    "depthwise_conv2d.tnd": {"y": depthwise_conv2d},
    "conv3d.tnd": {"y": conv3d},
    "transpose_conv2d.tnd": {"y": transpose_conv2d},
    "dilated_conv1d.tnd": {"y": dilated_conv1d},
    "matmul.tnd": {"c": torch.matmul, "bc": torch.matmul},
    "conv2d_vjp.tnd": {
        "y": lambda x, w, b: F.conv2d(x, w, b, **VJP_CONV),
        "gx": conv2d_vjp_x,
        "gw": conv2d_vjp_w,
        "gb": conv2d_vjp_b,
    },
    "conv2d_kfac.tnd": {
        "y": lambda x, w, b: F.conv2d(x, w, b, stride=(2, 1), padding=(1, 0), dilation=(1, 2)),
        **kfac_functions(conv2d_unfold),
    },
    "unfold3d.tnd": {"u": unfold3d},
    "linear_kfac.tnd": {
        "y": F.linear,
        "gx": linear_vjp_x,
        "gw": linear_vjp_w,
        "gb": lambda grad_y: grad_y.sum(0),
        **kfac_functions(lambda x: x.unsqueeze(-1)),  # a dense layer: one position
    },
    "conv2d_slice.tnd": SLICES,
    "conv2d_sampled.tnd": SAMPLED,
    "conv2d_jvp.tnd": {
        "y": lambda x, w, b: F.conv2d(x, w, b, **JVP_CONV),
        "tx": conv2d_jvp_x,
        "tw": conv2d_jvp_w,
        "t": conv2d_jvp,
    },
    "conv2d_open.tnd": OPEN,
    "conv2d_curvature.tnd": {
        "y": lambda x, w: F.conv2d(x, w, **CURVATURE_CONV),
        "J": per_sample_jacobian,
        "diag": lambda x: per_sample_jacobian(x).square().sum(dim=(0, 1, 2, 3)),
        "gn": per_sample_gradients,
        "G": gram,
    },
}

"""The loss's side of KFAC: the output cotangents its gradient factor is built from, and how they are scaled.

Every Fisher type is a sum of outer products of backpropagated output cotangents v: the gradient of the summed loss
at the labels (empirical), at labels drawn from the model's predictive distribution (mc), or the columns of a square
root of the summed loss's Hessian in the outputs (type-2). curvlinops' `KFACLinearOperator` then divides by the number
of terms a "mean" reduction averages over (and by the number of samples), which `normalizer` gives.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FISHERS", "Fisher", "LossSpec", "cotangents", "loss_spec"]

Fisher = Literal["empirical", "type-2", "mc"]
FISHERS: tuple[str, ...] = ("empirical", "type-2", "mc")
Kind = Literal["mse", "cross_entropy", "bce"]
Tensor = torch.Tensor


@dataclass(frozen=True)
class LossSpec:
    """A supported loss: its kind and reduction (and CrossEntropyLoss's ignore_index)."""

    kind: Kind
    reduction: Literal["mean", "sum"]
    ignore_index: int = -100

    def terms(self, output: Tensor) -> int:
        """How many terms a "mean" reduction divides by: one per label (cross-entropy) or per output entry."""
        return output.numel() // output.shape[1] if self.kind == "cross_entropy" else output.numel()

    def summed(self, output: Tensor, target: Tensor) -> Tensor:
        """The loss of these outputs with a "sum" reduction."""
        if self.kind == "mse":
            return F.mse_loss(output, target, reduction="sum")
        if self.kind == "bce":
            return F.binary_cross_entropy_with_logits(output, target, reduction="sum")
        return F.cross_entropy(output, target, reduction="sum", ignore_index=self.ignore_index)


def loss_spec(loss_func: nn.Module) -> LossSpec:
    """MSELoss, CrossEntropyLoss and BCEWithLogitsLoss with a "mean" or "sum" reduction, and no weights."""
    reduction = getattr(loss_func, "reduction", None)
    if reduction not in ("mean", "sum"):
        raise ValueError(f"tncompiler: the loss needs reduction 'mean' or 'sum', got {reduction!r} in {loss_func!r}")
    if isinstance(loss_func, nn.MSELoss):
        return LossSpec("mse", reduction)
    if isinstance(loss_func, nn.CrossEntropyLoss):
        if loss_func.weight is not None or loss_func.label_smoothing != 0.0:
            raise ValueError(f"tncompiler: {loss_func!r}: class weights and label smoothing are not supported")
        return LossSpec("cross_entropy", reduction, loss_func.ignore_index)
    if isinstance(loss_func, nn.BCEWithLogitsLoss):
        if loss_func.weight is not None or loss_func.pos_weight is not None:
            raise ValueError(f"tncompiler: {loss_func!r}: weights are not supported")
        return LossSpec("bce", reduction)
    raise TypeError(
        f"tncompiler: loss {loss_func!r} is not supported; supported: nn.MSELoss, nn.CrossEntropyLoss, "
        "nn.BCEWithLogitsLoss"
    )


def _rows(spec: LossSpec, output: Tensor) -> Tensor:
    """[M, C]: one row per loss term's outputs (cross-entropy's classes sit on axis 1, the others' on the last)."""
    if spec.kind == "cross_entropy":
        return output.movedim(1, -1).reshape(-1, output.shape[1])
    return output.reshape(-1, output.shape[-1])


def _unrows(spec: LossSpec, rows: Tensor, output: Tensor) -> Tensor:
    if spec.kind == "cross_entropy":
        return rows.reshape(*output.movedim(1, -1).shape).movedim(-1, 1)
    return rows.reshape(output.shape)


def _gradient(spec: LossSpec, output: Tensor, target: Tensor) -> Tensor:
    """The gradient of the summed loss in the outputs, at these labels."""
    leaf = output.detach().requires_grad_()
    with torch.enable_grad():
        (gradient,) = torch.autograd.grad(spec.summed(leaf, target), leaf)
    return gradient


def _draw(spec: LossSpec, rows: Tensor, generator: torch.Generator | None) -> Tensor:
    """Labels drawn from the predictive distribution the loss implies, as curvlinops draws them (per row)."""
    if spec.kind == "mse":  # a Gaussian of variance 1/2: the Hessian of (f - y)^2 is 2
        noise = torch.randn(rows.shape, generator=generator, device=rows.device, dtype=rows.dtype)
        return rows + math.sqrt(0.5) * noise
    if spec.kind == "bce":
        return rows.sigmoid().bernoulli(generator=generator)
    return rows.softmax(dim=1).multinomial(num_samples=1, generator=generator).squeeze(-1)


def _hessian_root(spec: LossSpec, rows: Tensor) -> Tensor:
    """[M, C, C]: per row, S with S Sᵀ = the Hessian of the summed loss in that row's outputs."""
    size = rows.shape[1]
    if spec.kind == "mse":
        eye = torch.eye(size, dtype=rows.dtype, device=rows.device)
        return math.sqrt(2.0) * eye.expand(rows.shape[0], size, size)
    if spec.kind == "bce":
        p = rows.sigmoid()
        return torch.diag_embed((p * (1 - p)).sqrt())
    p = rows.softmax(dim=1)  # diag(p) - p pᵀ = (diag(√p) - p √pᵀ)(diag(√p) - p √pᵀ)ᵀ
    root = p.sqrt()
    return torch.diag_embed(root) - p.unsqueeze(2) * root.unsqueeze(1)


def cotangents(
    spec: LossSpec,
    fisher: Fisher,
    output: Tensor,
    target: Tensor | None,
    mc_samples: int,
    generator: torch.Generator | None,
) -> Tensor:
    """[V, *output.shape]: the output cotangents whose backpropagated outer products, summed, make this Fisher's
    gradient factor (before the normalisation)."""
    output = output.detach()
    if fisher == "empirical":
        if target is None:
            raise ValueError("tncompiler: the empirical Fisher needs the labels")
        return _gradient(spec, output, target).unsqueeze(0)
    rows = _rows(spec, output)
    if fisher == "mc":  # the draws in curvlinops' order, then the gradients of all samples at once
        labels = torch.cat([_draw(spec, rows, generator) for _ in range(mc_samples)])
        gradients = _gradient(spec, rows.repeat(mc_samples, 1), labels).view(mc_samples, *rows.shape)
        return torch.stack([_unrows(spec, gradient, output) for gradient in gradients])
    if fisher == "type-2":
        root = _hessian_root(spec, rows)
        return torch.stack([_unrows(spec, root[:, :, column], output) for column in range(root.shape[2])])
    raise ValueError(f"tncompiler: unknown fisher {fisher!r}; choose one of {', '.join(FISHERS)}")

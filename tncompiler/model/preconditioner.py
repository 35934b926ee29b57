"""`KFAC`: a Kronecker-factored preconditioner in the style of KFAC-pytorch, on tnc's compiled factors.

    kfac = tncompiler.KFAC(model, loss_func, damping=1e-3, update_every=1, invert_every=10)
    loss_func(model(x), y).backward()
    kfac.step()          # every update_every steps: running factors; every invert_every: new inverses; then
    optimizer.step()     # the layers' gradients are already preconditioned

Hooks record each layer's input in the forward pass and, for the empirical Fisher, the gradient of its output in
the backward pass (rescaled from the loss's reduction to the summed loss); for "mc" and "type-2" the model's forward
hook backpropagates the sampled or Hessian-root cotangents to the layers' outputs at once. The batch's factors are
those of `kfac_factors` (across processes too), averaged into running factors with `factor_decay`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

from tncompiler.model.distributed import process_group_of, unwrap
from tncompiler.model.factors import Approx, FactorLayer, LayerCall, Sums, backpropagate, check_options, factor_layers
from tncompiler.model.layers import LayerSpec, bias_of, weight_of
from tncompiler.model.losses import Fisher, cotangents, loss_spec

__all__ = ["KFAC", "Inverse"]

Inverse = Literal["eigh", "cholesky"]
Tensor = torch.Tensor


@dataclass
class _Forward:
    """The calls of one recorded forward pass; `scale` turns the loss's output gradient into the summed loss's."""

    calls: list[LayerCall] = field(default_factory=list)
    examples: int = 0
    terms: int = 0
    scale: float = 1.0


class KFAC:
    """Preconditions the gradients of the model's nn.Linear, nn.Conv*d and nn.ConvTranspose*d layers with KFAC.

    Args:
        model: the model (or its DistributedDataParallel wrapper, whose process group is then used).
        loss_func: nn.CrossEntropyLoss, nn.MSELoss or nn.BCEWithLogitsLoss, the loss whose gradient is backpropagated
            (with the empirical Fisher, its output gradients are those of `loss_func(model(x), y)`).
        damping: λ: the eigh inverse applies (A ⊗ B + λ I)⁻¹; cholesky applies (A + π√λ I)⁻¹ ⊗ (B + √λ/π I)⁻¹
            with π² = (tr A / dim A) / (tr B / dim B) (Martens & Grosse's factored Tikhonov damping).
        factor_decay: the running factors are decay · old + (1 - decay) · the batch's (the first batch's as they are).
        update_every, invert_every: in steps; the first step does both.
        approx, fisher, mc_samples: as for `kfac_factors`; "mc" and "type-2" cost extra backward passes to the
            layers' outputs (not to the parameters), done in the forward pass of update steps.
        inverse: "eigh" (eigendecompositions) or "cholesky".
        kl_clip, lr: when kl_clip is set, the preconditioned gradients Δ are scaled by
            min(1, sqrt(kl_clip / (lr² Σ Δ·g))) as in KFAC-pytorch; lr is the optimizer's learning rate.
        process_group: a torch.distributed group whose ranks each see a share of every batch.
        generator: for the labels "mc" draws.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_func: nn.Module,
        *,
        damping: float = 1e-3,
        factor_decay: float = 0.95,
        update_every: int = 10,
        invert_every: int = 100,
        approx: Approx = "expand",
        fisher: Fisher = "empirical",
        mc_samples: int = 1,
        inverse: Inverse = "eigh",
        kl_clip: float | None = None,
        lr: float | None = None,
        process_group: Any = None,
        generator: torch.Generator | None = None,
    ) -> None:
        check_options(approx, fisher, mc_samples)
        _check_settings(damping, factor_decay, update_every, invert_every, inverse, kl_clip, lr)
        self.damping, self.factor_decay, self.kl_clip, self.lr = damping, factor_decay, kl_clip, lr
        self.update_every, self.invert_every, self.inverse = update_every, invert_every, inverse
        self.approx, self.fisher, self.mc_samples, self.generator = approx, fisher, mc_samples, generator
        self.loss = loss_spec(loss_func)
        self.process_group = process_group_of(model, process_group)
        self.layers = factor_layers(unwrap(model))
        self.steps = 0
        self.running: dict[str, tuple[Tensor, Tensor]] = {}  # with group axes
        self._inverses: dict[str, tuple[Tensor, ...]] = {}
        self._forwards: list[_Forward] = []
        self._current: _Forward | None = None
        self._handles = [layer.module.register_forward_hook(self._layer_hook(layer)) for layer in self.layers]
        self._handles.append(model.register_forward_pre_hook(self._before_model))
        self._handles.append(model.register_forward_hook(self._after_model))

    # --- recording -------------------------------------------------------------------------------------------------

    def _recording(self) -> bool:
        return self.steps % self.update_every == 0 and torch.is_grad_enabled()

    def _before_model(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        self._current = _Forward() if self._recording() else None

    def _layer_hook(self, layer: FactorLayer) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            forward = self._current
            if forward is None or not output.requires_grad:
                return
            call = LayerCall(layer, args[0].detach(), output.shape, get_gradient_edge(output))
            forward.calls.append(call)
            if self.fisher == "empirical":  # a tensor hook sees the gradient even if an in-place op follows
                output.register_hook(lambda gradient: call.gradients.append(gradient.detach()))  # type: ignore[no-untyped-call]

        return record

    def _after_model(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        forward, self._current = self._current, None
        if forward is None or not forward.calls:
            return
        forward.examples, forward.terms = output.shape[0], self.loss.terms(output)
        forward.scale = float(forward.terms) if self.loss.reduction == "mean" else 1.0
        if self.fisher != "empirical":
            self._backpropagate(forward, output)
        self._forwards.append(forward)

    def _backpropagate(self, forward: _Forward, output: Tensor) -> None:
        """The sampled or Hessian-root cotangents, to the layers' outputs; the graph is kept for the loss's backward."""
        forward.scale = 1.0
        vectors = cotangents(self.loss, self.fisher, output, None, self.mc_samples, self.generator)
        for gradients in backpropagate(output, [call.edge for call in forward.calls], vectors):
            for call, gradient in zip(forward.calls, gradients):
                if gradient is not None:
                    call.gradients.append(gradient)

    # --- the step --------------------------------------------------------------------------------------------------

    def step(self) -> None:
        """Update the factors (when due), invert them (when due), and precondition the layers' gradients in place."""
        if self.steps % self.update_every == 0:
            self._update()
        if self.running and (self.steps % self.invert_every == 0 or not self._inverses):
            self._invert()
        if self._inverses:
            self._precondition()
        self.steps += 1

    def _update(self) -> None:
        sums = Sums()
        for forward in self._forwards:
            if not any(call.gradients for call in forward.calls):
                continue  # a forward pass without a backward one (an evaluation with gradients on)
            for call in forward.calls:
                call.layer.add_inputs(sums, call.x, call.output_shape, self.approx)
                for gradient in call.gradients:
                    call.layer.add_gradients(sums, gradient, self.approx, rescale=forward.scale)
            sums.examples += forward.examples
            sums.terms += forward.terms
        self._forwards.clear()
        total = sums.reduced(self.layers, self.process_group)
        if total.examples == 0:
            return
        for name, (a, b) in total.factors(self.loss, self.fisher, self.mc_samples).items():
            if name in self.running:  # in place: decay · old + (1 - decay) · new
                old_a, old_b = self.running[name]
                old_a.mul_(self.factor_decay).add_(a, alpha=1 - self.factor_decay)
                old_b.mul_(self.factor_decay).add_(b, alpha=1 - self.factor_decay)
            else:
                self.running[name] = (a, b)

    def _invert(self) -> None:
        invert = _eigh if self.inverse == "eigh" else _cholesky
        self._inverses = {name: invert(a, b, self.damping) for name, (a, b) in self.running.items()}

    def _precondition(self) -> None:
        updates: list[tuple[FactorLayer, Tensor, Tensor]] = []
        for layer in self.layers:
            gradient = _gradient_matrix(layer)
            if gradient is None or layer.name not in self._inverses:
                continue
            inverse = self._inverses[layer.name]
            solve = _apply_eigh if self.inverse == "eigh" else _apply_cholesky
            updates.append((layer, gradient, solve(inverse, gradient.to(inverse[0].dtype), self.damping)))
        nu = self._kl_scale(updates)
        for layer, _, delta in updates:
            _write_gradient(layer, delta * nu)

    def _kl_scale(self, updates: list[tuple[FactorLayer, Tensor, Tensor]]) -> float:
        if self.kl_clip is None or not updates:
            return 1.0
        assert self.lr is not None
        total = sum(float((delta * gradient.to(delta.dtype)).sum()) for _, gradient, delta in updates)
        total *= self.lr**2
        return min(1.0, math.sqrt(self.kl_clip / total)) if total > 0 else 1.0

    # --- the rest --------------------------------------------------------------------------------------------------

    @property
    def factors(self) -> dict[str, tuple[Tensor, Tensor]]:
        """The running factors, laid out as `kfac_factors` returns them."""
        return {name: (a[0], b[0]) if a.shape[0] == 1 else (a, b) for name, (a, b) in self.running.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "running": dict(self.running)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps, self.running = int(state["steps"]), dict(state["running"])
        self._inverses = {}

    def remove(self) -> None:
        """Remove the hooks; the model is as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _check_settings(
    damping: float,
    factor_decay: float,
    update_every: int,
    invert_every: int,
    inverse: str,
    kl_clip: float | None,
    lr: float | None,
) -> None:
    if damping < 0 or not 0 <= factor_decay < 1:
        raise ValueError(
            f"tncompiler.KFAC: damping must be ≥ 0 and factor_decay in [0, 1), got {damping}, {factor_decay}"
        )
    if update_every < 1 or invert_every < 1:
        raise ValueError("tncompiler.KFAC: update_every and invert_every must be positive")
    if inverse not in ("eigh", "cholesky"):
        raise ValueError(f"tncompiler.KFAC: inverse must be 'eigh' or 'cholesky', got {inverse!r}")
    if kl_clip is not None and (lr is None or kl_clip <= 0):
        raise ValueError("tncompiler.KFAC: kl_clip needs the optimizer's learning rate lr= and must be positive")


# --- the algebra: blocks [g, ...] ------------------------------------------------------------------------------------


def _solver_dtype(factor: Tensor) -> torch.dtype:
    return torch.float32 if factor.dtype in (torch.float16, torch.bfloat16) else factor.dtype


def _eigh(a: Tensor, b: Tensor, damping: float) -> tuple[Tensor, ...]:
    values_a, vectors_a = torch.linalg.eigh(a.to(_solver_dtype(a)))
    values_b, vectors_b = torch.linalg.eigh(b.to(_solver_dtype(b)))
    return vectors_a, values_a.clamp(min=0), vectors_b, values_b.clamp(min=0)


def _apply_eigh(inverse: tuple[Tensor, ...], gradient: Tensor, damping: float) -> Tensor:
    """(A ⊗ B + λ I)⁻¹ applied to G [g, out, in]: in the eigenbases, a division by λ_B λ_Aᵀ + λ."""
    vectors_a, values_a, vectors_b, values_b = inverse
    rotated = vectors_b.transpose(1, 2) @ gradient @ vectors_a
    rotated = rotated / (values_b.unsqueeze(2) * values_a.unsqueeze(1) + damping)
    return vectors_b @ rotated @ vectors_a.transpose(1, 2)


def _cholesky(a: Tensor, b: Tensor, damping: float) -> tuple[Tensor, ...]:
    a, b = a.to(_solver_dtype(a)), b.to(_solver_dtype(b))
    mean_a = a.diagonal(dim1=1, dim2=2).mean(1)
    mean_b = b.diagonal(dim1=1, dim2=2).mean(1)
    pi = torch.where((mean_a > 0) & (mean_b > 0), (mean_a / mean_b.clamp(min=1e-30)).sqrt(), torch.ones_like(mean_a))
    root = math.sqrt(damping)
    return _spd_inverse(a, pi * root), _spd_inverse(b, root / pi)


def _spd_inverse(matrix: Tensor, shift: Tensor) -> Tensor:
    eye = torch.eye(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(matrix + shift.view(-1, 1, 1) * eye))


def _apply_cholesky(inverse: tuple[Tensor, ...], gradient: Tensor, damping: float) -> Tensor:
    inverse_a, inverse_b = inverse
    return inverse_b @ gradient @ inverse_a


# --- gradients as [g, out, in] matrices ------------------------------------------------------------------------------


def _gradient_matrix(layer: FactorLayer) -> Tensor | None:
    """The weight's gradient as [g, out, in] (a transpose convolution's weight is [(g c), d, k...]), with the bias's
    gradient as a last column; None when the weight has no gradient."""
    spec, weight, bias = layer.spec, weight_of(layer.module), bias_of(layer.module)
    if weight.grad is None:
        return None
    matrix = _weight_matrix(spec, weight.grad)
    if bias is not None:
        column = bias.grad if bias.grad is not None else torch.zeros_like(bias)
        matrix = torch.cat([matrix, column.reshape(spec.groups, spec.out_channels, 1)], dim=2)
    return matrix


def _weight_matrix(spec: LayerSpec, weight: Tensor) -> Tensor:
    g, c, d = spec.groups, spec.in_channels, spec.out_channels
    if spec.kind == "transpose":
        return weight.reshape(g, c, d, -1).transpose(1, 2).reshape(g, d, -1)
    return weight.reshape(g, d, -1)


def _write_gradient(layer: FactorLayer, matrix: Tensor) -> None:
    spec, weight, bias = layer.spec, weight_of(layer.module), bias_of(layer.module)
    if bias is not None:
        matrix, column = matrix[:, :, :-1], matrix[:, :, -1]
        if bias.grad is not None:
            bias.grad.copy_(column.reshape(bias.shape))
    assert weight.grad is not None
    if spec.kind == "transpose":
        g, c, d = spec.groups, spec.in_channels, spec.out_channels
        matrix = matrix.reshape(g, d, c, -1).transpose(1, 2)
    weight.grad.copy_(matrix.reshape(weight.shape))

"""`KFAC`: a Kronecker-factored preconditioner in the style of KFAC-pytorch, on tnc's compiled factors.

    kfac = tncompiler.KFAC(model, loss_func, damping=1e-3, update_every=1, invert_every=10)
    loss_func(model(x), y).backward()
    kfac.step()          # every update_every steps: running factors; every invert_every: new inverses; then
    optimizer.step()     # the layers' gradients are already preconditioned

Hooks record each layer's input in the forward pass and, for the empirical Fisher, the gradient of its output in
the backward pass (rescaled from the loss's reduction to the summed loss); for "mc" and "type-2" the model's forward
hook backpropagates the sampled or Hessian-root cotangents to the layers' outputs at once. The batch's factors are
those of `kfac_factors` (across processes too), averaged into running factors with `factor_decay`.

Only trained tensors are preconditioned, as `kfac_factors` covers them: a frozen weight or bias keeps its gradient
(None, usually) untouched, and which tensors are trained is read when the KFAC is made. A parametrized weight or
bias (`torch.nn.utils.parametrizations.weight_norm`, `spectral_norm`, ...) has no gradient of its own: a hook on its
parametrization collects the gradient of the tensor it computes (the one the factors belong to) over the backward
passes since the last step, and the preconditioned gradient is carried back through the parametrization (its
vector-Jacobian product at the current originals) into the gradients of its trained parameters. Without
preconditioning that gives back their own gradients. The collection starts afresh at a forward pass that finds
their gradients None (`zero_grad()`'s default), and after each step; with a process group it is averaged over the
ranks, as DistributedDataParallel averages the parameters' gradients.

Inverting never stops a run: a float32 eigendecomposition or Cholesky factorisation that fails or gives non-finite
values (a rank-deficient factor, from constant input channels or a batch smaller than the factor, can make LAPACK's
eigh fail to converge) is redone in float64, then in float64 with a jitter of 1e-6 · trace/size growing ×10 up to
1e-3 · trace/size (eigh takes it back off the eigenvalues), and as a last resort the factor is taken as the identity
times trace/size, damped as usual. The first fallback of a KFAC warns, naming the layers and what was done.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.utils.hooks import RemovableHandle

from tncompiler.model.distributed import all_reduce_sums, process_group_of, unwrap
from tncompiler.model.factors import (
    Approx,
    FactorLayer,
    LayerCall,
    Sums,
    backpropagate,
    check_options,
    factor_layers,
    no_layers,
)
from tncompiler.model.layers import LayerSpec, parametrization_of, stored_tensor
from tncompiler.model.losses import Fisher, cotangents, loss_spec

__all__ = ["KFAC", "Damping", "Inverse"]

Inverse = Literal["eigh", "cholesky"]
Damping = float | Literal["adaptive"] | tuple[Literal["adaptive"], float]
Tensor = torch.Tensor

DEFAULT_DAMPING = 1e-3  # λ of damping="adaptive"
LINALG_ERROR: type[Exception] = torch.linalg.LinAlgError  # type: ignore[attr-defined]  # not in torch's stubs
JITTERS = (1e-6, 1e-5, 1e-4, 1e-3)  # × trace/size, added in float64 when a plain float64 decomposition fails too


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
        damping: a number λ: the eigh inverse applies (A ⊗ B + λ I)⁻¹; cholesky applies (A + π√λ I)⁻¹ ⊗
            (B + √λ/π I)⁻¹ with π² = (tr A / dim A) / (tr B / dim B) (Martens & Grosse's factored Tikhonov, or π-,
            damping). "adaptive" (λ = 1e-3) or ("adaptive", λ): π-damping with λ for either inverse (cholesky
            always damps this way).
        factor_decay: the running factors are decay · old + (1 - decay) · the batch's (the first batch's as they are).
        update_every, invert_every: in steps; the first step does both.
        approx, fisher, mc_samples: as for `kfac_factors`; "mc" and "type-2" cost extra backward passes to the
            layers' outputs (not to the parameters), done in the forward pass of update steps.
        inverse: "eigh" (eigendecompositions) or "cholesky". Either falls back when float32 fails (the module
            docstring) and warns once; `fallbacks` holds, per layer, what the latest inversion did instead.
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
        damping: Damping = DEFAULT_DAMPING,
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
        self.damping, self.adaptive = _damping(damping)
        _check_settings(factor_decay, update_every, invert_every, inverse, kl_clip, lr)
        self.factor_decay, self.kl_clip, self.lr = factor_decay, kl_clip, lr
        self.update_every, self.invert_every, self.inverse = update_every, invert_every, inverse
        self.approx, self.fisher, self.mc_samples, self.generator = approx, fisher, mc_samples, generator
        self.loss = loss_spec(loss_func)
        self.process_group = process_group_of(model, process_group)
        self.layers = factor_layers(unwrap(model))
        if not self.layers:
            raise ValueError(no_layers("KFAC", unwrap(model)))
        self.steps = 0
        self.running: dict[str, tuple[Tensor, Tensor]] = {}  # with group axes
        self._inverses: dict[str, tuple[Tensor, ...]] = {}
        self.fallbacks: dict[str, str] = {}  # layer -> what its latest inversion did instead of float32's own
        self._warned = False
        self._forwards: list[_Forward] = []
        self._current: _Forward | None = None
        self._handles = [layer.module.register_forward_hook(self._layer_hook(layer)) for layer in self.layers]
        self._handles.append(model.register_forward_pre_hook(self._before_model))
        self._handles.append(model.register_forward_hook(self._after_model))
        self._tensors = {layer.name: _layer_gradients(layer) for layer in self.layers}

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
            self._average_collected()
            self._precondition()
        for tensor in self._trained_tensors():
            tensor.clear()
        self.steps += 1

    def _trained_tensors(self) -> list[_Gradient]:
        return [tensor for pair in self._tensors.values() for tensor in pair if tensor is not None]

    def _average_collected(self) -> None:
        """With a process group (DDP's), the parameters' gradients are averages over the ranks, but the gradients
        collected for parametrized tensors are each rank's own: they are averaged alike (zeros from a rank that
        collected none), so that every rank writes the same gradients."""
        collected = [tensor for tensor in self._trained_tensors() if isinstance(tensor, _ParametrizedGradient)]
        if self.process_group is None or not collected:
            return
        totals, _ = all_reduce_sums([tensor.collected() for tensor in collected], [], self.process_group)
        ranks = dist.get_world_size(self.process_group)
        for tensor, total in zip(collected, totals):
            tensor.total = total.div_(ranks)

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
        self._inverses, self.fallbacks = {}, {}
        for name, (a, b) in self.running.items():
            self._inverses[name], notes = invert(a, b, self.damping, self.adaptive)
            if notes:
                self.fallbacks[name] = "; ".join(notes)
        if self.fallbacks and not self._warned:
            self._warned = True  # once per KFAC: a factor that fails keeps failing, at every inversion
            warnings.warn(_fallback_message(self.inverse, self.fallbacks), RuntimeWarning, stacklevel=3)

    def _precondition(self) -> None:
        updates: list[tuple[FactorLayer, Tensor, Tensor]] = []
        for layer in self.layers:
            gradient = _gradient_matrix(layer.spec, *self._tensors[layer.name])
            if gradient is None or layer.name not in self._inverses:
                continue
            inverse = self._inverses[layer.name]
            solve = _apply_eigh if self.inverse == "eigh" else _apply_cholesky
            updates.append((layer, gradient, solve(inverse, gradient.to(inverse[0].dtype))))
        nu = self._kl_scale(updates)
        for layer, _, delta in updates:
            _write_gradient(layer.spec, *self._tensors[layer.name], delta * nu)

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
        for tensor in self._trained_tensors():
            tensor.remove()


def _damping(damping: Damping) -> tuple[float, bool]:
    """λ, and whether it is π-damped, from the `damping` argument."""
    if isinstance(damping, str) and damping == "adaptive":
        return DEFAULT_DAMPING, True
    value: object = damping
    adaptive = isinstance(damping, tuple) and len(damping) == 2 and damping[0] == "adaptive"
    if isinstance(damping, tuple) and adaptive:
        value = damping[1]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:  # NaN fails too
        raise ValueError(
            f"tncompiler.KFAC: damping must be a number ≥ 0, 'adaptive' or ('adaptive', λ ≥ 0), got {damping!r}"
        )
    return float(value), adaptive


def _check_settings(
    factor_decay: float,
    update_every: int,
    invert_every: int,
    inverse: str,
    kl_clip: float | None,
    lr: float | None,
) -> None:
    if not 0 <= factor_decay < 1:
        raise ValueError(f"tncompiler.KFAC: factor_decay must be in [0, 1), got {factor_decay}")
    if update_every < 1 or invert_every < 1:
        raise ValueError("tncompiler.KFAC: update_every and invert_every must be positive")
    if inverse not in ("eigh", "cholesky"):
        raise ValueError(f"tncompiler.KFAC: inverse must be 'eigh' or 'cholesky', got {inverse!r}")
    if kl_clip is not None and (lr is None or kl_clip <= 0):
        raise ValueError("tncompiler.KFAC: kl_clip needs the optimizer's learning rate lr= and must be positive")


# --- the algebra: blocks [g, ...] ------------------------------------------------------------------------------------


def _solver_dtype(factor: Tensor) -> torch.dtype:
    return torch.float32 if factor.dtype in (torch.float16, torch.bfloat16) else factor.dtype


def _pi(a: Tensor, b: Tensor) -> Tensor:
    """π per group: sqrt((tr A / dim A) / (tr B / dim B)), 1 where either mean is not positive and finite."""
    mean_a = a.diagonal(dim1=1, dim2=2).mean(1)
    mean_b = b.diagonal(dim1=1, dim2=2).mean(1)
    usable = (mean_a > 0) & (mean_b > 0) & mean_a.isfinite() & mean_b.isfinite()
    return torch.where(usable, (mean_a / mean_b.clamp(min=1e-30)).sqrt(), torch.ones_like(mean_a))


def _eigh(a: Tensor, b: Tensor, damping: float, adaptive: bool) -> tuple[tuple[Tensor, ...], list[str]]:
    """The eigenbases of A and B and the divisors of the rotated gradient, [g, out, in]; the fallbacks taken."""
    a, b = a.to(_solver_dtype(a)), b.to(_solver_dtype(b))
    values_a, vectors_a, note_a = _decompose(a)
    values_b, vectors_b, note_b = _decompose(b)
    if adaptive:  # (A + π√λ I) ⊗ (B + √λ/π I), in the eigenbases
        pi, root = _pi(a, b).unsqueeze(1), math.sqrt(damping)
        divisors = (values_b + root / pi).unsqueeze(2) * (values_a + pi * root).unsqueeze(1)
    else:  # A ⊗ B + λ I
        divisors = values_b.unsqueeze(2) * values_a.unsqueeze(1) + damping
    return (vectors_a, vectors_b, divisors), _notes(note_a, note_b)


def _apply_eigh(inverse: tuple[Tensor, ...], gradient: Tensor) -> Tensor:
    """The damped inverse applied to G [g, out, in]: in the eigenbases, a division."""
    vectors_a, vectors_b, divisors = inverse
    rotated = vectors_b.transpose(1, 2) @ gradient @ vectors_a
    return vectors_b @ (rotated / divisors) @ vectors_a.transpose(1, 2)


def _cholesky(a: Tensor, b: Tensor, damping: float, adaptive: bool) -> tuple[tuple[Tensor, ...], list[str]]:
    """(A + π√λ I)⁻¹ and (B + √λ/π I)⁻¹ (π-damped whether or not `adaptive`); the fallbacks taken."""
    a, b = a.to(_solver_dtype(a)), b.to(_solver_dtype(b))
    pi, root = _pi(a, b), math.sqrt(damping)
    inverse_a, note_a = _spd_inverse(a, pi * root)
    inverse_b, note_b = _spd_inverse(b, root / pi)
    return (inverse_a, inverse_b), _notes(note_a, note_b)


def _apply_cholesky(inverse: tuple[Tensor, ...], gradient: Tensor) -> Tensor:
    inverse_a, inverse_b = inverse
    return inverse_b @ gradient @ inverse_a


def _notes(note_a: str | None, note_b: str | None) -> list[str]:
    return [f"{factor}: {note}" for factor, note in (("A", note_a), ("B", note_b)) if note is not None]


def _fallback_message(inverse: str, fallbacks: dict[str, str]) -> str:
    layers = ", ".join(f"layer {name!r} ({notes})" for name, notes in fallbacks.items())
    return (
        f"tncompiler.KFAC: the {inverse} of a factor failed or was not finite (rank-deficient or "
        f"ill-conditioned); it fell back to: {layers}. This KFAC warns only once: its `fallbacks` attribute says "
        "what its latest inversion did."
    )


# --- falling back: float64, then a jitter, then the identity times trace/size ----------------------------------------


def _mean_eigenvalue(matrix: Tensor) -> Tensor:
    """tr / size per group, [g]; 1 where that is not finite (a factor with inf or NaN entries)."""
    mean = matrix.diagonal(dim1=1, dim2=2).mean(1)
    return torch.where(mean.isfinite(), mean, torch.ones_like(mean))


def _eye(matrix: Tensor) -> Tensor:
    return torch.eye(matrix.shape[1], dtype=matrix.dtype, device=matrix.device)


def _attempts(matrix: Tensor) -> Iterator[tuple[str | None, Tensor, Tensor]]:
    """(what is tried, the matrix to decompose, the jitter added, [g, 1]): the factor in its solver dtype, in
    float64, then in float64 with growing jitters (not for a non-finite factor, which no jitter helps)."""
    zero = matrix.new_zeros(matrix.shape[0], 1)
    yield None, matrix, zero
    double = matrix.double()
    if matrix.dtype != torch.float64:
        yield "float64", double, zero.double()
    if not bool(double.isfinite().all()):
        return
    scale = _mean_eigenvalue(double).abs().clamp(min=1e-30).unsqueeze(1)
    for factor in JITTERS:
        jitter = factor * scale
        yield f"float64 with a jitter of {factor:g}·trace/size", double + jitter.unsqueeze(2) * _eye(double), jitter


def _decompose(matrix: Tensor) -> tuple[Tensor, Tensor, str | None]:
    """Eigenvalues (clamped at 0) and eigenvectors of the symmetric factors [g, n, n], in the matrix's dtype, and
    the fallback that gave them (None: the first try). A jitter shifts the eigenvalues alone: it is taken off."""
    for note, candidate, jitter in _attempts(matrix):
        pair = _try_eigh(candidate)
        if pair is not None:
            values, vectors = pair
            return (values - jitter).clamp(min=0).to(matrix.dtype), vectors.to(matrix.dtype), note
    values = _mean_eigenvalue(matrix).clamp(min=0).unsqueeze(1).expand(-1, matrix.shape[1])
    return values.contiguous(), _eye(matrix).expand_as(matrix).contiguous(), "the identity times trace/size"


def _try_eigh(matrix: Tensor) -> tuple[Tensor, Tensor] | None:
    try:
        values, vectors = torch.linalg.eigh(matrix)
    except LINALG_ERROR:
        return None
    return (values, vectors) if bool(values.isfinite().all() & vectors.isfinite().all()) else None


def _spd_inverse(matrix: Tensor, shift: Tensor) -> tuple[Tensor, str | None]:
    """(M + shift I)⁻¹ per group by Cholesky, in the matrix's dtype, and the fallback that gave it (None: the
    first try); the last resort is the inverse of (trace/size + shift) I."""
    for note, candidate, _ in _attempts(matrix):
        inverse = _try_spd_inverse(candidate + shift.view(-1, 1, 1).to(candidate.dtype) * _eye(candidate))
        if inverse is not None and bool(inverse.to(matrix.dtype).isfinite().all()):  # float64's may overflow float32
            return inverse.to(matrix.dtype), note
    scale = 1 / (_mean_eigenvalue(matrix).clamp(min=0) + shift)
    return scale.view(-1, 1, 1) * _eye(matrix), "the identity times trace/size"


def _try_spd_inverse(matrix: Tensor) -> Tensor | None:
    factor, info = torch.linalg.cholesky_ex(matrix)
    if bool((info != 0).any()):
        return None
    inverse = torch.cholesky_inverse(factor)
    return inverse if bool(inverse.isfinite().all()) else None


# --- the gradients of a layer's tensors ------------------------------------------------------------------------------


class _Gradient:
    """How the preconditioner reads and writes the gradient of a plain trained parameter (a layer's weight or
    bias): its `.grad`, in place."""

    def __init__(self, module: nn.Module, name: str) -> None:
        self.module, self.name = module, name

    def _parameter(self) -> Tensor:
        parameter = getattr(self.module, self.name)
        assert isinstance(parameter, torch.Tensor)
        return parameter

    def read(self) -> Tensor | None:
        return self._parameter().grad

    def write(self, value: Tensor) -> None:
        gradient = self._parameter().grad
        if gradient is not None:
            gradient.copy_(value.reshape(gradient.shape))

    def clear(self) -> None:
        """Nothing to forget: autograd keeps a parameter's gradient."""

    def remove(self) -> None:
        """No hooks to remove."""


class _ParametrizedGradient(_Gradient):
    """A parametrized tensor's gradient: that of the tensor the parametrization computes, collected by a tensor hook
    on each tensor it computes with grad enabled; written back through the parametrization (the module docstring)."""

    def __init__(self, module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
        super().__init__(module, name)
        self.shape = shape  # of the computed tensor
        parametrization = parametrization_of(module, name)
        assert parametrization is not None
        self.parametrization = parametrization
        self.total: Tensor | None = None
        self._writing = False  # our own evaluation in `write` must not collect its cotangent
        self._handle: RemovableHandle = self.parametrization.register_forward_hook(self._computed)

    def _trained(self) -> list[Tensor]:
        return [p for p in self.parametrization.parameters() if p.requires_grad]

    def _computed(self, module: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
        if self._writing or not output.requires_grad:
            return
        if all(p.grad is None for p in self._trained()):  # a fresh start since zero_grad (no backward in between)
            self.total = None
        output.register_hook(self._collect)  # type: ignore[no-untyped-call]

    def _collect(self, gradient: Tensor) -> None:
        if self.total is None:
            self.total = gradient.detach().clone()
        else:
            self.total.add_(gradient.detach())

    def read(self) -> Tensor | None:
        return self.total

    def collected(self) -> Tensor:
        """The collected gradient, or zeros in the stored tensor's dtype and device when none was collected."""
        if self.total is not None:
            return self.total
        stored = stored_tensor(self.module, self.name)
        assert stored is not None
        return stored.new_zeros(self.shape)

    def write(self, value: Tensor) -> None:
        """The trained parameters' gradients become the vector-Jacobian product of the parametrization with `value`
        (those without a gradient are left alone, as a plain parameter's None gradient is)."""
        trained = [p for p in self._trained() if p.grad is not None]
        if not trained:
            return
        self._writing = True
        try:
            with torch.enable_grad(), _evaluating(self.parametrization):
                computed = self.parametrization()
            parts = torch.autograd.grad(
                computed, trained, value.reshape(computed.shape).to(computed.dtype), allow_unused=True
            )
        finally:
            self._writing = False
        for parameter, part in zip(trained, parts):
            assert parameter.grad is not None
            if part is None:  # a parameter the computed tensor does not depend on here
                parameter.grad.zero_()
            else:
                parameter.grad.copy_(part)

    def clear(self) -> None:
        self.total = None

    def remove(self) -> None:
        self._handle.remove()


@contextlib.contextmanager
def _evaluating(module: nn.Module) -> Iterator[None]:
    """The module in eval mode for the block, each submodule's mode restored after: spectral norm then computes its
    weight from the power-iteration vectors its last forward pass left, without advancing them, which is the weight
    (and the Jacobian) that pass used."""
    modes = [(part, part.training) for part in module.modules()]
    module.train(False)
    try:
        yield
    finally:
        for part, mode in modes:
            part.training = mode


def _tensor_gradient(module: nn.Module, name: str, trained: bool, shape: tuple[int, ...]) -> _Gradient | None:
    if not trained:
        return None
    if parametrization_of(module, name) is not None:
        return _ParametrizedGradient(module, name, shape)
    return _Gradient(module, name)


def _layer_gradients(layer: FactorLayer) -> tuple[_Gradient | None, _Gradient | None]:
    """The layer's weight and bias gradients, None for a frozen (or absent) one."""
    spec = layer.spec
    return (
        _tensor_gradient(layer.module, "weight", layer.trains_weight, _weight_shape(spec)),
        _tensor_gradient(layer.module, "bias", layer.trains_bias, (spec.groups * spec.out_channels,)),
    )


# --- gradients as [g, out, in] matrices ------------------------------------------------------------------------------


def _gradient_matrix(spec: LayerSpec, weight: _Gradient | None, bias: _Gradient | None) -> Tensor | None:
    """The trained weight's gradient as [g, out, in] (a transpose convolution's weight is [(g c), d, k...]), with a
    trained bias's gradient as a last column (zeros if it has none); None when the weight has no gradient (or, for a
    layer that trains its bias alone, the bias has none)."""
    columns: list[Tensor] = []
    if weight is not None:
        gradient = weight.read()
        if gradient is None:
            return None
        columns.append(_weight_matrix(spec, gradient))
    if bias is not None:
        column = bias.read()
        if column is None and not columns:
            return None
        shape = (spec.groups, spec.out_channels, 1)
        columns.append(column.reshape(shape) if column is not None else columns[0].new_zeros(shape))
    return torch.cat(columns, dim=2) if len(columns) > 1 else columns[0]


def _weight_matrix(spec: LayerSpec, weight: Tensor) -> Tensor:
    g, c, d = spec.groups, spec.in_channels, spec.out_channels
    if spec.kind == "transpose":
        return weight.reshape(g, c, d, -1).transpose(1, 2).reshape(g, d, -1)
    return weight.reshape(g, d, -1)


def _write_gradient(spec: LayerSpec, weight: _Gradient | None, bias: _Gradient | None, matrix: Tensor) -> None:
    """The inverse of `_gradient_matrix`: the columns back into the trained tensors' gradients."""
    if bias is not None:
        matrix, column = matrix[:, :, :-1], matrix[:, :, -1]
        bias.write(column.reshape(-1))
    if weight is None:
        return
    if spec.kind == "transpose":
        g, c, d = spec.groups, spec.in_channels, spec.out_channels
        matrix = matrix.reshape(g, d, c, -1).transpose(1, 2)
    weight.write(matrix.reshape(_weight_shape(spec)))


def _weight_shape(spec: LayerSpec) -> tuple[int, ...]:
    """PyTorch's layout of the weight: [d, c], [(g d), c, k...] or a transpose convolution's [(g c), d, k...]."""
    g, c, d = spec.groups, spec.in_channels, spec.out_channels
    if spec.kind == "linear":
        return (d, c)
    return ((g * c, d) if spec.kind == "transpose" else (g * d, c)) + spec.kernel

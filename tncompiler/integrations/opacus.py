"""tnc's compiled per-example gradients and gradient norms as Opacus' samplers, for DP-SGD.

    from tncompiler.integrations import opacus as tnc_opacus
    tnc_opacus.register()            # before or after PrivacyEngine.make_private: Opacus looks samplers up per call
    ...                              # DP-SGD as usual: grad_sample_mode="hooks" or "ghost"
    tnc_opacus.unregister()          # Opacus' own samplers again

Opacus (`pip install tncompiler[opacus]`) computes each example's gradient with a grad sampler per layer class,
`f(layer, activations, backprops) -> {parameter: [N, *parameter.shape]}`, and, for fast gradient clipping
(`grad_sample_mode="ghost"`), each example's gradient norm with a norm sampler, `f(...) -> {parameter: [N]}`. Both
get the backprops already scaled to each example's own loss (Opacus multiplies them by the batch size for a "mean"
loss), so a sampler scales nothing. `register()` installs, through Opacus' `register_grad_sampler` and
`register_norm_sampler` (the registries `GradSampleHooks.GRAD_SAMPLERS`, shared by `GradSampleModule` and its fast
gradient clipping subclass, and `GradSampleHooksFastGradientClipping.NORM_SAMPLERS`):

- grad samplers for nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d, grouped and depthwise too: the layer's compiled
  `batch_grad_w` and `batch_grad_b` (`tncompiler.model.curvature_text`: the weight's VJP without the sum over the
  batch, which the compiler lowers to the convolution-weight kernel grouped over the examples, never an unfold).
  Opacus' own conv sampler unfolds the input ([N, C·K, positions]); it has none for transpose convolutions, which it
  runs through torch.func instead.
- norm samplers for the same layers and nn.Linear: the square roots of the compiled squared norms, in the form
  `curvature_text.norm_form` says the compiler counted cheaper for the call's sizes: the per-example gradients
  squared (`batch_l2_w_per_example`), or Gram matrices of the input windows and of the output gradients
  (`window_gram`, `grad_gram`, then `batch_l2_w_gram`); the bias's `batch_l2_b`. Opacus has no norm sampler for
  convolutions (fast gradient clipping then builds their per-example gradients); its Linear one always takes the
  Gram route for a sequence input, 36x slower than tnc's choice for 512 positions of 64 features
  (`bench/opacus_step.py`).
- no grad sampler for nn.Linear: Opacus' is one einsum, the same contraction as tnc's compiled `batch_grad_w`, and
  measured alike (`bench/opacus_step.py`), so Opacus keeps it.

On the CPU a weight's quantities are computed a chunk of examples at a time (`_chunk`: about 1 MiB of per-example
gradients per call), which keeps the kernels' temporaries small. A layer's compiled module depends on its
hyper-parameters and on the spatial sizes of the call (the batch stays open); it is compiled on the first call of each
(tenths of a second), cached in memory and on disk (`tncompiler.model.cache`). A layer tnc cannot write (a
padding_mode other than "zeros", a subclass overriding forward) falls back to torch.func's per-example gradients, as
Opacus runs a layer it has no sampler for (Opacus' own conv sampler ignores padding_mode and gets a circular
padding's gradients wrong), and a Linear to Opacus' own norm sampler. An empty batch (Poisson sampling can draw one)
gets empty samples.

With fast gradient clipping, Opacus refuses a layer with a norm sampler that is called more than once per forward pass
("Parameter tying is not supported with Ghost Clipping"), as it refuses a reused nn.Linear: with norm samplers for the
convolutions too, a model that calls a convolution twice needs `register(norm_samplers=False)`, which keeps fast
gradient clipping on the grad samplers for those.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.grad_sample.grad_sample_module import GradSampleHooks
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (
    GradSampleHooksFastGradientClipping,
)
from opacus.grad_sample.linear import compute_linear_norm_sample
from opacus.grad_sample.utils import register_grad_sampler, register_norm_sampler
from torch import nn

from tncompiler.model.curvature_text import NormForm, curvature_functions, curvature_layout, norm_form
from tncompiler.model.layers import LayerSpec, spec_of

__all__ = ["GRAD_LAYERS", "NORM_LAYERS", "compute_grad_sample", "compute_norm_sample", "register", "registered",
           "unregister"]  # fmt: skip

Tensor = torch.Tensor

_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSES: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
GRAD_LAYERS: tuple[type[nn.Module], ...] = (*_CONVS, *_TRANSPOSES)
NORM_LAYERS: tuple[type[nn.Module], ...] = (*GRAD_LAYERS, nn.Linear)
_ROLES = (("weight", "w"), ("bias", "b"))
_CHUNK_BYTES = 2**20  # per-example weight gradients per compiled call on the CPU (`_chunk`)


def compute_grad_sample(
    layer: nn.Module, activations: Sequence[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Opacus' grad sampler signature: each example's gradient of the layer's trained weight and bias, [N, *shape],
    from the compiled `batch_grad_*` of the call's layout."""
    call = _call(layer, activations, backprops)
    if call is None:
        return _fallback_grads(layer, activations, backprops)
    return {p: call.grads(role) for p, role in _trained(layer)}


def compute_norm_sample(
    layer: nn.Module, activations: Sequence[Tensor], backprops: Tensor
) -> dict[nn.Parameter, Tensor]:
    """Opacus' norm sampler signature: the norm of each example's gradient of the layer's trained weight and bias,
    [N], from the compiled `batch_l2_*` of the call's layout (per-example or Gram route, as the compiler chose)."""
    call = _call(layer, activations, backprops)
    if call is None:
        return _fallback_norms(layer, activations, backprops)
    # the Gram route's sum of products can round a zero norm to a tiny negative number
    return {p: call.squared_norms(role).clamp_(min=0).sqrt_() for p, role in _trained(layer)}


def _trained(layer: nn.Module) -> list[tuple[nn.Parameter, str]]:
    """The layer's own weight and bias parameters that are trained, with their role in the compiled names."""
    found = []
    for name, role in _ROLES:
        parameter = layer._parameters.get(name)
        if parameter is not None and parameter.requires_grad:
            found.append((parameter, role))
    return found


@dataclass(frozen=True)
class _Compiled:
    """A layout's compiled module, and the form of the weight's squared norm the compiler counted cheaper."""

    functions: types.ModuleType
    form: NormForm


@dataclass(frozen=True)
class _Call:
    """One call's compiled functions and their arguments, laid out as the curvature text lays them out; the weight's
    quantities are computed `chunk` examples at a time (`_chunk`)."""

    compiled: _Compiled
    x: Tensor
    grad: Tensor
    chunk: int

    def slices(self) -> list[slice]:
        return [slice(start, start + self.chunk) for start in range(0, self.x.shape[0], self.chunk)]

    def grads(self, role: str) -> Tensor:
        functions = self.compiled.functions
        if role == "b":
            bias: Tensor = functions.batch_grad_b(self.grad)
            return bias
        slices, result = self.slices(), None
        for part in slices:
            found: Tensor = functions.batch_grad_w(self.x[part], self.grad[part])
            if len(slices) == 1:
                return found
            if result is None:
                result = found.new_empty((self.x.shape[0], *found.shape[1:]))
            result[part] = found
        assert result is not None
        return result

    def squared_norms(self, role: str) -> Tensor:
        if role == "b":
            bias: Tensor = self.compiled.functions.batch_l2_b(self.grad)
            return bias
        return torch.cat([self._weight_squared_norms(self.x[part], self.grad[part]) for part in self.slices()])

    def _weight_squared_norms(self, x: Tensor, grad: Tensor) -> Tensor:
        functions = self.compiled.functions
        if self.compiled.form == "gram":  # Σ over pairs of positions of the two Gram matrices' product
            gram: Tensor = functions.batch_l2_w_gram(functions.window_gram(x), functions.grad_gram(grad))
            return gram
        per_example: Tensor = functions.batch_l2_w_per_example(x, grad)
        return per_example


def _call(layer: nn.Module, activations: Sequence[Tensor], backprops: Tensor) -> _Call | None:
    """The call's compiled functions, or None where tnc cannot write the layer or the call (the fallbacks run)."""
    if not activations or not isinstance(activations[0], Tensor):
        return None
    x = activations[0].to(backprops.dtype)  # as Opacus' samplers do under mixed precision
    if x.shape[0] == 0 or x.shape[0] != backprops.shape[0]:
        return None
    try:
        spec = spec_of(layer)
    except (TypeError, ValueError):
        return None
    if spec.kind == "linear":
        if x.dim() < 2 or backprops.dim() != x.dim():
            return None
        if x.dim() > 3:  # the text's one positions axis holds all the extra axes
            x, backprops = x.flatten(1, -2), backprops.flatten(1, -2)
    elif x.dim() != spec.dims + 2 or backprops.dim() != x.dim():
        return None
    compiled = _compiled(spec, (1, *x.shape[1:]), (1, *backprops.shape[1:]))
    return _Call(compiled, x, backprops, _chunk(spec, x))


def _chunk(spec: LayerSpec, x: Tensor) -> int:
    """Examples per call of a weight's compiled function. On the CPU, as many as make _CHUNK_BYTES of per-example
    weight gradients: the kernels' temporaries (their blocked copies of the input, the output gradient and the
    result; a Gram route's windows) then stay that small and in cache, where a whole batch's cost up to three times
    the per-example gradients in memory, and time too (bench/opacus_step.py). Elsewhere, and for a linear layer
    without positions (one outer product per example, no temporaries), the whole batch at once."""
    examples = x.shape[0]
    if x.device.type != "cpu" or (spec.kind == "linear" and x.dim() == 2):
        return examples
    per_example = spec.groups * spec.in_channels * spec.out_channels * math.prod(spec.kernel) * x.element_size()
    return max(1, min(examples, _CHUNK_BYTES // per_example))


@functools.lru_cache(maxsize=512)
def _compiled(spec: LayerSpec, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> _Compiled:
    """Keyed by the spec and the shapes after the batch, which is all the layout reads: saves writing and hashing the
    text on every call (`load_compiled` would find the module all the same)."""
    layout = curvature_layout(spec, input_shape, output_shape)
    return _Compiled(curvature_functions(layout), norm_form(layout))


def _fallback_grads(layer: nn.Module, activations: Sequence[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    """torch.func's per-example gradients (what Opacus runs for a layer without a sampler); none for no examples."""
    if backprops.shape[0] == 0:  # Poisson sampling can draw an empty batch; torch.func's vmap refuses one
        return {p: backprops.new_zeros(0, *p.shape) for p, _ in _trained(layer)}
    result: dict[nn.Parameter, Tensor] = ft_compute_per_sample_gradient(layer, list(activations), backprops)
    return result


def _fallback_norms(layer: nn.Module, activations: Sequence[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    if isinstance(layer, nn.Linear) and backprops.shape[0] > 0:
        result: dict[nn.Parameter, Tensor] = compute_linear_norm_sample(layer, list(activations), backprops)
        return result
    grads = _fallback_grads(layer, activations, backprops)
    return {p: g.flatten(1).norm(2, dim=-1) for p, g in grads.items() if p.requires_grad}


# --- the registries ------------------------------------------------------------------------------------------------


_ABSENT = object()  # a layer class the registry had no entry for
Registry = dict[type[nn.Module], object]
# what register() replaced: (registry, layer class, the entry before or _ABSENT); None while not installed
_saved: list[tuple[Registry, type[nn.Module], object]] | None = None


def _registries() -> tuple[Registry, Registry]:
    grads: Registry = GradSampleHooks.GRAD_SAMPLERS
    norms: Registry = GradSampleHooksFastGradientClipping.NORM_SAMPLERS
    return grads, norms


def register(*, norm_samplers: bool = True) -> None:
    """Install tnc's grad samplers (GRAD_LAYERS) and, with `norm_samplers`, its norm samplers (NORM_LAYERS) into
    Opacus' registries; `unregister()` puts back what was there. Calling it again while installed changes nothing
    (call `unregister()` first to change `norm_samplers`)."""
    global _saved
    if _saved is not None:
        return
    grads, norms = _registries()
    wanted = [(grads, GRAD_LAYERS)] + ([(norms, NORM_LAYERS)] if norm_samplers else [])
    entries = [(registry, cls, registry.get(cls, _ABSENT)) for registry, classes in wanted for cls in classes]
    register_grad_sampler(list(GRAD_LAYERS))(compute_grad_sample)
    if norm_samplers:
        register_norm_sampler(list(NORM_LAYERS))(compute_norm_sample)
    _saved = entries


def unregister() -> None:
    """Put back the samplers `register()` replaced (an entry someone changed since is left as it is now); nothing
    when tnc's samplers are not installed."""
    global _saved
    if _saved is None:
        return
    ours = (compute_grad_sample, compute_norm_sample)
    for registry, cls, before in _saved:
        if registry.get(cls) not in ours:
            continue
        if before is _ABSENT:
            del registry[cls]
        else:
            registry[cls] = before
    _saved = None


def registered() -> bool:
    """Whether tnc's samplers are installed (by `register()`, not yet `unregister()`ed)."""
    return _saved is not None

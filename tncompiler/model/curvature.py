"""`curvature(model, loss_func, batch, quantities=...)`: BackPACK's first- and second-order quantities of every
trainable parameter, from one forward and one backward pass, the layers' from their compiled diagrams.

    batch_grad        [N, *p]  each example's gradient (BackPACK's BatchGrad: summed over the batch, the gradient)
    batch_l2          [N]      its squared norm (BatchL2Grad; exact for grouped layers, where BackPACK's is not)
    sum_grad_squared  p.shape  Σ_n of its square (SumGradSquared)
    variance          p.shape  sum_grad_squared / N - (gradient / N)² (Variance)
    diag_ggn_exact    p.shape  the GGN's diagonal, Σ_{v,n} (J_nᵀ s_v)² over the loss Hessian's square-root columns
    diag_ggn_mc       p.shape  the same over sampled columns (DiagGGNMC, `mc_samples` of them)

How: forward hooks record each call of an nn.Linear / nn.Conv*d / nn.ConvTranspose*d (its input, and a tensor hook on
its output catches the loss's gradient there during `loss.backward()`, which runs as the user's own would and leaves
`.grad` as it leaves it). For the GGN, the columns of the loss Hessian's square root (`curvature_loss`) are
backpropagated first through the model's own autograd graph to those outputs, and each batch of columns that arrives
is squared into the diagonals at once (`curvature_parts`). Each layer's quantities are its compiled curvature
diagrams (`curvature_text`) of input, output gradient and columns. A parameter a layer holds that is called more than
once (or shared by several layers) sums its calls' per-example gradients and rows first (the squares are of the sums).
Every other trainable parameter, and a layer parameter whose layer is never called (its weight read elsewhere), gets
its rows through `torch.func` (`curvature_func`). A parameter used both by its layer's forward and elsewhere is not
seen elsewhere: tnc cannot know; give such a model's tied parameter to a module that is not a supported layer.

A module that mixes the examples of a batch (a BatchNorm in training mode, or one without running statistics) makes
per-example quantities meaningless: refused, naming it. With a process group, each rank passes its share: the sums
(sum_grad_squared, variance, the GGN diagonals) are of all the data, scaled as one process with the whole batch
would scale them; batch_grad and batch_l2 stay per rank (they are per example) and are scaled as the rank's own loss.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from tncompiler.model.curvature_loss import exact_columns, sampled_columns
from tncompiler.model.curvature_parts import GGN, Counts, LayerCall, Parts, Plan, add_func_columns, plan
from tncompiler.model.distributed import all_reduce_sums, process_group_of, uncompiled, unwrap
from tncompiler.model.layers import SUPPORTED, LayerSpec, spec_of
from tncompiler.model.losses import LossSpec, loss_spec

__all__ = ["QUANTITIES", "curvature"]

Tensor = torch.Tensor
QUANTITIES: tuple[str, ...] = (
    "batch_grad",
    "batch_l2",
    "sum_grad_squared",
    "variance",
    "diag_ggn_exact",
    "diag_ggn_mc",
)
_CHUNK = 32  # columns per vectorised backward pass (not on the CPU: `_column_batches`)


class _Recorder:
    """Forward hooks on the layers; `active` is off while torch.func runs the model again, `capturing` on only in the
    loss's backward pass (the columns' backward passes reach the same outputs)."""

    def __init__(self, layers: Sequence[tuple[str, nn.Module, LayerSpec]]) -> None:
        self.calls: list[LayerCall] = []
        self.output: _Output | None = None
        self.active, self.capturing = True, False
        self._handles = [m.register_forward_hook(self._hook(n, m, s)) for n, m, s in layers]

    def _hook(self, name: str, module: nn.Module, spec: LayerSpec) -> Any:
        def record(_: nn.Module, args: tuple[Any, ...], output: Tensor) -> None:
            if not self.active or not output.requires_grad:
                return  # a forward without gradients gives the parameters none
            call = LayerCall(name, module, spec, args[0].detach(), output.shape, get_gradient_edge(output))
            output.register_hook(self.catch(call))  # type: ignore[no-untyped-call]
            self.calls.append(call)

        return record

    def catch(self, holder: LayerCall | _Output) -> Any:
        def hook(grad: Tensor) -> None:
            if self.capturing:
                holder.grad = grad if holder.grad is None else holder.grad + grad

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


@dataclass
class _Output:
    """The loss's gradient at the model's output (for the parameters torch.func covers)."""

    grad: Tensor | None = None


def curvature(
    model: nn.Module,
    loss_func: nn.Module,
    batch: tuple[Any, Tensor],
    *,
    quantities: Iterable[str],
    mc_samples: int = 1,
    generator: torch.Generator | None = None,
    process_group: Any = None,
) -> dict[str, dict[str, Tensor]]:
    """{quantity: {parameter name: tensor}} for every trainable parameter of the model (named as in
    `model.named_parameters()`), from one forward and one backward pass on `batch = (x, y)` (x a tensor or a tuple of
    positional inputs). Scaled as BackPACK's extensions for the same loss (MSELoss, CrossEntropyLoss,
    BCEWithLogitsLoss; "mean" or "sum"). `mc_samples` and `generator` are diag_ggn_mc's draws. The module docstring
    says what each quantity is, and how a process group and shared parameters are handled."""
    wanted = _wanted(quantities)
    if isinstance(mc_samples, bool) or not isinstance(mc_samples, int) or mc_samples < 1:
        raise ValueError(f"tncompiler.curvature: mc_samples must be a positive integer, got {mc_samples!r}")
    spec = loss_spec(loss_func)
    model = uncompiled(model)  # named as the model it compiles; its eager forward records the layers' calls
    group = process_group_of(model, process_group)
    inner = unwrap(model)
    _refuse_mixing(inner)
    inputs, target = _unpack(batch)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    recorder = _Recorder(_layers(inner))
    try:
        with torch.enable_grad():
            result = model(*inputs)
            if not isinstance(result, Tensor):
                raise ValueError(f"tncompiler.curvature: the model returns a {type(result).__name__}, not a tensor")
            counts = _count(spec, result, group)
            found = plan(params, inner, recorder.calls, counts)
            recorder.active = False
            output = _backward(found, loss_func(result, target), result, spec, wanted, mc_samples, generator, recorder)
        with torch.no_grad():  # torch.func's transforms differentiate inside it all the same
            for quantity, columns in output.items():
                add_func_columns(found, inner, inputs, quantity, columns)
            parts = found.parts(wanted, inner, inputs, recorder.output.grad if recorder.output else None)
            return _finish(parts, counts, wanted, group)
    finally:
        recorder.remove()


def _wanted(quantities: Iterable[str]) -> tuple[str, ...]:
    chosen = (quantities,) if isinstance(quantities, str) else tuple(quantities)
    known = ", ".join(map(repr, QUANTITIES))
    for quantity in chosen:
        if quantity not in QUANTITIES:
            raise ValueError(f"tncompiler.curvature: unknown quantity {quantity!r}; known: {known}")
    if not chosen:
        raise ValueError(f"tncompiler.curvature: no quantity asked for; known: {known}")
    return tuple(dict.fromkeys(chosen))


def _refuse_mixing(model: nn.Module) -> None:
    """A BatchNorm normalising by the batch's own statistics makes every example's output depend on the others."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None):
            why = "is in training mode" if module.training else "keeps no running statistics"
            raise ValueError(
                f"tncompiler.curvature: module {name!r} ({module!r}) {why}, so it normalises each example by "
                "statistics of the whole batch and per-example quantities are meaningless; put it in eval mode "
                "(model.eval()) with running statistics"
            )


def _unpack(batch: tuple[Any, Tensor]) -> tuple[tuple[Any, ...], Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise ValueError("tncompiler.curvature: batch must be a pair (x, y), x a tensor or a tuple of tensors")
    x, target = batch
    return (tuple(x) if isinstance(x, (tuple, list)) else (x,)), target


def _layers(model: nn.Module) -> list[tuple[str, nn.Module, LayerSpec]]:
    """The layers whose own weight or bias is a trainable parameter (not a parametrization's result) and whose text
    tnc writes; any other (a circular padding, an overridden forward) is left to torch.func."""
    found = []
    for name, module in model.named_modules():
        if not isinstance(module, SUPPORTED):
            continue
        if not any(p is not None and p.requires_grad for p in (module._parameters.get(r) for r in ("weight", "bias"))):
            continue
        try:
            found.append((name, module, spec_of(module, name)))
        except (TypeError, ValueError):
            continue
    return found


def _count(spec: LossSpec, output: Tensor, group: Any) -> Counts:
    """This rank's examples and loss terms, and all ranks' (on the output's device: NCCL reduces CUDA tensors only)."""
    examples, terms = output.shape[0], float(spec.terms(output))
    all_examples, all_terms = float(examples), terms
    if group is not None:
        totals = torch.tensor([all_examples, all_terms], dtype=torch.float64, device=output.device)
        dist.all_reduce(totals, group=group)
        all_examples, all_terms = totals.tolist()
    rescale = terms / all_terms if spec.reduction == "mean" and all_terms else 1.0
    return Counts(examples, all_examples, all_terms, rescale)


def _backward(
    found: Plan,
    loss: Tensor,
    output: Tensor,
    spec: LossSpec,
    wanted: tuple[str, ...],
    mc_samples: int,
    generator: torch.Generator | None,
    recorder: _Recorder,
) -> dict[str, Tensor]:
    """The columns' backward passes (squared into the layer parameters' diagonals as they arrive), then the loss's
    own backward pass; the columns at the output, for the parameters torch.func covers."""
    at_output = {}
    for quantity in (q for q in GGN if q in wanted):
        if quantity == "diag_ggn_exact":
            columns = exact_columns(spec, output, found.counts.all_terms)
        else:
            columns = sampled_columns(spec, output, found.counts.all_terms, mc_samples, generator)
        at_output[quantity] = columns
        for batch in _column_batches(output, [call.edge for call in found.calls], columns):
            found.add_columns(quantity, batch)
    recorder.output = _Output()
    if output.requires_grad:
        output.register_hook(recorder.catch(recorder.output))  # type: ignore[no-untyped-call]
    recorder.capturing = True
    try:
        loss.backward()  # type: ignore[no-untyped-call]
    finally:
        recorder.capturing = False
    return at_output


def _column_batches(
    output: Tensor, edges: list[GradientEdge], columns: Tensor, batched: bool | None = None
) -> Iterator[list[Tensor | None]]:
    """The columns at every edge, a batch [v, N, ...] at a time, through the model's autograd graph: on a GPU as
    batches of cotangents (`is_grads_batched`, `_CHUNK` at a time), on the CPU one backward pass per column, which
    measured 1.5-2.5x faster there (a CIFAR CNN at batch 64 and 256, one thread: vmap's rules for ReLU and
    max-pooling backward copy and stack, and pooling has none), and whose single columns the diagrams also square
    faster than a stack of them. `batched` overrides the choice."""
    if not edges or not output.requires_grad:
        return
    batched = columns.device.type != "cpu" if batched is None else batched
    for part in torch.split(columns, _CHUNK if batched else 1):
        gradients = torch.autograd.grad(
            output, edges, part if batched else part[0], retain_graph=True, allow_unused=True,
            is_grads_batched=batched,
        )  # fmt: skip
        yield [None if g is None else (g if batched else g.unsqueeze(0)) for g in gradients]


def _finish(
    parts: dict[str, Parts], counts: Counts, wanted: tuple[str, ...], group: Any
) -> dict[str, dict[str, Tensor]]:
    """The sums over the ranks, then the variance from them; {quantity: {parameter name: tensor}}."""
    keys = [(name, key) for name, part in parts.items() for key in _sums(part)]
    reduced, _ = all_reduce_sums([_field(parts[name], key) for name, key in keys], [], group)
    for (name, key), tensor in zip(keys, reduced):
        _set_field(parts[name], key, tensor)
    return {quantity: {name: _quantity(part, quantity, counts.all_examples) for name, part in parts.items()}
            for quantity in wanted}  # fmt: skip


def _sums(part: Parts) -> list[str]:
    """The fields of a part that are sums over the data (reduced over the ranks)."""
    return [key for key in ("squares", "gradient") if getattr(part, key) is not None] + list(part.diagonals)


def _field(part: Parts, key: str) -> Tensor:
    value = part.diagonals[key] if key in GGN else getattr(part, key)
    assert isinstance(value, Tensor)
    return value


def _set_field(part: Parts, key: str, value: Tensor) -> None:
    if key in GGN:
        part.diagonals[key] = value
    else:
        setattr(part, key, value)


def _quantity(part: Parts, quantity: str, examples: float) -> Tensor:
    if quantity == "variance":
        assert part.squares is not None and part.gradient is not None
        return part.squares / examples - (part.gradient / examples).square()
    value = {"batch_grad": part.batch_grad, "batch_l2": part.batch_l2, "sum_grad_squared": part.squares}.get(quantity)
    return part.diagonals[quantity] if value is None else value

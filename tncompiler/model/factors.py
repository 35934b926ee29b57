"""KFAC's Kronecker factors of a whole model, from each layer's compiled functions, scaled as curvlinops scales them.

For a layer with input x and backpropagated output cotangents ĝ, curvlinops' `KFACLinearOperator` (with the bias
folded into the input factor, `separate_weight_and_bias=False`) has

    A = 1/N · Σ over the data of [ū; 1][ū; 1]ᵀ,   B = 1/(S·M) · Σ over the data and the cotangents of ḡ ḡᵀ

where, per example, expand takes ū, ḡ per position (A divided by the number of positions P as well) and reduce
takes ū the mean over positions and ḡ the sum; N is the number of examples, M the number of Monte-Carlo samples,
and S the number of terms a "mean" reduction averages over (1 for "sum"). tnc's `kfac_expand(x)` is
1/n · Σ_{n,positions} u uᵀ and `kfac_reduce(x)` is 1/(n P²) · Σ_n (Σ_positions u)(Σ_positions u)ᵀ, so a batch of n
adds n/P · kfac_expand(x) or n · kfac_reduce(x); `unfold_sum(x)/P` is the bias's row. Grouped layers keep one block
per group, [g, in, in] and [g, out, out], where curvlinops averages the groups' inputs into one factor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from tncompiler.model.distributed import all_reduce_sums, process_group_of, unwrap
from tncompiler.model.layers import LayerSpec, compile_layer, spec_of, supported_layers, weight_of, with_sizes
from tncompiler.model.losses import FISHERS, Fisher, LossSpec, cotangents, loss_spec

__all__ = ["Approx", "FactorLayer", "Sums", "check_options", "kfac_factors"]

Approx = Literal["expand", "reduce"]
Tensor = torch.Tensor


class FactorLayer:
    """One layer's contributions to the factor sums, from its compiled functions; blocks carry a group axis."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name, self.module = name, module
        self.spec: LayerSpec = spec_of(module, name)
        self.functions = compile_layer(self.spec)

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of A (the bias's row included) and B, with their group axis."""
        spec = self.spec
        features = spec.in_channels * math.prod(spec.kernel) + int(spec.bias)
        return (spec.groups, features, features), (spec.groups, spec.out_channels, spec.out_channels)

    def input_sum(self, x: Tensor, output_shape: torch.Size, approx: Approx) -> Tensor:
        """Σ over this batch of [ū; 1][ū; 1]ᵀ."""
        x = x.detach()
        n = x.shape[0]
        if self.spec.kind == "linear":
            x, positions = x.reshape(-1, x.shape[-1]), x[0].numel() // x.shape[-1]
            sizes: dict[str, int] = {}
        else:
            positions, sizes = math.prod(output_shape[2:]), self.spec.sizes(x)
        if approx == "expand":  # kfac_expand divides by the rows it is given: n, or n·positions for a linear layer
            weight = x.shape[0] * with_sizes(self.functions.kfac_expand, sizes)(x) / positions
        elif self.spec.kind == "linear":  # reduce: the positions are summed first, here by hand
            summed = x.reshape(n, positions, -1).sum(1)
            weight = n * self.functions.kfac_reduce(summed) / positions**2
        else:
            weight = n * with_sizes(self.functions.kfac_reduce, sizes)(x)
        weight = _grouped(weight, self.spec.groups)
        if not self.spec.bias:
            return weight
        row = _grouped(with_sizes(self.functions.unfold_sum, sizes)(x), self.spec.groups, matrix=False) / positions
        return _fold_bias(weight, row, n)

    def gradient_sum(self, gradient: Tensor, approx: Approx) -> Tensor:
        """Σ over this batch of ḡ ḡᵀ, for one backpropagated cotangent."""
        n = gradient.shape[0]
        if self.spec.kind == "linear":
            rows = gradient.reshape(-1, gradient.shape[-1])
            if approx == "expand":
                return _grouped(rows.shape[0] * self.functions.kfac_grad_expand(rows), 1)
            summed = gradient.reshape(n, -1, gradient.shape[-1]).sum(1)
            return _grouped(n * self.functions.kfac_grad_reduce(summed), 1)
        function = self.functions.kfac_grad_expand if approx == "expand" else self.functions.kfac_grad_reduce
        return _grouped(n * function(gradient), self.spec.groups)


def _grouped(factor: Tensor, groups: int, matrix: bool = True) -> Tensor:
    """With a leading group axis (tnc leaves it out when there is one group)."""
    return factor if factor.dim() == (3 if matrix else 2) else factor.unsqueeze(0)


def _fold_bias(weight: Tensor, row: Tensor, count: int) -> Tensor:
    """[[A, r], [rᵀ, count]] per group: the input factor of the weight and the bias together."""
    corner = torch.full((weight.shape[0], 1, 1), float(count), dtype=weight.dtype, device=weight.device)
    top = torch.cat([weight, row.unsqueeze(2)], dim=2)
    bottom = torch.cat([row.unsqueeze(1), corner], dim=2)
    return torch.cat([top, bottom], dim=1)


@dataclass
class Sums:
    """The factor sums of each layer and the counts they are normalised by: examples and loss terms."""

    inputs: dict[str, Tensor] = field(default_factory=dict)
    gradients: dict[str, Tensor] = field(default_factory=dict)
    examples: float = 0.0
    terms: float = 0.0

    @classmethod
    def zeros(cls, layers: Sequence[FactorLayer]) -> Sums:
        """Zero sums in each layer's weight dtype and device, so every rank reduces the same tensors."""
        sums = cls()
        for layer in layers:
            weight = weight_of(layer.module)
            a_shape, b_shape = layer.shapes()
            sums.inputs[layer.name] = torch.zeros(a_shape, dtype=weight.dtype, device=weight.device)
            sums.gradients[layer.name] = torch.zeros(b_shape, dtype=weight.dtype, device=weight.device)
        return sums

    def reduced(self, process_group: Any) -> Sums:
        """The sums over the ranks of the group (the same on every rank)."""
        names = list(self.inputs)
        tensors = [self.inputs[name] for name in names] + [self.gradients[name] for name in names]
        totals, (examples, terms) = all_reduce_sums(tensors, [self.examples, self.terms], process_group)
        count = len(names)
        return Sums(dict(zip(names, totals[:count])), dict(zip(names, totals[count:])), examples, terms)

    def factors(self, spec: LossSpec, fisher: Fisher, mc_samples: int) -> dict[str, tuple[Tensor, Tensor]]:
        """A = Σ/N and B = Σ/(S·M), with their group axes."""
        if self.examples == 0:
            raise ValueError("tncompiler: no data: the factors are averages over the examples")
        scale = (self.terms if spec.reduction == "mean" else 1.0) * (mc_samples if fisher == "mc" else 1)
        return {name: (self.inputs[name] / self.examples, self.gradients[name] / scale) for name in self.inputs}


def check_options(approx: str, fisher: str, mc_samples: int) -> None:
    if approx not in ("expand", "reduce"):
        raise ValueError(f"tncompiler: unknown approx {approx!r}; choose 'expand' or 'reduce'")
    if fisher not in FISHERS:
        raise ValueError(f"tncompiler: unknown fisher {fisher!r}; choose one of {', '.join(map(repr, FISHERS))}")
    if mc_samples < 1 or (fisher != "mc" and mc_samples != 1):
        raise ValueError(f"tncompiler: mc_samples={mc_samples}: it must be 1, or any positive number with fisher='mc'")


@dataclass
class _Call:
    """One call of a layer in a forward pass: its input, its output's shape and the gradient edge of its output."""

    layer: FactorLayer
    x: Tensor
    output_shape: torch.Size
    edge: GradientEdge


class Recorder:
    """Forward hooks that record each call of the layers; a removable context manager."""

    def __init__(self, layers: Sequence[FactorLayer]) -> None:
        self.calls: list[_Call] = []
        self._handles = [layer.module.register_forward_hook(self._hook(layer)) for layer in layers]

    def _hook(self, layer: FactorLayer) -> Any:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if not output.requires_grad:
                raise ValueError(
                    f"tncompiler: the output of layer {layer.name!r} does not require grad, so no gradient reaches it "
                    "(run the model with gradients enabled and the layer's weight trainable)"
                )
            self.calls.append(_Call(layer, args[0].detach(), output.shape, get_gradient_edge(output)))

        return record

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def accumulate(
    sums: Sums,
    calls: Sequence[_Call],
    output: Tensor,
    target: Tensor | None,
    spec: LossSpec,
    approx: Approx,
    fisher: Fisher,
    mc_samples: int,
    generator: torch.Generator | None,
) -> None:
    """Add one forward pass's contributions: its layers' input sums, and for each cotangent of the output the
    gradient sums of the layers' outputs (one backward pass to those outputs, none to the parameters)."""
    for call in calls:
        sums.inputs[call.layer.name] += call.layer.input_sum(call.x, call.output_shape, approx).to(
            sums.inputs[call.layer.name].dtype
        )
    vectors = cotangents(spec, fisher, output, target, mc_samples, generator)
    for call, gradient in zip(calls, backpropagate(output, [call.edge for call in calls], vectors)):
        if gradient is not None:
            total = sums.gradients[call.layer.name]
            total += call.layer.gradient_sum(gradient, approx).to(total.dtype)
    sums.examples += output.shape[0]
    sums.terms += spec.terms(output)


def backpropagate(output: Tensor, edges: list[GradientEdge], vectors: Tensor, chunk: int = 32) -> list[Tensor | None]:
    """The gradients at the edges of `output` against each of `vectors` [V, *output.shape], the V results of a layer
    stacked along its batch axis ([V·n, ...], which the factor sums treat as more examples). Chunks of vectors go
    through one vectorised backward pass each (type-2 needs one per class, mc one per sample); the graph is kept."""
    found: list[list[Tensor]] = [[] for _ in edges]
    for part in torch.split(vectors, chunk):
        gradients: Sequence[Tensor | None]
        try:
            gradients = torch.autograd.grad(
                output, edges, part, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        except RuntimeError:  # an op without a batching rule: one backward pass per vector
            gradients = _one_by_one(output, edges, part)
        for kept, gradient in zip(found, gradients):
            if gradient is not None:
                kept.append(gradient.flatten(0, 1))
    return [torch.cat(kept) if kept else None for kept in found]


def _one_by_one(output: Tensor, edges: list[GradientEdge], vectors: Tensor) -> list[Tensor | None]:
    results = [torch.autograd.grad(output, edges, vector, retain_graph=True, allow_unused=True) for vector in vectors]
    return [None if parts[0] is None else torch.stack(parts) for parts in zip(*results)]


def factor_layers(model: nn.Module) -> list[FactorLayer]:
    return [FactorLayer(name, module) for name, module in supported_layers(model)]


def kfac_factors(
    model: nn.Module,
    loss_func: nn.Module,
    data: Iterable[tuple[Any, Tensor]],
    *,
    approx: Approx = "expand",
    fisher: Fisher = "empirical",
    mc_samples: int = 1,
    process_group: Any = None,
    generator: torch.Generator | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """{layer name: (A, B)} for every nn.Linear, nn.Conv*d and nn.ConvTranspose*d of the model, equal to curvlinops'
    `KFACLinearOperator(model, loss_func, params, data, fisher_type=fisher, kfac_approx=approx,
    separate_weight_and_bias=False)` factors (mc: in distribution). A layer with a bias has its row and column last
    in A. A grouped layer has blocks [g, in, in] and [g, out, out]. With a process group (or a
    DistributedDataParallel model), each rank passes its share of the data and all get the factors of all of it.
    `generator` draws the mc labels."""
    check_options(approx, fisher, mc_samples)
    spec = loss_spec(loss_func)
    group = process_group_of(model, process_group)
    inner = unwrap(model)  # a DDP forward without a backward to the parameters would leave its reducer waiting
    layers = factor_layers(inner)
    sums = Sums.zeros(layers)
    with Recorder(layers) as recorder, torch.enable_grad():
        for inputs, target in data:
            recorder.calls.clear()
            output = inner(inputs)
            if output.shape[0] == 0:
                continue
            accumulate(sums, recorder.calls, output, target, spec, approx, fisher, mc_samples, generator)
    return {name: _ungrouped(a, b) for name, (a, b) in sums.reduced(group).factors(spec, fisher, mc_samples).items()}


def _ungrouped(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the group axis of a layer with one group, as curvlinops lays the factors out."""
    return (a[0], b[0]) if a.shape[0] == 1 else (a, b)

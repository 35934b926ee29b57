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

Frozen tensors are left out as curvlinops leaves them out (it takes the parameters that require grad): a frozen
bias has no row in A; a layer whose weight is frozen but whose bias is trained keeps only B (A is then the 1x1 matrix
[[1]]: curvlinops applies B alone to the bias); a layer with nothing trained has no factors. Whether a tensor is
trained is read when the layers are gathered (for `KFAC`: when it is made).

A parametrized weight (`torch.nn.utils.parametrizations.weight_norm`, `spectral_norm`, ...) has the factors of the
tensor the parametrization computes, the weight the layer multiplies by: A from the layer's inputs and B from its
output gradients, exactly those of a plain layer holding that weight. This is the curvature in the computed weight;
`KFAC` preconditions that weight's gradient and carries the result back through the parametrization. (curvlinops
does not follow parametrizations: it finds no `weight` on such a layer, gives it no A, and applies B to the
parametrization's originals as if they were biases.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from tncompiler.model.distributed import all_reduce_sums, process_group_of, unwrap
from tncompiler.model.layers import (
    SUPPORTED,
    LayerSpec,
    layer_functions,
    spec_of,
    stored_tensor,
    trainable,
    with_sizes,
)
from tncompiler.model.losses import FISHERS, Fisher, LossSpec, cotangents, loss_spec

__all__ = ["Approx", "FactorLayer", "LayerCall", "Sums", "check_options", "kfac_factors"]

Approx = Literal["expand", "reduce"]
Tensor = torch.Tensor


class FactorLayer:
    """One layer's contributions to the factor sums, from its compiled functions; blocks carry a group axis. The sums
    are added in place (a linear layer's A can hold millions of entries: every pass over it counts). `trains_weight`
    and `trains_bias` say which of its tensors the factors cover (the module docstring: frozen tensors)."""

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name, self.module = name, module
        self.spec: LayerSpec = spec_of(module, name)
        self.functions = layer_functions(self.spec)
        self.trains_weight = trainable(module, "weight")
        self.trains_bias = self.spec.bias and trainable(module, "bias")

    def _stored_weight(self) -> Tensor:
        """The stored weight, for its dtype and device (a parametrized weight is not evaluated for them)."""
        weight = stored_tensor(self.module, "weight")
        assert weight is not None
        return weight

    def _widened(self, tensor: Tensor) -> Tensor:
        """Detached, and in the weight's dtype where that is wider: under autocast, activations in half precision
        (the factors are then computed with autocast off, in the weight's precision)."""
        return tensor.detach().to(torch.promote_types(tensor.dtype, self._stored_weight().dtype))

    def shapes(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The shapes of A (the trained weight's features, then a trained bias's row) and B, with their group axis."""
        spec = self.spec
        features = spec.in_channels * math.prod(spec.kernel) * int(self.trains_weight) + int(self.trains_bias)
        return (spec.groups, features, features), (spec.groups, spec.out_channels, spec.out_channels)

    def add_inputs(self, sums: Sums, x: Tensor, output_shape: torch.Size, approx: Approx) -> None:
        """Add Σ over this batch of ūūᵀ to the layer's input sum (and Σ ū to a trained bias's row); a layer that
        trains its bias alone only notes that its A is [[1]]."""
        if not self.trains_weight:
            sums.bias_only.add(self.name)
            return
        x = self._widened(x)
        with torch.autocast(x.device.type, enabled=False):
            self._add_inputs(sums, x, output_shape, approx)

    def _add_inputs(self, sums: Sums, x: Tensor, output_shape: torch.Size, approx: Approx) -> None:
        n = x.shape[0]
        if self.spec.kind == "linear":
            x, positions = x.reshape(-1, x.shape[-1]), x[0].numel() // x.shape[-1]
            sizes: dict[str, int] = {}
        else:
            positions, sizes = math.prod(output_shape[2:]), self.spec.sizes(x)
            if self.spec.kind == "transpose":  # the sizes of this call: m(x, output_size=...) may change them
                sizes = {f"i{j + 1}": int(size) for j, size in enumerate(output_shape[2:])}
        if approx == "expand":  # kfac_expand divides by the rows it is given: n, or n·positions for a linear layer
            function, inputs, scale = with_sizes(self.functions.kfac_expand, sizes), x, x.shape[0] / positions
        elif self.spec.kind == "linear":  # reduce: the positions are summed first, here by hand
            function, inputs, scale = self.functions.kfac_reduce, x.reshape(n, positions, -1).sum(1), n / positions**2
        else:
            function, inputs, scale = with_sizes(self.functions.kfac_reduce, sizes), x, float(n)
        _accumulate(sums.inputs, self.name, _grouped(_scaled_quadratic(function, inputs, scale, self.shapes()[0])))
        if self.trains_bias:
            row = _grouped(with_sizes(self.functions.unfold_sum, sizes)(x), matrix=False).mul_(1 / positions)
            count = row.new_full((row.shape[0], 1), float(n))  # the corner: Σ of 1 per example and call
            _accumulate(sums.rows, self.name, torch.cat([row, count], dim=1))

    def add_gradients(self, sums: Sums, gradient: Tensor, approx: Approx, rescale: float = 1.0) -> None:
        """Add Σ over this batch of ḡ ḡᵀ to the layer's gradient sum, for the backpropagated cotangents (ḡ being
        `rescale` times the gradient given)."""
        gradient = self._widened(gradient)
        with torch.autocast(gradient.device.type, enabled=False):
            self._add_gradients(sums, gradient, approx, rescale)

    def _add_gradients(self, sums: Sums, gradient: Tensor, approx: Approx, rescale: float) -> None:
        n = gradient.shape[0]
        if self.spec.kind == "linear":
            if approx == "expand":
                rows = gradient.reshape(-1, gradient.shape[-1])
                factor, scale = self.functions.kfac_grad_expand(rows), rows.shape[0]
            else:
                factor, scale = self.functions.kfac_grad_reduce(gradient.reshape(n, -1, gradient.shape[-1]).sum(1)), n
        else:
            function = self.functions.kfac_grad_expand if approx == "expand" else self.functions.kfac_grad_reduce
            factor, scale = function(gradient), n
        _accumulate(sums.gradients, self.name, _grouped(factor.mul_(scale * rescale**2)))

    def zeros(self) -> tuple[Tensor | None, Tensor, Tensor | None]:
        """Zero sums (weight block, gradient factor, bias row), for a rank that saw no call of the layer; a layer
        that trains its bias alone has no weight block nor row."""
        weight = self._stored_weight()
        (groups, features, _), b_shape = self.shapes()
        features -= int(self.trains_bias)
        row = weight.new_zeros(groups, features + 1) if self.trains_bias and self.trains_weight else None
        block = weight.new_zeros(groups, features, features) if self.trains_weight else None
        return block, weight.new_zeros(b_shape), row


def _scaled_quadratic(function: Callable[[Tensor], Tensor], x: Tensor, scale: float, shape: tuple[int, ...]) -> Tensor:
    """scale · function(x) for a function quadratic in x: x·√scale when x is the smaller (a wide linear layer's A has
    millions of entries), else the fresh result scaled in place (a convolution's input is the larger)."""
    if x.numel() < math.prod(shape):
        return function(x * math.sqrt(scale))
    return function(x).mul_(scale)


def _grouped(factor: Tensor, matrix: bool = True) -> Tensor:
    """With a leading group axis (tnc leaves it out when there is one group)."""
    return factor if factor.dim() == (3 if matrix else 2) else factor.unsqueeze(0)


def _accumulate(sums: dict[str, Tensor], name: str, value: Tensor) -> None:
    """The first value is kept as it is (a fresh result of a compiled function), later ones added in place."""
    total = sums.get(name)
    if total is None:
        sums[name] = value
    elif total.dtype.itemsize < value.dtype.itemsize:
        sums[name] = total.to(value.dtype).add_(value)
    else:
        total.add_(value)


@dataclass
class Sums:
    """The factor sums of each layer (A's weight block apart from its bias row, whose last entry counts the layer's
    calls times examples: they are assembled at the end) and the counts they are normalised by: examples and loss
    terms. `bias_only` names the layers seen that train their bias alone (their A is [[1]], no sum)."""

    inputs: dict[str, Tensor] = field(default_factory=dict)
    rows: dict[str, Tensor] = field(default_factory=dict)
    gradients: dict[str, Tensor] = field(default_factory=dict)
    examples: float = 0.0
    terms: float = 0.0
    bias_only: set[str] = field(default_factory=set)

    def reduced(self, layers: Sequence[FactorLayer], process_group: Any) -> Sums:
        """The sums over the ranks of the group (the same on every rank); a layer this rank saw no call of sums
        zeros, so that every rank reduces the same tensors."""
        if process_group is None:
            return self
        for layer in layers:
            self._fill(layer)
        names = [layer.name for layer in layers]
        weighted = [name for name in names if name in self.inputs]
        biased = [name for name in names if name in self.rows]
        tensors = (
            [self.inputs[n] for n in weighted] + [self.gradients[n] for n in names] + [self.rows[n] for n in biased]
        )
        totals, (examples, terms) = all_reduce_sums(tensors, [self.examples, self.terms], process_group)
        first, second = len(weighted), len(weighted) + len(names)
        inputs, gradients = dict(zip(weighted, totals[:first])), dict(zip(names, totals[first:second]))
        rows = dict(zip(biased, totals[second:]))
        return Sums(inputs, rows, gradients, examples, terms, set(self.bias_only))

    def _fill(self, layer: FactorLayer) -> None:
        """Zero sums for a layer this rank saw no call of."""
        if layer.name in self.gradients and (layer.name in self.inputs or layer.name in self.bias_only):
            return
        a, b, row = layer.zeros()
        self.gradients.setdefault(layer.name, b)
        if a is None:
            self.bias_only.add(layer.name)
            return
        self.inputs.setdefault(layer.name, a)
        if row is not None:
            self.rows.setdefault(layer.name, row)

    def factors(self, spec: LossSpec, fisher: Fisher, mc_samples: int) -> dict[str, tuple[Tensor, Tensor]]:
        """A = Σ/N (with the bias's row and column last, and 1 in the corner) and B = Σ/(S·M), with group axes."""
        if self.examples == 0:
            raise ValueError("tncompiler: no data: the factors are averages over the examples")
        scale = (self.terms if spec.reduction == "mean" else 1.0) * (mc_samples if fisher == "mc" else 1)
        names = [name for name in self.gradients if name in self.inputs or name in self.bias_only]
        return {name: (self._input_factor(name), self.gradients[name].div_(scale)) for name in names}

    def _input_factor(self, name: str) -> Tensor:
        if name in self.bias_only:
            b = self.gradients[name]
            return b.new_ones(b.shape[0], 1, 1)
        weight, row = self.inputs[name], self.rows.get(name)
        if row is None:
            return weight.div_(self.examples)
        groups, features = weight.shape[0], weight.shape[1]
        factor = weight.new_empty(groups, features + 1, features + 1)
        torch.div(weight, self.examples, out=factor[:, :features, :features])  # one pass: the copy is the division
        factor[:, :, features] = row / self.examples
        factor[:, features, :features] = row[:, :features] / self.examples
        return factor


def check_options(approx: str, fisher: str, mc_samples: int) -> None:
    if approx not in ("expand", "reduce"):
        raise ValueError(f"tncompiler: unknown approx {approx!r}; choose 'expand' or 'reduce'")
    if fisher not in FISHERS:
        raise ValueError(f"tncompiler: unknown fisher {fisher!r}; choose one of {', '.join(map(repr, FISHERS))}")
    if mc_samples < 1 or (fisher != "mc" and mc_samples != 1):
        raise ValueError(f"tncompiler: mc_samples={mc_samples}: it must be 1, or any positive number with fisher='mc'")


@dataclass
class LayerCall:
    """One call of a layer in a forward pass: its input, its output's shape and the gradient edge of its output;
    `gradients` collects the gradients that reach that output (the preconditioner records them as they come)."""

    layer: FactorLayer
    x: Tensor
    output_shape: torch.Size
    edge: GradientEdge
    gradients: list[Tensor] = field(default_factory=list)


class Recorder:
    """Forward hooks that record each call of the layers; a removable context manager."""

    def __init__(self, layers: Sequence[FactorLayer]) -> None:
        self.calls: list[LayerCall] = []
        self._handles = [layer.module.register_forward_hook(self._hook(layer)) for layer in layers]

    def _hook(self, layer: FactorLayer) -> Any:
        def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
            if not output.requires_grad:
                raise ValueError(
                    f"tncompiler: the output of layer {layer.name!r} does not require grad, so no gradient reaches it "
                    "(run the model with gradients enabled and the layer's weight trainable)"
                )
            self.calls.append(LayerCall(layer, args[0].detach(), output.shape, get_gradient_edge(output)))

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
    calls: Sequence[LayerCall],
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
        call.layer.add_inputs(sums, call.x, call.output_shape, approx)
    vectors = cotangents(spec, fisher, output, target, mc_samples, generator)
    for gradients in backpropagate(output, [call.edge for call in calls], vectors):
        for call, gradient in zip(calls, gradients):
            if gradient is not None:
                call.layer.add_gradients(sums, gradient, approx)
    sums.examples += output.shape[0]
    sums.terms += spec.terms(output)


def backpropagate(
    output: Tensor, edges: list[GradientEdge], vectors: Tensor, chunk: int = 32
) -> Iterator[list[Tensor | None]]:
    """The gradients at the edges of `output` against `vectors` [V, *output.shape], in chunks of up to `chunk`
    vectors, each chunk's results stacked along the layer's batch axis ([V'·n, ...], which the factor sums treat as
    more examples). A chunk is one vectorised backward pass (type-2 needs one per class, mc one per sample) on a GPU;
    on the CPU each vector is its own backward pass, which measured faster there (a digits CNN's ten classes: 24 ms
    against 37 ms; vmap's rules for ReLU and pooling backward copy and stack). The graph is kept for the caller's
    own backward pass."""
    if vectors.device.type == "cpu":
        for vector in vectors:
            yield list(torch.autograd.grad(output, edges, vector, retain_graph=True, allow_unused=True))
        return
    for part in torch.split(vectors, chunk):
        gradients: Sequence[Tensor | None]
        try:
            gradients = torch.autograd.grad(
                output, edges, part, retain_graph=True, allow_unused=True, is_grads_batched=True
            )
        except RuntimeError:  # an op without a batching rule: one backward pass per vector
            gradients = _one_by_one(output, edges, part)
        yield [None if gradient is None else gradient.flatten(0, 1) for gradient in gradients]


def _one_by_one(output: Tensor, edges: list[GradientEdge], vectors: Tensor) -> list[Tensor | None]:
    results = [torch.autograd.grad(output, edges, vector, retain_graph=True, allow_unused=True) for vector in vectors]
    return [None if parts[0] is None else torch.stack(parts) for parts in zip(*results)]


def factor_layers(model: nn.Module) -> list[FactorLayer]:
    """The model's supported layers that train their weight or their bias; a frozen layer is left alone (nor are
    its settings checked: it is never written)."""
    return [
        FactorLayer(name, module)
        for name, module in model.named_modules()
        if isinstance(module, SUPPORTED) and (trainable(module, "weight") or trainable(module, "bias"))
    ]


def no_layers(function: str, model: nn.Module) -> str:
    """The message for a model that has no layer to compute factors for."""
    supported = ", ".join(f"nn.{cls.__name__}" for cls in SUPPORTED)
    return (
        f"tncompiler.{function}: model {type(model).__name__} has no supported layer that trains its weight or bias "
        f"(supported: {supported}), so there are no factors to compute"
    )


def batches(data: Iterable[tuple[Any, Tensor]] | tuple[Any, Tensor]) -> Iterable[tuple[Any, Tensor]]:
    """The (x, y) pairs of `data`: an iterable of pairs, or one pair `(x, y)` of tensors."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor) and isinstance(data[1], Tensor):
        return [(data[0], data[1])]
    return data


def kfac_factors(
    model: nn.Module,
    loss_func: nn.Module,
    data: Iterable[tuple[Any, Tensor]] | tuple[Tensor, Tensor],
    *,
    approx: Approx = "expand",
    fisher: Fisher = "empirical",
    mc_samples: int = 1,
    process_group: Any = None,
    generator: torch.Generator | None = None,
) -> dict[str, tuple[Tensor, Tensor]]:
    """{layer name: (A, B)} for every nn.Linear, nn.Conv*d and nn.ConvTranspose*d of the model with a trained
    weight or bias, equal to curvlinops' `KFACLinearOperator(model, loss_func, params, data, fisher_type=fisher,
    kfac_approx=approx, separate_weight_and_bias=False)` factors for the parameters that require grad (mc: in
    distribution). A layer with a trained bias has its row and column last in A; one that trains its bias alone has
    A = [[1]]. A parametrized weight has the factors of the weight its parametrization computes (the module
    docstring says why, and how curvlinops differs). A grouped layer has blocks [g, in, in] and [g, out, out]. With a
    process group (or a DistributedDataParallel model), each rank passes its share of the data and all get the
    factors of all of it. `data` is an iterable of (x, y) pairs or one pair. `generator` draws the mc labels."""
    check_options(approx, fisher, mc_samples)
    spec = loss_spec(loss_func)
    group = process_group_of(model, process_group)
    inner = unwrap(model)  # a DDP forward without a backward to the parameters would leave its reducer waiting
    layers = factor_layers(inner)
    if not layers:
        raise ValueError(no_layers("kfac_factors", inner))
    sums = Sums()
    with Recorder(layers) as recorder, torch.enable_grad():
        for inputs, target in batches(data):
            recorder.calls.clear()
            output = inner(inputs)
            if output.shape[0] == 0:
                continue
            accumulate(sums, recorder.calls, output, target, spec, approx, fisher, mc_samples, generator)
    factors = sums.reduced(layers, group).factors(spec, fisher, mc_samples)
    return {layer.name: _ungrouped(*factors[layer.name]) for layer in layers if layer.name in factors}


def _ungrouped(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Drop the group axis of a layer with one group, as curvlinops lays the factors out."""
    return (a[0], b[0]) if a.shape[0] == 1 else (a, b)

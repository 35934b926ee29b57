"""Each parameter's curvature quantities, before the sums over ranks: from the compiled diagrams of the layer calls
that hold it, else through torch.func (`curvature_func`).

A parameter held by one layer called once gets each quantity from that call's own function (`batch_grad_w`,
`diag_ggn_w`, ...; the weight's squared norm from the form the text's last line names, `curvature_text.norm_form`).
A parameter used by several calls (a layer called twice, a weight shared by two layers) has the quantities of its
summed per-example gradient: each call's `batch_grad_*` and `columns_*` are added first and squared after. The
GGN's columns arrive a few at a time (`add_columns`), each batch squared and added into the diagonals at once, so
that no [V, N, ...] tensor of all the columns is ever kept.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.graph import GradientEdge

from tncompiler.model.curvature_func import example_rows
from tncompiler.model.curvature_text import CurvatureLayout, curvature_functions, curvature_layout, norm_form
from tncompiler.model.layers import LayerSpec

__all__ = ["FIRST_ORDER", "GGN", "Counts", "LayerCall", "Parts", "Plan", "add_func_columns", "plan", "relative_names"]

Tensor = torch.Tensor
FIRST_ORDER = ("batch_grad", "batch_l2", "sum_grad_squared", "variance")
GGN = ("diag_ggn_exact", "diag_ggn_mc")
ROLES = {"weight": "w", "bias": "b"}


@dataclass(frozen=True)
class Counts:
    """Examples and loss terms of this rank and of all ranks; `rescale` turns this rank's loss-gradient scaling into
    the whole batch's (a "mean" over all the terms)."""

    examples: int
    all_examples: float
    all_terms: float
    rescale: float


@dataclass(eq=False)
class LayerCall:
    """One call of a layer: its input, output shape and gradient edge, and the loss's gradient at its output (caught
    in the loss's backward pass)."""

    name: str
    module: nn.Module
    spec: LayerSpec
    x: Tensor
    output_shape: torch.Size
    edge: GradientEdge
    grad: Tensor | None = None

    @functools.cached_property
    def layout(self) -> CurvatureLayout:
        return curvature_layout(self.spec, self.x.shape, self.output_shape)

    @functools.cached_property
    def functions(self) -> types.ModuleType:
        return curvature_functions(self.layout)

    def squared_norms(self, role: str, grad: Tensor) -> Tensor:
        """batch_l2 of the weight in the form the text's last line names (`norm_form`), or of the bias."""
        if role == "b":
            return self.run("batch_l2", role, grad, 1)
        functions, laid = self.functions, self.laid(grad, 1)
        result: Tensor
        if norm_form(self.layout) == "gram":
            result = functions.batch_l2_w_gram(functions.window_gram(self.input), functions.grad_gram(laid))
        else:
            result = functions.batch_l2_w_per_example(self.input, laid)
        return result

    def laid(self, tensor: Tensor, leading: int) -> Tensor:
        """A tensor laid out like the output (after `leading` axes: columns, batch) as the text lays it out: a linear
        layer's extra axes as one positions axis, or none."""
        if self.spec.kind != "linear" or len(self.output_shape) == 2:
            return tensor
        return tensor.reshape(*tensor.shape[:leading], -1, tensor.shape[-1])

    @functools.cached_property
    def input(self) -> Tensor:
        return self.laid(self.x, 1)

    def arguments(self, role: str, tensor: Tensor, leading: int) -> tuple[Tensor, ...]:
        """The arguments of a `*_w` function (the input, then the tensor) or a `*_b` one (the tensor alone)."""
        laid = self.laid(tensor, leading)
        return (self.input, laid) if role == "w" else (laid,)

    def run(self, name: str, role: str, tensor: Tensor, leading: int) -> Tensor:
        """`{name}_{role}` (e.g. `diag_ggn_w`) of the tensor laid out as the text lays it out."""
        result: Tensor = getattr(self.functions, f"{name}_{role}")(*self.arguments(role, tensor, leading))
        return result

    def check(self, examples: int) -> None:
        """Per-example quantities need the call to see the batch's examples on its input's first axis."""
        batched = self.x.dim() >= 2 if self.spec.kind == "linear" else self.x.dim() == self.spec.dims + 2
        if not batched or self.x.shape[0] != examples:
            raise ValueError(
                f"tncompiler.curvature: layer {self.name!r} was called on an input of shape {tuple(self.x.shape)}, "
                f"whose first axis is not the batch of {examples} examples the model's output has; per-example "
                "quantities need every layer to see the examples on its first axis"
            )


@dataclass
class Parts:
    """One parameter's quantities before the sums over ranks; the sums are scaled to the whole batch's loss."""

    batch_grad: Tensor | None = None
    batch_l2: Tensor | None = None
    squares: Tensor | None = None  # Σ_n of the squared per-example gradients
    gradient: Tensor | None = None  # Σ_n of the per-example gradients
    diagonals: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Plan:
    """Where each trainable parameter's quantities come from: the layer calls (and roles) that hold it, or, for
    `left`, torch.func; `diagonals` collects the GGN diagonals as the columns arrive."""

    params: dict[str, nn.Parameter]
    layers: dict[str, list[tuple[int, str]]]  # parameter name -> [(position in calls, role)]
    left: dict[str, nn.Parameter]
    calls: Sequence[LayerCall]
    counts: Counts
    diagonals: dict[str, dict[str, Tensor]] = field(default_factory=dict)

    def add_columns(self, quantity: str, columns: Sequence[Tensor | None]) -> None:
        """A batch of columns [v, N, ...] at each call's output (None: none reached it): the squares of the rows
        they make, added into each layer parameter's diagonal."""
        for name, found in self.layers.items():
            present = [(self.calls[k], role, columns[k]) for k, role in found if columns[k] is not None]
            if len(found) == 1 and present:
                call, role, column = present[0]
                self._add(name, quantity, call.run("diag_ggn", role, column, 2))  # type: ignore[arg-type]
            elif present:  # several calls: the rows of their sum
                rows = [call.run("columns", role, column, 2) for call, role, column in present]  # type: ignore[arg-type]
                self._add(name, quantity, _squares(functools.reduce(torch.add, rows)))

    def add_rows(self, quantity: str, rows: dict[str, Tensor]) -> None:
        """torch.func's rows [v, n, *p] of some examples (other examples' rows are in other batches)."""
        for name, values in rows.items():
            self._add(name, quantity, _squares(values))

    def _add(self, name: str, quantity: str, square: Tensor) -> None:
        diagonals = self.diagonals.setdefault(name, {})
        total = diagonals.get(quantity)
        diagonals[quantity] = square if total is None else total.add_(square)

    def parts(
        self, wanted: Sequence[str], model: nn.Module, inputs: Sequence[Any], grad: Tensor | None
    ) -> dict[str, Parts]:
        """Every parameter's parts, in the order of `params`; `grad` is the loss's gradient at the model's output
        (for the parameters torch.func covers)."""
        first = [q for q in wanted if q in FIRST_ORDER]
        gradients: dict[str, Tensor | None] = {name: None for name in self.left}
        if first and self.left and grad is not None:
            gradients |= _func_gradients(model, self.left, inputs, grad)
        parts = {}
        for name, parameter in self.params.items():
            if name in self.layers:
                part = self._layer_parts(name, first) if first else Parts()
            else:
                part = _from_gradients(gradients[name], parameter, self.counts, first)
            for quantity in (q for q in GGN if q in wanted):
                part.diagonals[quantity] = self.diagonals.get(name, {}).get(quantity, torch.zeros_like(parameter))
            parts[name] = part
        return parts

    def _layer_parts(self, name: str, wanted: Sequence[str]) -> Parts:
        found = [(self.calls[k], role) for k, role in self.layers[name] if self.calls[k].grad is not None]
        if len(found) == 1:
            return _single_parts(*found[0], self.counts, wanted)
        gradients = [call.run("batch_grad", role, call.grad, 1) for call, role in found]  # type: ignore[arg-type]
        total = functools.reduce(torch.add, gradients) if gradients else None
        return _from_gradients(total, self.params[name], self.counts, wanted)


def _squares(rows: Tensor) -> Tensor:
    """Σ over the columns and examples of the rows' squares."""
    return rows.square().sum((0, 1))


def plan(params: dict[str, nn.Parameter], model: nn.Module, calls: Sequence[LayerCall], counts: Counts) -> Plan:
    """A parameter goes to the diagrams where every module holding it is a recorded layer holding it as its weight or
    bias (a parameter a norm layer or an embedding also holds, or whose layer is never called, goes to torch.func)."""
    recorded = {id(call.module) for call in calls}
    holders = _holders(model, params)
    layers: dict[str, list[tuple[int, str]]] = {}
    left: dict[str, nn.Parameter] = {}
    for name, parameter in params.items():
        found = [(k, ROLES[attr]) for k, call in enumerate(calls) for m, attr in holders[name] if call.module is m]
        if found and all(id(module) in recorded and attr in ROLES for module, attr in holders[name]):
            layers[name] = found
            for k, _ in found:
                calls[k].check(counts.examples)
        else:
            left[name] = parameter
    return Plan(params, layers, left, calls, counts)


def _holders(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, list[tuple[nn.Module, str]]]:
    """The modules that hold each parameter, and under which attribute (a shared parameter has several)."""
    names = {id(p): name for name, p in params.items()}
    holders: dict[str, list[tuple[nn.Module, str]]] = {name: [] for name in params}
    for module in model.modules():
        for attribute, parameter in module._parameters.items():
            if parameter is not None and id(parameter) in names:
                holders[names[id(parameter)]].append((module, attribute))
    return holders


def _single_parts(call: LayerCall, role: str, counts: Counts, wanted: Sequence[str]) -> Parts:
    """One call's quantities, each from its own compiled function."""
    grad = call.grad
    assert grad is not None
    parts = Parts()
    if "batch_grad" in wanted:
        parts.batch_grad = call.run("batch_grad", role, grad, 1)
    if "batch_l2" in wanted:
        parts.batch_l2 = call.squared_norms(role, grad)
    if "sum_grad_squared" in wanted or "variance" in wanted:
        parts.squares = call.run("sum_grad_squared", role, grad, 1).mul_(counts.rescale**2)
    if "variance" in wanted:
        parts.gradient = call.run("grad", role, grad, 1).mul_(counts.rescale)
    return parts


def _from_gradients(gradients: Tensor | None, parameter: Tensor, counts: Counts, wanted: Sequence[str]) -> Parts:
    """The first-order quantities of per-example gradients [N, *p] (None: no gradient reached the parameter)."""
    if gradients is None:
        gradients = parameter.detach().new_zeros(counts.examples, *parameter.shape)
    parts = Parts()
    if "batch_grad" in wanted:
        parts.batch_grad = gradients
    if "batch_l2" in wanted:
        parts.batch_l2 = gradients.square().reshape(gradients.shape[0], -1).sum(1)
    if "sum_grad_squared" in wanted or "variance" in wanted:
        parts.squares = gradients.square().sum(0).mul_(counts.rescale**2)
    if "variance" in wanted:
        parts.gradient = gradients.sum(0).mul_(counts.rescale)
    return parts


def relative_names(model: nn.Module, params: dict[str, nn.Parameter]) -> dict[str, str]:
    """Each parameter's name relative to `model` (the module a DistributedDataParallel wraps drops `module.`)."""
    relative = {id(p): name for name, p in model.named_parameters()}
    return {name: relative[id(p)] for name, p in params.items()}


def _func_gradients(
    model: nn.Module, left: dict[str, nn.Parameter], inputs: Sequence[Any], grad: Tensor
) -> dict[str, Tensor | None]:
    """torch.func's per-example gradients [N, *p] of the parameters no diagram covers."""
    names = relative_names(model, left)
    params = {names[name]: p for name, p in left.items()}
    chunks = list(example_rows(model, params, inputs, grad.unsqueeze(0)))
    return {name: torch.cat([chunk[names[name]][0] for chunk in chunks]) for name in left}


def add_func_columns(plan_: Plan, model: nn.Module, inputs: Sequence[Any], quantity: str, columns: Tensor) -> None:
    """The GGN rows of the parameters no diagram covers, from the columns at the model's output."""
    if not plan_.left:
        return
    names = relative_names(model, plan_.left)
    back = {relative: name for name, relative in names.items()}
    params = {names[name]: p for name, p in plan_.left.items()}
    for chunk in example_rows(model, params, inputs, columns):
        plan_.add_rows(quantity, {back[relative]: rows for relative, rows in chunk.items()})

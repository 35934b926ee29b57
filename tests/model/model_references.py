"""Independent references for the whole-model tests: curvlinops' KFACLinearOperator, and a torch-only re-implementation
of its procedure for every layer type (curvlinops knows nn.Linear and nn.Conv2d only).

The torch-only reference follows curvlinops' algorithm step by step (loss with its reduction, the sqrt(C) correction
of a mean MSE, the Hessian root scaled by the number of loss terms, the correction num_loss_terms² / (N · T)), but
gets each layer's unfolded input from the Jacobian of the layer's own PyTorch forward in its weight, per group, and
the Hessian of the loss from torch.func.hessian and an eigendecomposition. It is checked against curvlinops where both
apply (tests/model/test_model_factors.py).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
import torch
from torch import nn

Tensor = torch.Tensor
LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
Factors = dict[str, tuple[Tensor, Tensor]]


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|, after checking the shapes."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item() or 1.0
    return float((actual - expected).abs().max().item() / scale)


def worst_error(actual: Factors, expected: Factors) -> float:
    assert actual.keys() == expected.keys(), (sorted(actual), sorted(expected))
    errors = [relative_error(a, b) for name in actual for a, b in zip(actual[name], expected[name])]
    return max(errors)


# --- curvlinops -----------------------------------------------------------------------------------------------------


def curvlinops_factors(
    model: nn.Module,
    loss_func: nn.Module,
    data: Sequence[tuple[Tensor, Tensor]],
    approx: str,
    fisher: str,
    mc_samples: int = 1,
    seed: int = 2147483647,
) -> Factors:
    """KFACLinearOperator's factors, the bias folded into the input factor."""
    curvlinops = pytest.importorskip("curvlinops")
    operator = curvlinops.KFACLinearOperator(
        model,
        loss_func,
        [p for p in model.parameters() if p.requires_grad],
        list(data),
        fisher_type=fisher,
        mc_samples=mc_samples,
        kfac_approx=approx,
        separate_weight_and_bias=False,
        check_deterministic=False,
        seed=seed,
    )
    operator.compute_kronecker_factors()
    state = operator.state_dict()
    return {name: (a, state["gradient_covariances"][name]) for name, a in state["input_covariances"].items()}


# --- the torch-only reference -----------------------------------------------------------------------------------------


def jacobian_unfold(module: nn.Module, x: Tensor) -> Tensor:
    """[n, g, positions, in]: per group, the unfolded input u with y[n, d, p] = Σ_f u[n, g, p, f] w_g[d, f] + b, read
    off the Jacobian of the layer's output in its weight (the group's first output channel)."""
    if isinstance(module, nn.Linear):
        return x.reshape(x.shape[0], 1, -1, x.shape[-1])

    def layer(weight: Tensor) -> Tensor:
        return torch.func.functional_call(module, {"weight": weight}, (x,))  # type: ignore[no-any-return]

    jacobian = torch.func.jacrev(layer)(module.weight.detach())  # [n, out, *positions, *w.shape]
    groups, n = module.groups, x.shape[0]
    out_per_group = module.out_channels // groups
    in_per_group = module.in_channels // groups
    blocks = []
    for g in range(groups):
        d = g * out_per_group
        rows = jacobian[:, d]  # [n, *positions, *w.shape]
        spatial = rows.shape[1 : rows.dim() - module.weight.dim()]
        rows = rows.reshape(n, math.prod(spatial), *module.weight.shape)
        if isinstance(module, nn.modules.conv._ConvTransposeNd):  # w [(g c), d, k...]
            block = rows[:, :, g * in_per_group : (g + 1) * in_per_group, 0]
        else:  # w [(g d), c, k...]
            block = rows[:, :, d]
        blocks.append(block.reshape(n, block.shape[1], -1))
    return torch.stack(blocks, dim=1)


def _with_ones(rows: Tensor, bias: bool) -> Tensor:
    return torch.cat([rows, torch.ones_like(rows[..., :1])], dim=-1) if bias else rows


def _input_sum(module: nn.Module, x: Tensor, approx: str) -> Tensor:
    u = jacobian_unfold(module, x)
    bias = module.bias is not None
    if approx == "expand":
        rows = _with_ones(u, bias)
        return torch.einsum("ngpi,ngpj->gij", rows, rows) / u.shape[2]
    rows = _with_ones(u.mean(2), bias)
    return torch.einsum("ngi,ngj->gij", rows, rows)


def _gradient_sum(module: nn.Module, gradient: Tensor, approx: str) -> Tensor:
    """[g, d, d] from the output gradient [n, (g d), *positions] (a linear layer's: [n, *positions, d])."""
    n = gradient.shape[0]
    if isinstance(module, nn.Linear):
        rows = gradient.reshape(n, -1, 1, gradient.shape[-1]).transpose(1, 2)  # [n, 1, positions, d]
    else:
        rows = gradient.reshape(n, module.groups, module.out_channels // module.groups, -1).transpose(2, 3)
    if approx == "expand":
        return torch.einsum("ngpi,ngpj->gij", rows, rows)
    summed = rows.sum(2)
    return torch.einsum("ngi,ngj->gij", summed, summed)


def _rows(loss_func: nn.Module, output: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """curvlinops' rearrangement: [(batch ...), c] outputs (classes on axis 1 for cross-entropy, else last)."""
    if isinstance(loss_func, nn.CrossEntropyLoss):
        return output.movedim(1, -1).reshape(-1, output.shape[1]), target.reshape(-1)
    return output.reshape(-1, output.shape[-1]), target.reshape(-1, target.shape[-1])


def _hessian_root(loss_func: nn.Module, row: Tensor, target: Tensor) -> Tensor:
    """S with S Sᵀ = the Hessian of the loss (with its reduction) of one row, by torch.func and eigh."""
    hessian = torch.func.hessian(lambda f: loss_func(f.unsqueeze(0), target.unsqueeze(0)))(row.detach())
    values, vectors = torch.linalg.eigh(hessian)
    return vectors * values.clamp(min=0).sqrt()


def _output_vectors(
    loss_func: nn.Module, output: Tensor, target: Tensor, fisher: str, terms: int, examples: int
) -> Iterable[tuple[Tensor, float]]:
    """(scalar to differentiate, correction) pairs, as curvlinops' _compute_loss_and_backward makes them."""
    rows, labels = _rows(loss_func, output, target)
    num_loss_terms = rows.shape[0]
    correction = 1.0 if loss_func.reduction == "sum" else num_loss_terms**2 / (examples * terms)
    if fisher == "empirical":
        loss = loss_func(rows, labels)
        if isinstance(loss_func, nn.MSELoss) and loss_func.reduction == "mean":
            loss = loss * math.sqrt(rows.shape[1])
        yield loss, correction
        return
    roots = torch.stack([_hessian_root(loss_func, row, label) for row, label in zip(rows, labels)])
    if loss_func.reduction == "mean":
        roots = roots / num_loss_terms
    for column in range(roots.shape[2]):
        yield (rows * roots[:, :, column]).sum(), correction


def _terms_per_example(loss_func: nn.Module, data: Sequence[tuple[Tensor, Tensor]], examples: int) -> int:
    count = sum(y.numel() if isinstance(loss_func, nn.CrossEntropyLoss) else y.shape[:-1].numel() for _, y in data)
    return count // examples


def reference_factors(
    model: nn.Module, loss_func: nn.Module, data: Sequence[tuple[Tensor, Tensor]], approx: str, fisher: str
) -> Factors:
    """The factors of every layer of LAYERS in the model, [g, in, in] and [g, out, out] for grouped layers."""
    layers = {name: module for name, module in model.named_modules() if isinstance(module, LAYERS)}
    examples = sum(x.shape[0] for x, _ in data)
    terms = _terms_per_example(loss_func, data, examples)
    inputs: dict[str, Tensor] = {}
    gradients: dict[str, Tensor] = {}
    handles = [module.register_forward_hook(_recorder(name, inputs, gradients)) for name, module in layers.items()]
    parameters = [p for p in model.parameters() if p.requires_grad]
    sums_a: dict[str, Tensor] = {}
    sums_b: dict[str, Tensor] = {}
    try:
        for x, target in data:
            output = model(x)
            for name, module in layers.items():
                _add(sums_a, name, _input_sum(module, inputs[name], approx))
            for scalar, correction in _output_vectors(loss_func, output, target, fisher, terms, examples):
                torch.autograd.grad(scalar, parameters, retain_graph=True)  # the tensor hooks record the gradients
                for name, gradient in gradients.items():
                    _add(sums_b, name, correction * _gradient_sum(layers[name], gradient, approx))
    finally:
        for handle in handles:
            handle.remove()
    return {name: _squeezed(sums_a[name] / examples, sums_b[name]) for name in layers}


def _recorder(name: str, inputs: dict[str, Tensor], gradients: dict[str, Tensor]) -> Any:
    """Records the layer's input; a tensor hook on its output (which sees the gradient of the output itself even when
    an in-place op follows, as in curvlinops) records the output's gradient in each backward pass."""

    def keep(gradient: Tensor) -> None:
        gradients[name] = gradient

    def record(module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> None:
        inputs[name] = args[0].detach()
        output.register_hook(keep)

    return record


def _add(sums: dict[str, Tensor], name: str, value: Tensor) -> None:
    sums[name] = sums[name] + value if name in sums else value


def _squeezed(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return (a[0], b[0]) if a.shape[0] == 1 else (a, b)

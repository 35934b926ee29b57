"""`with sampled(model, p=...)`: the model's layers backpropagate tensor-dropout estimates of their weight gradients.

Each supported layer's forward is replaced, for the duration of the block, by its compiled `y_sampled_autograd`: the
exact forward pass, exact gradients for the input and the bias, and for the weight `sample(vjp(y, w), index=..., p=p)`,
which keeps each output row (or example) with probability p and rescales by 1/p: an unbiased estimate that does a
fraction p of the work. DistributedDataParallel sees ordinary gradients and averages them as usual.
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from tncompiler.model.layers import Over, bias_of, compile_sampled, spec_of, supported_layers, weight_of, with_sizes

__all__ = ["sampled"]

Tensor = torch.Tensor


@contextlib.contextmanager
def sampled(
    model: nn.Module, p: float = 0.5, over: Over = "positions", generator: torch.Generator | None = None
) -> Iterator[nn.Module]:
    """Within the block, weight gradients of the model's nn.Linear, nn.Conv*d and nn.ConvTranspose*d layers are
    tensor-dropout estimates: over="positions" keeps each row of the first spatial output axis with probability p
    (a linear layer has no positions and keeps its exact gradient), over="batch" each example (each row of a linear
    layer's input). The forward pass and the input gradients stay exact; p=1 gives the exact gradients."""
    if not 0.0 < p <= 1.0:
        raise ValueError(f"tncompiler.sampled: p must be in (0, 1], got {p!r}")
    if over not in ("positions", "batch"):
        raise ValueError(f"tncompiler.sampled: over must be 'positions' or 'batch', got {over!r}")
    patched: list[nn.Module] = []
    try:
        for _, module in list(supported_layers(model)):
            if "forward" in vars(module):
                raise RuntimeError(f"tncompiler.sampled: {module!r} already has its forward replaced (nested blocks?)")
            module.forward = _forward(module, p, over, generator)
            patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward


def _forward(module: nn.Module, p: float, over: Over, generator: torch.Generator | None) -> Callable[[Tensor], Tensor]:
    spec = spec_of(module)
    compiled = compile_sampled(spec, p, over)
    has_bias = spec.bias

    def forward(x: Tensor) -> Tensor:
        weight, bias = weight_of(module), bias_of(module)
        if spec.kind == "linear":
            rows = x.reshape(-1, x.shape[-1])
            return _apply(compiled, spec.sizes(rows), rows, weight, bias, has_bias, generator).reshape(
                *x.shape[:-1], -1
            )
        return _apply(compiled, spec.sizes(x), x, weight, bias, has_bias, generator)

    return forward


def _apply(
    compiled: types.ModuleType,
    sizes: dict[str, int],
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    has_bias: bool,
    generator: torch.Generator | None,
) -> Tensor:
    arguments: tuple[Any, ...] = (x, weight, bias) if has_bias else (x, weight)
    if not hasattr(compiled, "y_sampled_autograd"):  # nothing sampled: a linear layer over its positions
        return with_sizes(compiled.y, sizes)(*arguments)
    if with_sizes(compiled.y, sizes) is not compiled.y:  # y takes keyword sizes, which the generated class lacks
        return _WithSizes.apply(x, weight, bias if has_bias else None, compiled, sizes, generator)  # type: ignore[no-untyped-call,no-any-return]
    return compiled.y_sampled_autograd.apply(*arguments, generator)  # type: ignore[no-any-return]


class _WithSizes(torch.autograd.Function):
    """`y_sampled_autograd` for a y with keyword sizes (a strided transpose convolution, whose output size its input
    does not fix): the generated class calls y without them, so this one passes them; same VJPs."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        compiled: types.ModuleType,
        sizes: dict[str, int],
        generator: torch.Generator | None,
    ) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.compiled, ctx.sizes, ctx.generator, ctx.has_bias = compiled, sizes, generator, bias is not None
        arguments = (x, weight) if bias is None else (x, weight, bias)
        return with_sizes(compiled.y, sizes)(*arguments)

    @staticmethod
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        compiled, needs = ctx.compiled, ctx.needs_input_grad
        grad_x = with_sizes(compiled.vjp_x, ctx.sizes)(weight, grad_y) if needs[0] else None
        grad_w = compiled.vjp_w_sampled(x, grad_y, generator=ctx.generator) if needs[1] else None
        grad_b = compiled.vjp_b(grad_y) if ctx.has_bias and needs[2] else None
        return grad_x, grad_w, grad_b, None, None, None

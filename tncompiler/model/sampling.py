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

from tncompiler.model.layers import (
    Over,
    bias_of,
    compile_sampled,
    size_keywords,
    spec_of,
    supported_layers,
    weight_of,
    with_sizes,
)

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
    compiled = compile_sampled(spec, over)  # one module per layer and `over`: p is given per call
    has_bias = spec.bias

    def forward(x: Tensor) -> Tensor:
        weight, bias = weight_of(module), bias_of(module)
        if spec.kind == "linear":
            rows = x.reshape(-1, x.shape[-1])
            return _apply(compiled, spec.sizes(rows), rows, weight, bias, has_bias, p, generator).reshape(
                *x.shape[:-1], -1
            )
        return _apply(compiled, spec.sizes(x), x, weight, bias, has_bias, p, generator)

    return forward


def _apply(
    compiled: types.ModuleType,
    sizes: dict[str, int],
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    has_bias: bool,
    p: float,
    generator: torch.Generator | None,
) -> Tensor:
    arguments: tuple[Any, ...] = (x, weight, bias) if has_bias else (x, weight)
    if not hasattr(compiled, "y_sampled_autograd"):  # nothing sampled: a linear layer over its positions
        return with_sizes(compiled.y, sizes)(*arguments)
    # the class passes y's keyword sizes (a strided transpose convolution's output size) on to y and its VJPs
    keywords = size_keywords(compiled.y, sizes)
    return compiled.y_sampled_autograd.apply(*arguments, generator=generator, p=p, **keywords)  # type: ignore[no-any-return]

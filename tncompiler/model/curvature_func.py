"""Per-example rows of parameters that no compiled diagram covers (a BatchNorm in eval mode, a LayerNorm, an
embedding, a parametrized weight's originals, a layer's weight read outside its forward), through `torch.func`.

For example n and a batch of output cotangents c[v, n] (the loss's gradient at the output: one; the loss Hessian's
square-root columns: V), the rows are J_nᵀ c[v, n] with J_n the Jacobian of example n's output in the parameters:
`functional_call` of the model on that example alone, `vjp` once, and the pull-back `vmap`ped over the cotangents;
the examples themselves are `vmap`ped too, in chunks (an embedding's rows are as large as its table)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vjp, vmap

__all__ = ["example_rows"]

Tensor = torch.Tensor
CHUNK = 16  # examples per vmap call


def example_rows(
    model: nn.Module, params: Mapping[str, Tensor], inputs: Sequence[Any], cotangents: Tensor
) -> Iterator[dict[str, Tensor]]:
    """For each chunk of examples, {parameter name (relative to `model`): [V, n_chunk, *p.shape]}: the cotangents
    [V, N, *output.shape] pulled back to the parameters one example at a time."""
    n = cotangents.shape[1]
    batched = [isinstance(x, Tensor) and x.dim() > 0 and x.shape[0] == n for x in inputs]
    detached = {name: p.detach() for name, p in params.items()}
    rows = _rows(model, detached, inputs, batched)
    for start in range(0, n, CHUNK):
        part = slice(start, min(start + CHUNK, n))
        examples = tuple(x[part] for x, b in zip(inputs, batched) if b)
        try:
            yield vmap(rows, in_dims=(0, 1), out_dims=1)(examples, cotangents[:, part])
        except RuntimeError as error:
            if "randomness" not in str(error):
                raise
            names = ", ".join(repr(name) for name in params)
            raise ValueError(
                f"tncompiler.curvature: the model draws random numbers in its forward (dropout in training mode?), "
                f"so the per-example quantities of {names}, which torch.func computes by running the model again per "
                "example, would not see the same draws; put the model in eval mode"
            ) from error


def _rows(
    model: nn.Module, params: dict[str, Tensor], inputs: Sequence[Any], batched: list[bool]
) -> Callable[[tuple[Tensor, ...], Tensor], dict[str, Tensor]]:
    def output_of(values: dict[str, Tensor], example: tuple[Tensor, ...]) -> Tensor:
        rows = iter(example)
        arguments = tuple(next(rows).unsqueeze(0) if b else x for x, b in zip(inputs, batched))
        output = functional_call(model, values, arguments)
        if not isinstance(output, Tensor):
            raise ValueError(f"tncompiler.curvature: the model returns a {type(output).__name__}, not a tensor")
        return output

    def rows(example: tuple[Tensor, ...], cotangent: Tensor) -> dict[str, Tensor]:
        pullback = vjp(lambda values: output_of(values, example), params)[1]  # (output, pull-back)
        pulled: tuple[dict[str, Tensor]] = vmap(pullback)(cotangent.unsqueeze(1))
        return pulled[0]

    return rows

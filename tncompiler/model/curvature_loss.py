"""The loss's side of the GGN diagonals, as BackPACK builds it: columns S of a square root of the loss Hessian in the
model's output, S Sᵀ = ∇²ℓ (exact), or sampled gradients whose outer products estimate it (Monte-Carlo).

Each column is a tensor shaped like the output, laid out [V, *output.shape]; it holds entries for every example, and
since no module mixes examples, backpropagating it gives each example's column at once. BackPACK's conventions:

- MSELoss: ∇²ℓ = 2·I per output entry, S = √2·I, one column per output entry of an example (V = numel / N);
  sampled: labels ~ N(f, 1/2), columns 2(ỹ - f).
- CrossEntropyLoss over [N, C, *positions]: per example and position, the Hessian diag(p) - p pᵀ (p the softmax) has
  rank C - 1, and S holds C - 1 columns (BackPACK's diag(√p) - p √pᵀ has C; the diagonals are the same); the
  positions are independent, so V = (C - 1) · positions, each column at one position; sampled: labels drawn from p
  at every position at once, columns p - onehot(ỹ) (positions together, V = samples).
- BCEWithLogitsLoss: S = diag(√(σ(1-σ))) per entry; sampled: labels ~ Bernoulli(σ), columns σ - ỹ.

A "mean" reduction divides the loss by `terms` (the labels of cross-entropy, the entries of the others), so S is
divided by √terms; the samples' columns are divided by √samples as well, so Σ over columns of their squares averages
over the samples.
"""

from __future__ import annotations

import math

import torch

from tncompiler.model.losses import LossSpec

__all__ = ["exact_columns", "sampled_columns"]

Tensor = torch.Tensor


def exact_columns(spec: LossSpec, output: Tensor, terms: float) -> Tensor:
    """[V, *output.shape]: the columns of the loss Hessian's square root (BackPACK's `sqrt_hessian`)."""
    output = output.detach()
    n = output.shape[0]
    scale = 1.0 / math.sqrt(terms) if spec.reduction == "mean" else 1.0
    if spec.kind == "cross_entropy":
        return _cross_entropy_columns(output).mul_(scale)
    entries = output[0].numel()
    if spec.kind == "mse":
        diagonal = output.new_full((n, entries), math.sqrt(2.0) * scale)
    else:
        p = output.sigmoid().reshape(n, entries)
        diagonal = (p * (1 - p)).sqrt().mul_(scale)
    columns = torch.diag_embed(diagonal).transpose(0, 1)  # [V, n, entries]: column v is entry v of every example
    return columns.reshape(entries, *output.shape)


def _cross_entropy_columns(output: Tensor) -> Tensor:
    """Per example and position, C - 1 columns S with S Sᵀ = diag(p) - p pᵀ (its rank: the softmax's Hessian has the
    null vector 1), one column per (column, position), zero at other positions; a tenth fewer backward passes and
    squares than BackPACK's C columns for ten classes, half for two.

    diag(p) - p pᵀ = D (I - u uᵀ) D with D = diag(√p) and u = √p a unit vector, and I - u uᵀ = B Bᵀ for any
    orthonormal basis B of u's complement: the last C - 1 columns of the Householder reflection R = I - 2 w wᵀ / wᵀw,
    w = u + e₁, which maps u to -e₁ (w's first entry is at least 1, so wᵀw ≥ 2: no cancellation). S = D B."""
    n, classes = output.shape[0], output.shape[1]
    positions = output[0, 0].numel()
    p = output.softmax(dim=1).reshape(n, classes, positions)
    w = p.sqrt()
    w[:, 0] += 1
    scale = -2 / w.square().sum(1, keepdim=True)  # [n, 1, q]
    # block[j, n, c, q] = √p_c (δ(c, j+1) - 2 w_c w_{j+1} / wᵀw), j < C - 1
    reflected = torch.einsum("ncq,njq->jncq", w * scale, w[:, 1:])
    reflected += torch.eye(classes, dtype=p.dtype, device=p.device)[1:, None, :, None]
    block = reflected * p.sqrt()
    if positions == 1:
        return block.reshape(classes - 1, *output.shape)
    spread = torch.diag_embed(block, dim1=1, dim2=4)  # [j, q', n, c, q], nonzero where q = q'
    return spread.reshape((classes - 1) * positions, *output.shape)


def sampled_columns(
    spec: LossSpec, output: Tensor, terms: float, samples: int, generator: torch.Generator | None
) -> Tensor:
    """[samples, *output.shape]: gradients of the loss at labels drawn from the model's predictive distribution
    (BackPACK's `sqrt_hessian_sampled`, drawn as torch.distributions draws them, so a seeded global generator gives
    BackPACK's own draws)."""
    output = output.detach()
    scale = 1.0 / math.sqrt(samples) / (math.sqrt(terms) if spec.reduction == "mean" else 1.0)
    if spec.kind == "mse":
        spread = torch.full_like(output, math.sqrt(0.5)).expand(samples, *output.shape)
        drawn = torch.normal(output.expand(samples, *output.shape), spread, generator=generator)
        return (drawn - output).mul_(2 * scale)
    if spec.kind == "bce":
        p = output.sigmoid()
        shape = (samples, *output.shape)  # Binomial(probs=σ)'s draws, as BackPACK's
        drawn = torch.binomial(torch.ones(shape, dtype=p.dtype, device=p.device), p.expand(shape), generator=generator)
        return (p - drawn).mul_(scale)
    return _cross_entropy_samples(output, samples, generator).mul_(scale)


def _cross_entropy_samples(output: Tensor, samples: int, generator: torch.Generator | None) -> Tensor:
    """p - onehot(ỹ), ỹ drawn per example and position as `Categorical(p).sample((samples,))` draws it."""
    classes = output.shape[1]
    p = output.softmax(dim=1).movedim(1, -1)  # [n, *positions, C]
    normalised = p / p.sum(-1, keepdim=True)  # Categorical's normalisation, for the same draws
    labels = torch.multinomial(normalised.reshape(-1, classes), samples, replacement=True, generator=generator).T
    onehot = torch.nn.functional.one_hot(labels, classes).to(output.dtype).reshape(samples, *p.shape)
    return (p.unsqueeze(0) - onehot).movedim(-1, 2)

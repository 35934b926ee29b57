"""Factors across processes: each rank sums its share, the sums and counts are added over the ranks, then every rank
normalises by the totals, so uneven shares weigh each example alike."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["all_reduce_sums", "process_group_of", "uncompiled", "unwrap"]

Tensor = torch.Tensor


def uncompiled(model: nn.Module) -> nn.Module:
    """The module `torch.compile` wrapped (its parameters keep their own names), or the model itself: the model-level
    API records layer calls with hooks and differentiates per example, which the eager module serves."""
    inner = getattr(model, "_orig_mod", None)
    while type(model).__name__ == "OptimizedModule" and isinstance(inner, nn.Module):
        model, inner = inner, getattr(inner, "_orig_mod", None)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module a DistributedDataParallel wraps (its layers keep their names), or the model itself."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def process_group_of(model: nn.Module, process_group: Any) -> Any:
    """The group to reduce over: the one given, else a DistributedDataParallel model's own, else None (no
    communication)."""
    if process_group is not None:
        return process_group
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return model.process_group
    return None


def all_reduce_sums(tensors: list[Tensor], counts: list[float], process_group: Any) -> tuple[list[Tensor], list[float]]:
    """The sums over the ranks of each tensor and each count: one flat buffer per dtype and one for the counts, so a
    model's factors cost two or three collective calls, not one per factor."""
    if process_group is None:
        return tensors, counts
    totals = torch.tensor(counts, dtype=torch.float64, device=_device(tensors))
    dist.all_reduce(totals, group=process_group)
    reduced = list(tensors)
    for dtype in sorted({t.dtype for t in tensors}, key=str):
        chosen = [j for j, t in enumerate(tensors) if t.dtype == dtype]
        flat = torch.cat([tensors[j].reshape(-1) for j in chosen])
        dist.all_reduce(flat, group=process_group)
        for j, part in zip(chosen, torch.split(flat, [tensors[j].numel() for j in chosen])):
            reduced[j] = part.view_as(tensors[j])
    return reduced, totals.tolist()


def _device(tensors: list[Tensor]) -> torch.device:
    """NCCL reduces only CUDA tensors: the counts go where the factors are."""
    return tensors[0].device if tensors else torch.device("cpu")

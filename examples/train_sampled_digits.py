"""Train a small CNN on scikit-learn's digits with exact gradients and with tensor-dropout weight gradients.

    python examples/train_sampled_digits.py [--epochs 8] [--batch 128] [--over positions|batch|block] [--threads 1]

Three runs from the same initial weights and the same batches, Adam at learning rate 0.01: the exact backward pass,
and `tncompiler.sampled(model, p=...)` at p = 0.5 and p = 0.25, which keeps each row of the first spatial output
axis (or each example, with --over batch; a random contiguous block of p·batch examples, with --over block) with
probability p in the weight gradients of the layers (the forward pass and the input gradients stay exact). Prints, per
epoch, the training loss, the test accuracy and the seconds the epoch took (wall clock, and the process's CPU time,
which other work on a busy machine does not inflate), then each run's totals against the exact run's. A few seconds in
all on one core.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn
from train_kfac_digits import cnn, data  # the CNN and the split of examples/train_kfac_digits.py

import tncompiler

Tensor = torch.Tensor


def epoch(model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, order: Tensor, batch: int) -> float:
    """One pass over the training set; its mean loss."""
    total = 0.0
    for indices in order.split(batch):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x[indices]), y[indices])
        loss.backward()
        optimizer.step()
        total += loss.item() * len(indices)
    return total / len(x)


def train(p: float, over: str, epochs: int, batch: int) -> tuple[float, float, float]:
    """Per epoch: loss, test accuracy, wall-clock and CPU seconds; returns the final accuracy and the seconds (wall,
    CPU) of all epochs. One untimed epoch on a copy of the model first builds the kernels' primitives for the
    shapes this run gives (otherwise the first run timed would pay for them)."""
    (x, y), (x_test, y_test) = data()
    model = cnn()
    warm = copy.deepcopy(model)
    with tncompiler.sampled(warm, p=p, over=over):  # type: ignore[arg-type]
        epoch(warm, torch.optim.Adam(warm.parameters(), lr=0.01), x, y, torch.randperm(len(x)), batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    orders = torch.Generator().manual_seed(1)  # the same batches for every run
    draws = torch.Generator().manual_seed(2)
    name = "exact" if p == 1 else f"p={p} {over}"
    wall = cpu = accuracy = 0.0
    for number in range(1, epochs + 1):
        order = torch.randperm(len(x), generator=orders)
        start, start_cpu = time.perf_counter(), time.process_time()
        with tncompiler.sampled(model, p=p, over=over, generator=draws):  # type: ignore[arg-type]
            loss = epoch(model, optimizer, x, y, order, batch)
        spent, spent_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        wall, cpu = wall + spent, cpu + spent_cpu
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        timing = f"{spent:.3f} s ({spent_cpu:.3f} s CPU)"
        print(f"{name:>16}  epoch {number}  loss {loss:.3f}  test accuracy {accuracy:.3f}  {timing}")
    print(f"{name:>16}  {wall:.2f} s for {epochs} epochs ({cpu:.2f} s CPU)\n")
    return accuracy, wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--over", choices=("positions", "batch", "block"), default="positions")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    results = {p: train(p, args.over, args.epochs, args.batch) for p in (1.0, 0.5, 0.25)}
    exact_wall, exact_cpu = results[1.0][1:]
    for p, (accuracy, wall, cpu) in results.items():
        label = "exact" if p == 1 else f"p={p}"
        print(
            f"{label:>8}: test accuracy {accuracy:.3f}, {wall:.2f} s ({wall / exact_wall:.2f} of exact), "
            f"{cpu:.2f} s CPU ({cpu / exact_cpu:.2f})"
        )


if __name__ == "__main__":
    main()

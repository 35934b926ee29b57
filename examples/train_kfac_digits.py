"""Train a small CNN on scikit-learn's digits with tncompiler.KFAC + SGD, plain SGD and Adam.

    python examples/train_kfac_digits.py [--epochs 5] [--threads 1]      (or: make demo-models)

Prints the training loss and the test accuracy after each epoch, and the wall-clock time of each run. KFAC's factors
come from the layers' compiled `.tnd` functions (tncompiler.layer_source writes them); the first run compiles them
into the disk cache (~/.cache/tncompiler), later runs load them.
"""

from __future__ import annotations

import argparse
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import tncompiler

Tensor = torch.Tensor


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 3 * 3, 10),
    )  # fmt: skip


def data() -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    train, test = order[:1500], order[1500:]
    return (x[train], y[train]), (x[test], y[test])


def train(name: str, epochs: int) -> None:
    (x, y), (x_test, y_test) = data()
    model = cnn()
    loss_func = nn.CrossEntropyLoss()
    kfac = None
    if name == "KFAC + SGD":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        kfac = tncompiler.KFAC(model, loss_func, damping=1e-2, update_every=5, invert_every=20, kl_clip=1e-2, lr=0.1)
    elif name == "SGD":
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    order = torch.Generator().manual_seed(1)
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        total = 0.0
        for batch in torch.randperm(len(x), generator=order).split(64):
            optimizer.zero_grad()
            loss = loss_func(model(x[batch]), y[batch])
            loss.backward()
            if kfac is not None:
                kfac.step()  # preconditions the layers' gradients in place
            optimizer.step()
            total += loss.item() * len(batch)
        with torch.no_grad():
            accuracy = (model(x_test).argmax(1) == y_test).float().mean().item()
        print(f"{name:>10}  epoch {epoch}  loss {total / len(x):.3f}  test accuracy {accuracy:.3f}")
    print(f"{name:>10}  {time.perf_counter() - start:.2f} s for {epochs} epochs\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tncompiler.KFAC(cnn(), nn.CrossEntropyLoss()).remove()  # compile (or load) the layers before timing
    print(f"layers compiled or loaded in {time.perf_counter() - start:.2f} s\n")
    for name in ("KFAC + SGD", "SGD", "Adam"):
        train(name, args.epochs)


if __name__ == "__main__":
    main()

"""DP-SGD on scikit-learn's digits with Opacus, the convolutions' per-example gradients from tnc's compiled diagrams.

    python examples/dp_sgd_digits.py [--epochs 4] [--mode hooks|ghost] [--threads 1] [--opacus-only]

`tncompiler.integrations.opacus.register()` puts tnc's grad and norm samplers into Opacus' registries, so that
`PrivacyEngine` clips each example's gradient (grad_sample_mode="hooks") or takes each example's gradient norm for
fast gradient clipping ("ghost") from the layers' compiled `.tnd` functions. Prints the training loss, the test
accuracy, the privacy spent (epsilon at delta = 1e-5) and the time of each epoch; `--opacus-only` trains with Opacus'
own samplers instead, for comparison. The first epoch includes compiling the layers' functions (the first run,
into the disk cache ~/.cache/tncompiler) or loading them (later runs).
Needs `pip install tncompiler[opacus] scikit-learn`.
"""

from __future__ import annotations

import argparse
import time
import warnings

import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from train_kfac_digits import data  # the split of examples/train_kfac_digits.py

from tncompiler.integrations import opacus as tnc_opacus

Tensor = torch.Tensor
DELTA = 1e-5


def cnn() -> nn.Module:
    """GroupNorm, not BatchNorm: a BatchNorm mixes the examples of a batch, which per-example clipping cannot allow."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 3 * 3, 10),
    )  # fmt: skip


def train(epochs: int, mode: str) -> None:
    (x, y), (x_test, y_test) = data()
    model = cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=64)
    engine = PrivacyEngine()
    made = engine.make_private(
        module=model, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), data_loader=loader,
        noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode,
        noise_generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    private, optimizer = made[0], made[1]
    criterion, loader = (made[2], made[3]) if mode == "ghost" else (nn.CrossEntropyLoss(), made[2])
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        began, total, seen = time.perf_counter(), 0.0, 0
        for xb, yb in loader:  # Poisson sampling: batches of varying size, possibly empty
            if len(xb) == 0:
                continue
            optimizer.zero_grad()
            loss = criterion(private(xb), yb)
            loss.backward()
            optimizer.step()
            total, seen = total + loss.item() * len(xb), seen + len(xb)
        private.eval()
        with torch.no_grad():
            accuracy = (private(x_test).argmax(1) == y_test).float().mean().item()
        private.train()
        epsilon = engine.get_epsilon(DELTA)
        print(f"epoch {epoch}  loss {total / max(seen, 1):.3f}  test accuracy {accuracy:.3f}  "
              f"epsilon {epsilon:.2f} (delta {DELTA:g})  {time.perf_counter() - began:.2f} s")  # fmt: skip
    print(f"{time.perf_counter() - start:.2f} s for {epochs} epochs (the first compiles or loads tnc's functions)")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--mode", choices=("hooks", "ghost"), default="hooks")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--opacus-only", action="store_true", help="Opacus' own samplers, for comparison")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Full backward hook is firing")  # the first layer's input
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    if not args.opacus_only:
        tnc_opacus.register()
    print(f"DP-SGD on digits, grad_sample_mode={args.mode!r}, samplers: {'Opacus' if args.opacus_only else 'tnc'}")
    try:
        train(args.epochs, args.mode)
    finally:
        tnc_opacus.unregister()


if __name__ == "__main__":
    main()

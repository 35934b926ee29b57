"""The model-level curvature of a small CNN on scikit-learn's digits, from the layers' diagrams.

    python examples/curvature_digits.py          (or: make demo-models)

Prints, for each parameter, every quantity `tncompiler.curvature` gives (one forward and one backward pass on a batch
of 256 images): the per-example gradients' squared norms, the sum of squared gradients, the gradient variance and the
exact and Monte-Carlo GGN diagonals, with BackPACK's scaling, and checks that the per-example gradients sum to the
gradient an ordinary backward pass leaves in `.grad`.
"""

from __future__ import annotations

import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import tncompiler

QUANTITIES = ["batch_grad", "batch_l2", "sum_grad_squared", "variance", "diag_ggn_exact", "diag_ggn_mc"]


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, groups=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 3 * 3, 10),
    )  # fmt: skip
    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images[:256], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels[:256])
    start = time.perf_counter()
    found = tncompiler.curvature(
        model, nn.CrossEntropyLoss(), (x, y), quantities=QUANTITIES, generator=torch.Generator().manual_seed(0)
    )
    seconds = time.perf_counter() - start
    print(f"tncompiler.curvature: {len(QUANTITIES)} quantities of a digits CNN, batch 256, in {seconds:.2f} s "
          "(the first run compiles the layers' diagrams into the cache)")  # fmt: skip
    print(f"{'parameter':10s} {'shape':>14s} {'mean |g_n|^2':>13s} {'sum g^2':>10s} {'variance':>10s} "
          f"{'GGN diag':>10s} {'GGN mc':>10s}")  # fmt: skip
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None
        summed = found["batch_grad"][name].sum(0)
        assert torch.allclose(summed, parameter.grad, rtol=1e-4, atol=1e-6), name  # Σ_n g_n is the gradient
        print(
            f"{name:10s} {str(tuple(parameter.shape)):>14s} {found['batch_l2'][name].mean():13.3e} "
            f"{found['sum_grad_squared'][name].sum():10.3e} {found['variance'][name].sum():10.3e} "
            f"{found['diag_ggn_exact'][name].sum():10.3e} {found['diag_ggn_mc'][name].sum():10.3e}"
        )
    print("(each column summed over the parameter's entries; the per-example gradients sum to .grad)")


if __name__ == "__main__":
    main()

"""Training with a sampled backward pass: `y_sampled_autograd` in a small CNN on scikit-learn's digits.

The convolution layer is compiled from a `.tnd` file whose weight VJP is sampled (tensor dropout over the output
rows o1, or over the batch n); its autograd.Function computes y exactly and, in the backward pass, the sampled
weight VJP. A few epochs of Adam must lower the loss as they do with the exact backward pass.
"""

from __future__ import annotations

import types
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

import tncompiler

Tensor = torch.Tensor

# 1 -> 8 channels, 3x3 kernel, padding 1: the 8x8 digits stay 8x8.
LAYER = """
index n
index c = 1, d = 8
index i1 = 8, i2 = 8, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
input w[d, c, k1, k2]
input b[d]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]
"""
SAMPLED = {
    "rows": LAYER + "gw = sample(vjp(y, w), index=o1, p=0.5)\n",
    "batch": LAYER + "gw = sample(vjp(y, w), index=n, p=0.5)\n",
    "exact": LAYER + "gw = sample(vjp(y, w), index=o1, p=1)\n",  # the same class, nothing dropped
}
EPOCHS, BATCH = 3, 64


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def digits() -> tuple[Tensor, Tensor]:
    datasets = pytest.importorskip("sklearn.datasets")
    images, labels = datasets.load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return x, torch.tensor(labels)


@pytest.fixture(scope="module")
def modules() -> dict[str, types.ModuleType]:
    return {name: tncompiler.load_source(text, f"{name}.tnd") for name, text in SAMPLED.items()}


Layer = Callable[[Tensor, Tensor, Tensor], Tensor]


class Net(torch.nn.Module):
    """conv (compiled) -> ReLU -> flatten -> linear."""

    def __init__(self, layer: Layer) -> None:
        super().__init__()
        self.layer = layer
        self.w = torch.nn.Parameter(0.3 * torch.randn(8, 1, 3, 3))
        self.b = torch.nn.Parameter(torch.zeros(8))
        self.head = torch.nn.Linear(8 * 8 * 8, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.layer(x, self.w, self.b)).flatten(1))


def train(layer: Layer, digits: tuple[Tensor, Tensor]) -> tuple[list[float], float]:
    """Per-epoch mean losses, with the mean loss of the untrained model first; and the final accuracy."""
    x, labels = digits
    torch.manual_seed(0)
    net = Net(layer)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    with torch.no_grad():
        losses = [F.cross_entropy(net(x), labels).item()]
    for _ in range(EPOCHS):
        total = 0.0
        for batch in torch.randperm(len(x)).split(BATCH):
            loss = F.cross_entropy(net(x[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        losses.append(total / len(x))
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == labels).float().mean().item()
    return losses, accuracy


def sampled_layer(module: types.ModuleType, seed: int = 1) -> Layer:
    generator = torch.Generator().manual_seed(seed)

    def layer(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
        return module.y_sampled_autograd.apply(x, w, b, generator)

    return layer


@pytest.mark.parametrize("kind", ["rows", "batch"])
def test_a_sampled_weight_gradient_trains_the_cnn(
    modules: dict[str, types.ModuleType], digits: tuple[Tensor, Tensor], kind: str
) -> None:
    losses, accuracy = train(sampled_layer(modules[kind]), digits)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses
    assert losses[-1] < losses[1], losses  # it goes on learning after the first epoch
    assert accuracy > 0.85


def test_the_exact_backward_pass_trains_the_cnn(
    modules: dict[str, types.ModuleType], digits: tuple[Tensor, Tensor]
) -> None:
    """Sanity checks: plain autograd through the generated y, and the autograd class with p = 1, both train."""
    plain, plain_accuracy = train(modules["exact"].y, digits)
    assert plain[-1] < 0.7 * plain[0], plain
    assert plain_accuracy > 0.85
    full, _ = train(sampled_layer(modules["exact"]), digits)
    assert full[-1] < 0.7 * full[0], full
    # with nothing dropped, the class computes the same gradients, so the same training run up to rounding
    assert abs(full[-1] - plain[-1]) < 1e-3 * plain[0]


def test_the_class_with_p_one_has_autograds_gradients(modules: dict[str, types.ModuleType]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(8, generator=g, dtype=torch.float64, requires_grad=True)
    grad_y = torch.randn(5, 8, 8, 8, generator=g, dtype=torch.float64)
    out = modules["exact"].y_sampled_autograd.apply(x, w, b, None)
    reference = F.conv2d(x, w, b, padding=1)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-10)
    for ours, theirs in zip(
        torch.autograd.grad(out, (x, w, b), grad_y), torch.autograd.grad(reference, (x, w, b), grad_y)
    ):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10 * theirs.abs().max().item())


def test_the_sampled_gradient_differs_from_the_exact_one(modules: dict[str, types.ModuleType]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 1, 8, 8, generator=g)
    w = torch.randn(8, 1, 3, 3, generator=g, requires_grad=True)
    b = torch.randn(8, generator=g, requires_grad=True)
    out = modules["rows"].y_sampled_autograd.apply(x, w, b, torch.Generator().manual_seed(3))
    sampled_w, sampled_b = torch.autograd.grad(out.square().sum(), (w, b))
    exact_w, exact_b = torch.autograd.grad(F.conv2d(x, w, b, padding=1).square().sum(), (w, b))
    assert not torch.allclose(sampled_w, exact_w)
    torch.testing.assert_close(sampled_b, exact_b)  # only w's VJP is sampled

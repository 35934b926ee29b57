"""`tncompiler.kfac_factors` against curvlinops' KFACLinearOperator (nn.Conv2d and nn.Linear, which it supports) for
every (loss, reduction, fisher, approx), and against a torch-only re-implementation of curvlinops' procedure for every
layer type (Conv1d/2d/3d, their transposes, grouped and depthwise layers, Linear with weight sharing); the
re-implementation is itself checked against curvlinops. Grouped layers: exact per-group blocks, checked against
curvlinops on the same layer split into one convolution per group."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import tncompiler
from tests.model.model_references import (
    Factors,
    curvlinops_factors,
    reference_factors,
    relative_error,
    worst_error,
)
from tncompiler.model import layers

Tensor = torch.Tensor
TOLERANCE = 1e-10  # float64: max |error| / max |reference| per factor
LOSSES = {
    "ce-mean": lambda: nn.CrossEntropyLoss(),
    "ce-sum": lambda: nn.CrossEntropyLoss(reduction="sum"),
    "mse-mean": lambda: nn.MSELoss(),
    "mse-sum": lambda: nn.MSELoss(reduction="sum"),
}
CLASSES = 3


class Transpose(nn.Module):
    """[n, c, positions...] -> [n, positions, c]: a linear layer after it shares its weight over the positions."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


def conv2d_net() -> nn.Module:
    """Conv2d (bias or none, strided, dilated, 'same') and Linear (with and without weight sharing), which curvlinops
    supports."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(inplace=True),  # an in-place op right after a layer: its output gradient must still be the layer's
        nn.Conv2d(4, 4, (3, 2), stride=2, dilation=(1, 2), bias=False),
        nn.Tanh(),
        nn.Conv2d(4, 6, 3, padding="same"),
        Transpose(),
        nn.Linear(6, 5),  # on [n, 9, 6]: weight sharing over 9 positions
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(45, CLASSES),
    ).double()


class EveryLayer(nn.Module):
    """Conv1d, ConvTranspose1d (grouped, output padding), depthwise Conv2d, ConvTranspose2d (dilated), Conv3d ('same'
    with an even kernel: asymmetric padding), ConvTranspose3d, and Linear with and without weight sharing."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1d = nn.Conv1d(2, 4, 3, stride=2, padding=1)
        self.tconv1d = nn.ConvTranspose1d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.depthwise = nn.Conv2d(4, 4, 2, groups=4, bias=False)
        self.tconv2d = nn.ConvTranspose2d(4, 2, (2, 3), stride=(1, 2), dilation=(2, 1))
        self.conv3d = nn.Conv3d(2, 2, 2, padding="same")
        self.tconv3d = nn.ConvTranspose3d(2, 1, 2, stride=2, bias=False)
        self.shared = nn.Linear(36, 4)
        self.head = nn.Linear(24, CLASSES)

    def forward(self, x: Tensor) -> Tensor:  # x: [n, 2, 9]
        h = torch.tanh(self.tconv1d(torch.tanh(self.conv1d(x))))  # [n, 4, 10]
        h = torch.tanh(self.tconv2d(torch.tanh(self.depthwise(h.view(-1, 4, 2, 5)))))  # [n, 2, 3, 9]
        h = torch.tanh(self.tconv3d(torch.tanh(self.conv3d(h.view(-1, 2, 3, 3, 3)))))  # [n, 1, 6, 6, 6]
        h = torch.tanh(self.shared(h.view(-1, 6, 36)))  # [n, 6, 4]
        return self.head(h.flatten(1))  # type: ignore[no-any-return]


def every_layer_net() -> nn.Module:
    torch.manual_seed(0)
    return EveryLayer().double()


def batches(loss: str, shape: tuple[int, ...], sizes: tuple[int, ...] = (5, 3, 1)) -> list[tuple[Tensor, Tensor]]:
    """Batches of uneven sizes, with labels (cross-entropy) or regression targets."""
    generator = torch.Generator().manual_seed(1)
    data = []
    for size in sizes:
        x = torch.randn(size, *shape, generator=generator, dtype=torch.float64)
        if loss.startswith("ce"):
            target = torch.randint(0, CLASSES, (size,), generator=generator)
        else:
            target = torch.randn(size, CLASSES, generator=generator, dtype=torch.float64)
        data.append((x, target))
    return data


def ours(
    model: nn.Module, loss: str, data: list[tuple[Tensor, Tensor]], approx: str, fisher: str, **kw: object
) -> Factors:
    return tncompiler.kfac_factors(model, LOSSES[loss](), data, approx=approx, fisher=fisher, **kw)  # type: ignore


COMBINATIONS = list(itertools.product(LOSSES, ["empirical", "type-2", "mc"], ["expand", "reduce"]))


@pytest.mark.parametrize(("loss", "fisher", "approx"), COMBINATIONS)
def test_factors_equal_curvlinops(loss: str, fisher: str, approx: str) -> None:
    """Every (loss, reduction, fisher, approx): equal to curvlinops to rounding; mc with the same draws (curvlinops'
    seed, two samples), so equal as well."""
    model, data = conv2d_net(), batches(loss, (2, 8, 8))
    mc = 2 if fisher == "mc" else 1
    expected = curvlinops_factors(model, LOSSES[loss](), data, approx, fisher, mc_samples=mc)
    generator = torch.Generator().manual_seed(2147483647)
    actual = ours(model, loss, data, approx, fisher, mc_samples=mc, generator=generator)
    assert worst_error(actual, expected) <= TOLERANCE


@pytest.mark.parametrize("loss", ["ce-mean", "mse-sum"])
def test_mc_factors_are_in_distribution(loss: str) -> None:
    """With many samples the mc gradient factor approaches the type-2 one (its expectation); the input factor does
    not depend on the draws."""
    model, data = conv2d_net(), batches(loss, (2, 8, 8), sizes=(6,))
    exact = curvlinops_factors(model, LOSSES[loss](), data, "expand", "type-2")
    few = ours(model, loss, data, "expand", "mc", mc_samples=4, generator=torch.Generator().manual_seed(0))
    many = ours(model, loss, data, "expand", "mc", mc_samples=400, generator=torch.Generator().manual_seed(0))
    for name in exact:
        assert relative_error(many[name][0], exact[name][0]) <= TOLERANCE
        far, near = relative_error(few[name][1], exact[name][1]), relative_error(many[name][1], exact[name][1])
        assert near < 0.1, (name, near)
        assert near < far, (name, near, far)


REFERENCE_CHECKS = list(itertools.product(["ce-mean", "mse-mean"], ["empirical", "type-2"], ["expand", "reduce"]))


@pytest.mark.parametrize(("loss", "fisher", "approx"), REFERENCE_CHECKS)
def test_reference_equals_curvlinops(loss: str, fisher: str, approx: str) -> None:
    """The torch-only reference used for the other layers reproduces curvlinops where curvlinops applies."""
    model, data = conv2d_net(), batches(loss, (2, 8, 8), sizes=(4, 2))
    expected = curvlinops_factors(model, LOSSES[loss](), data, approx, fisher)
    assert worst_error(reference_factors(model, LOSSES[loss](), data, approx, fisher), expected) <= TOLERANCE


@pytest.mark.parametrize(("loss", "fisher", "approx"), REFERENCE_CHECKS)
def test_every_layer_type_against_the_reference(loss: str, fisher: str, approx: str) -> None:
    """Conv1d/2d/3d, their transposes, grouped and depthwise layers, linear layers with weight sharing."""
    model, data = every_layer_net(), batches(loss, (2, 9))
    expected = reference_factors(model, LOSSES[loss](), data, approx, fisher)
    assert worst_error(ours(model, loss, data, approx, fisher), expected) <= TOLERANCE


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_every_layer_type_mc_in_distribution(approx: str) -> None:
    model, data = every_layer_net(), batches("ce-mean", (2, 9), sizes=(6,))
    exact = reference_factors(model, LOSSES["ce-mean"](), data, approx, "type-2")
    many = ours(model, "ce-mean", data, approx, "mc", mc_samples=400, generator=torch.Generator().manual_seed(0))
    assert max(relative_error(many[name][1], exact[name][1]) for name in exact) < 0.1


class PerGroup(nn.Module):
    """A grouped Conv2d as one ungrouped Conv2d per group, on its share of the channels, outputs concatenated."""

    def __init__(self, grouped: nn.Conv2d) -> None:
        super().__init__()
        groups = grouped.groups
        self.parts = nn.ModuleList()
        for g, (weight, bias) in enumerate(zip(grouped.weight.chunk(groups), grouped.bias.chunk(groups))):  # type: ignore[union-attr]
            part = nn.Conv2d(
                grouped.in_channels // groups,
                grouped.out_channels // groups,
                grouped.kernel_size,
                stride=grouped.stride,
                padding=grouped.padding,
                dilation=grouped.dilation,
            ).double()
            part.weight.data.copy_(weight)
            part.bias.data.copy_(bias)  # type: ignore[union-attr]
            self.parts.append(part)
            del g

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([part(chunk) for part, chunk in zip(self.parts, x.chunk(len(self.parts), dim=1))], dim=1)


def grouped_net(split: bool) -> nn.Module:
    torch.manual_seed(0)
    grouped = nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2).double()
    head = nn.Sequential(nn.Tanh(), nn.Flatten(), nn.Linear(4 * 4 * 4, CLASSES)).double()
    return nn.Sequential(PerGroup(grouped) if split else grouped, *head)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_grouped_blocks_are_the_groups_own_factors(approx: str) -> None:
    """Block g of a grouped layer's factors equals curvlinops' factors of group g's convolution on its own (curvlinops
    itself, on the grouped layer, averages the groups' inputs into one A and keeps the full B)."""
    data = batches("ce-mean", (6, 8, 8), sizes=(4, 3))
    split = curvlinops_factors(grouped_net(True), nn.CrossEntropyLoss(), data, approx, "empirical")
    actual = ours(grouped_net(False), "ce-mean", data, approx, "empirical")
    a, b = actual["0"]
    assert a.shape == (2, 3 * 9 + 1, 3 * 9 + 1) and b.shape == (2, 2, 2)
    for g in range(2):
        expected_a, expected_b = split[f"0.parts.{g}"]
        assert relative_error(a[g], expected_a) <= TOLERANCE
        assert relative_error(b[g], expected_b) <= TOLERANCE
    # curvlinops' own B of the grouped layer holds ours on its diagonal blocks, and more
    full_b = curvlinops_factors(grouped_net(False), nn.CrossEntropyLoss(), data, approx, "empirical")["0"][1]
    assert relative_error(torch.block_diag(*b), full_b * torch.block_diag(*torch.ones(2, 2, 2))) <= TOLERANCE


def test_factors_never_unfold(monkeypatch: pytest.MonkeyPatch) -> None:
    """The factors come from kfac_expand / kfac_reduce / unfold_sum, never from the unfolded input."""
    model = conv2d_net()
    for _, module in layers.supported_layers(model):
        monkeypatch.setattr(layers.layer_functions(module), "unfold", _refuse)
    for approx in ("expand", "reduce"):
        ours(model, "ce-mean", batches("ce-mean", (2, 8, 8)), approx, "empirical")


def _refuse(*args: object, **kwargs: object) -> Tensor:
    raise AssertionError("unfold called")


def test_float32_and_a_layer_used_twice() -> None:
    """A layer called twice in one forward pass counts each call, as curvlinops' hooks do; float32 throughout."""
    torch.manual_seed(0)
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.Tanh(), shared, nn.Tanh(), nn.Linear(4, CLASSES))
    data = [(x.float(), y) for x, y in batches("ce-mean", (4,), sizes=(7, 2))]
    expected = curvlinops_factors(model, nn.CrossEntropyLoss(), data, "expand", "type-2")
    actual = tncompiler.kfac_factors(model, nn.CrossEntropyLoss(), data, fisher="type-2")
    assert actual["0"][0].dtype == torch.float32
    assert worst_error(actual, expected) <= 1e-5


def test_errors_name_what_is_wrong() -> None:
    data = batches("ce-mean", (2, 8, 8))
    reflect = nn.Sequential(nn.Conv2d(2, 2, 3, padding_mode="reflect", padding=1), nn.Flatten(), nn.Linear(128, 3))
    with pytest.raises(ValueError, match=r"'0' \(Conv2d.*padding_mode='reflect'"):
        tncompiler.kfac_factors(reflect.double(), nn.CrossEntropyLoss(), data)
    with pytest.raises(TypeError, match="NLLLoss"):
        tncompiler.kfac_factors(conv2d_net(), nn.NLLLoss(), data)
    with pytest.raises(ValueError, match="approx"):
        tncompiler.kfac_factors(conv2d_net(), nn.CrossEntropyLoss(), data, approx="kfc")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mc_samples"):
        tncompiler.kfac_factors(conv2d_net(), nn.CrossEntropyLoss(), data, fisher="type-2", mc_samples=3)
    with pytest.raises(ValueError, match="no data"):
        tncompiler.kfac_factors(conv2d_net(), nn.CrossEntropyLoss(), [])
    with pytest.raises(ValueError, match="reduction"):
        tncompiler.kfac_factors(conv2d_net(), nn.CrossEntropyLoss(reduction="none"), data)


def test_factor_shapes() -> None:
    """[in (+1 for a bias), in] and [out, out]; grouped layers [g, ...]."""
    model, data = every_layer_net(), batches("ce-mean", (2, 9))
    factors = ours(model, "ce-mean", data, "expand", "empirical")
    shapes = {name: (tuple(a.shape), tuple(b.shape)) for name, (a, b) in factors.items()}
    assert shapes["conv1d"] == ((2 * 3 + 1,) * 2, (4, 4))
    assert shapes["tconv1d"] == ((2, 2 * 3 + 1, 2 * 3 + 1), (2, 2, 2))
    assert shapes["depthwise"] == ((4, 4, 4), (4, 1, 1))
    assert shapes["tconv3d"] == ((2 * 8,) * 2, (1, 1))
    assert shapes["shared"] == ((37, 37), (4, 4))
    assert math.isclose(float(factors["conv1d"][0][-1, -1]), 1.0)  # the bias's corner: 1 per example, averaged


def test_autocast_activations_give_factors_in_the_weights_precision() -> None:
    """Under bfloat16 autocast the activations are bfloat16; the factors are computed in float32 with autocast off,
    so they differ from float32's only by the activations' rounding."""
    model, data = conv2d_net().float(), [(x.float(), y) for x, y in batches("ce-mean", (2, 8, 8))]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = tncompiler.kfac_factors(model, nn.CrossEntropyLoss(), data)
    full = tncompiler.kfac_factors(model, nn.CrossEntropyLoss(), data)
    for name, (a, b) in mixed.items():
        assert a.dtype == b.dtype == torch.float32
        assert relative_error(a, full[name][0]) < 3e-2 and relative_error(b, full[name][1]) < 3e-2, name

"""`with tncompiler.sampled(model, p, over)`: exact forward pass and input gradients, p = 1 gives the exact
gradients, p = 0.5 gives unbiased weight gradients (the mean of many draws within 3 standard errors of autograd's),
for every layer type, over positions, over the batch and over a block of the batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tncompiler
from tests.model.model_references import relative_error
from tests.model.test_model_factors import every_layer_net

Tensor = torch.Tensor


def _gradients(model: nn.Module, x: Tensor, cotangent: Tensor) -> tuple[Tensor, list[Tensor]]:
    """The output and the gradients of <output, cotangent> in x and every parameter."""
    leaf = x.clone().requires_grad_()
    output = model(leaf)
    gradients = torch.autograd.grad(output, [leaf, *model.parameters()], cotangent)
    return output.detach(), list(gradients)


def _example(batch: int = 6) -> tuple[nn.Module, Tensor, Tensor]:
    model = every_layer_net()
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(batch, 2, 9, generator=generator, dtype=torch.float64)
    cotangent = torch.randn(batch, 3, generator=generator, dtype=torch.float64)
    return model, x, cotangent


@pytest.mark.parametrize("over", ["positions", "batch", "block"])
def test_p_one_gives_the_exact_gradients(over: str) -> None:
    model, x, cotangent = _example()
    expected_output, expected = _gradients(model, x, cotangent)
    with tncompiler.sampled(model, p=1.0, over=over):  # type: ignore[arg-type]
        output, actual = _gradients(model, x, cotangent)
    assert relative_error(output, expected_output) <= 1e-12
    for (name, _), a, e in zip([("x", None), *model.named_parameters()], actual, expected):
        assert relative_error(a, e) <= 1e-12, name


@pytest.mark.parametrize("over", ["positions", "batch", "block"])
def test_half_the_work_is_unbiased(over: str) -> None:
    """200 draws with p = 0.5: per weight, the mean of a fixed projection of the estimates is within 3 standard
    errors of the exact value; the forward pass, the input gradient and the biases' gradients are exact each time,
    and the draws do differ."""
    model, x, cotangent = _example()
    expected_output, expected = _gradients(model, x, cotangent)
    names = ["x"] + [name for name, _ in model.named_parameters()]
    generator = torch.Generator().manual_seed(0)
    draws: list[list[Tensor]] = []
    with tncompiler.sampled(model, p=0.5, over=over, generator=generator):  # type: ignore[arg-type]
        for _ in range(200):
            output, gradients = _gradients(model, x, cotangent)
            assert relative_error(output, expected_output) <= 1e-12
            draws.append(gradients)
    directions = torch.Generator().manual_seed(1)
    for j, name in enumerate(names):
        estimates = torch.stack([draw[j] for draw in draws])
        exact_everywhere = (
            name == "x" or name.endswith("bias") or (over == "positions" and name.startswith(("shared", "head")))
        )
        if exact_everywhere:  # inputs, biases, and linear layers over positions (they have none) are never sampled
            assert relative_error(estimates, expected[j].expand_as(estimates)) <= 1e-12, name
            continue
        projection = torch.randn(expected[j].shape, generator=directions, dtype=torch.float64)
        values = (estimates * projection).flatten(1).sum(1)
        exact = float((expected[j] * projection).sum())
        error = values.std().item() / len(values) ** 0.5
        assert values.std() > 0, name  # something was dropped
        assert abs(values.mean().item() - exact) <= 3 * error, (name, values.mean().item(), exact, error)


def test_same_generator_same_draws_and_the_forward_is_restored() -> None:
    model, x, cotangent = _example()
    runs = []
    for _ in range(2):
        with tncompiler.sampled(model, p=0.5, generator=torch.Generator().manual_seed(3)):
            runs.append(_gradients(model, x, cotangent)[1])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert not any("forward" in vars(module) for module in model.modules())
    with pytest.raises(ZeroDivisionError), tncompiler.sampled(model, p=0.5):
        raise ZeroDivisionError
    assert not any("forward" in vars(module) for module in model.modules())


def test_settings_are_checked() -> None:
    model = every_layer_net()
    with pytest.raises(ValueError, match="p must be"), tncompiler.sampled(model, p=0.0):
        pass
    with pytest.raises(ValueError, match="over must be"), tncompiler.sampled(model, over="channels"):  # type: ignore[arg-type]
        pass


def test_sweeping_p_compiles_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """`sampled` works out each layer's plan once per spec and `over` and compiles nothing (the compiled
    `sample(vjp(y, w), ...)` of sampled_source is the reference its estimates are checked against, draw for draw, in
    tests/model/test_sampled_speed.py): sweeping p builds no new plan and loads no module, and the layer's text does
    not depend on p."""
    from tncompiler.model import layers, sampling

    model, x, cotangent = _example()
    with tncompiler.sampled(model, p=0.5):
        _gradients(model, x, cotangent)
    plans = dict(sampling._PLANS)
    monkeypatch.setattr(layers, "load_compiled", None)  # a compile would fail
    for p in (0.25, 0.75, 1.0):
        with tncompiler.sampled(model, p=p, generator=torch.Generator().manual_seed(0)):
            _gradients(model, x, cotangent)
    assert plans == sampling._PLANS
    layer = nn.ConvTranspose2d(2, 3, 3, stride=2)
    assert "p=0.5" in layers.sampled_source(layer, "positions")

"""`tncompiler.KFAC`: its factors are `kfac_factors` of the batch (then running averages), its preconditioned
gradients are the damped Kronecker solves written out densely with torch.kron (grouped layers block by block, a
transpose convolution's weight in its own layout, the bias as the last column), KL clipping, the update and
inversion intervals, and training a CNN on scikit-learn's digits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import tncompiler
from tests.model.model_references import LAYERS, relative_error, worst_error
from tests.model.test_model_factors import batches, every_layer_net

Tensor = torch.Tensor
TOLERANCE = 1e-10


def _backward(model: nn.Module, loss_func: nn.Module, x: Tensor, target: Tensor) -> None:
    model.zero_grad()
    loss_func(model(x), target).backward()


@pytest.mark.parametrize("fisher", ["empirical", "type-2", "mc"])
@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_the_first_factors_are_the_batchs(fisher: str, approx: str) -> None:
    """After one backward pass and step, the factors are kfac_factors of that batch (mc: the same draws)."""
    model, ((x, target),) = every_layer_net(), batches("ce-mean", (2, 9), sizes=(5,))
    kfac = tncompiler.KFAC(
        model, nn.CrossEntropyLoss(), update_every=1, fisher=fisher, approx=approx,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    _backward(model, nn.CrossEntropyLoss(), x, target)
    kfac.step()
    expected = tncompiler.kfac_factors(
        every_layer_net(), nn.CrossEntropyLoss(), [(x, target)], fisher=fisher, approx=approx,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(3),
    )  # fmt: skip
    assert worst_error(kfac.factors, expected) <= TOLERANCE


def _matrix(module: nn.Module, weight: Tensor, bias: Tensor | None) -> Tensor:
    """[g, out, in (+1)]: the weight as KFAC's factors see it (a transpose convolution's is [(g c), d, k...])."""
    groups = getattr(module, "groups", 1)
    if isinstance(module, nn.modules.conv._ConvTransposeNd):
        matrix = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1).transpose(1, 2)
        matrix = matrix.reshape(groups, weight.shape[1], -1)
    else:
        matrix = weight.reshape(groups, weight.shape[0] // groups, -1)
    if bias is not None:
        matrix = torch.cat([matrix, bias.reshape(groups, -1, 1)], dim=2)
    return matrix


def _dense_solve(a: Tensor, b: Tensor, gradient: Tensor, inverse: str, damping: float) -> Tensor:
    """Per group: vec(Δ) = K⁻¹ vec(G) with K = B ⊗ A + λ I (row-major vec of G [out, in]), or the factored damping."""
    results = []
    for a_g, b_g, g_g in zip(a, b, gradient):
        if inverse == "eigh":
            kron = torch.kron(b_g, a_g) + damping * torch.eye(a_g.shape[0] * b_g.shape[0], dtype=a_g.dtype)
        else:
            pi = math.sqrt((a_g.trace() / a_g.shape[0]) / (b_g.trace() / b_g.shape[0]))
            eye_a, eye_b = torch.eye(a_g.shape[0], dtype=a_g.dtype), torch.eye(b_g.shape[0], dtype=a_g.dtype)
            kron = torch.kron(b_g + math.sqrt(damping) / pi * eye_b, a_g + pi * math.sqrt(damping) * eye_a)
        results.append(torch.linalg.solve(kron, g_g.reshape(-1)).reshape(g_g.shape))
    return torch.stack(results)


@pytest.mark.parametrize("inverse", ["eigh", "cholesky"])
def test_preconditioned_gradients_are_damped_kronecker_solves(inverse: str) -> None:
    model, ((x, target),) = every_layer_net(), batches("mse-mean", (2, 9), sizes=(6,))
    damping = 1e-2
    kfac = tncompiler.KFAC(model, nn.MSELoss(), damping=damping, update_every=1, inverse=inverse)  # type: ignore[arg-type]
    _backward(model, nn.MSELoss(), x, target)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LAYERS)}
    before = {
        name: _matrix(m, m.weight.grad, None if m.bias is None else m.bias.grad).clone() for name, m in layers.items()
    }
    kfac.step()
    assert sorted(kfac.running) == sorted(layers)
    for name, (a, b) in kfac.running.items():
        module = layers[name]
        expected = _dense_solve(a, b, before[name], inverse, damping)
        actual = _matrix(module, module.weight.grad, None if module.bias is None else module.bias.grad)
        assert relative_error(actual, expected) <= 1e-8, name


def test_kl_clipping_scales_every_update_alike() -> None:
    """ν = min(1, sqrt(kl_clip / (lr² Σ Δ·g))) over all layers, as KFAC-pytorch clips."""
    ((x, target),) = batches("ce-mean", (2, 9), sizes=(6,))
    results = {}
    for clip in (None, 1e-6):
        model = every_layer_net()
        kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), update_every=1, kl_clip=clip, lr=0.1)
        _backward(model, nn.CrossEntropyLoss(), x, target)
        gradients = [p.grad.clone() for p in model.parameters()]
        kfac.step()
        results[clip] = ([p.grad.clone() for p in model.parameters()], gradients)
    clipped, _ = results[1e-6]
    free, raw = results[None]
    vg = sum(float((d * g).sum()) for d, g in zip(free, raw)) * 0.1**2
    nu = math.sqrt(1e-6 / vg)
    assert nu < 1
    for c, f in zip(clipped, free):
        assert relative_error(c, nu * f) <= TOLERANCE


def test_intervals_and_running_averages() -> None:
    """update_every=2, invert_every=3, decay 0.5: factors change on steps 0, 2, 4 (averaged), inverses on 0 and 3."""
    model = every_layer_net()
    data = batches("ce-mean", (2, 9), sizes=(4, 5, 3, 6, 2))
    kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), update_every=2, invert_every=3, factor_decay=0.5)
    seen = []
    inverses = []
    for x, target in data:
        _backward(model, nn.CrossEntropyLoss(), x, target)
        kfac.step()
        seen.append({name: a.clone() for name, (a, _) in kfac.running.items()})
        inverses.append(kfac._inverses)
    first = tncompiler.kfac_factors(every_layer_net(), nn.CrossEntropyLoss(), data[:1])
    third = tncompiler.kfac_factors(every_layer_net(), nn.CrossEntropyLoss(), data[2:3])
    name = "conv1d"
    assert relative_error(seen[0][name][0], first[name][0]) <= TOLERANCE
    assert torch.equal(seen[1][name], seen[0][name])  # step 1: no update, though the batch differs
    assert relative_error(seen[2][name][0], 0.5 * first[name][0] + 0.5 * third[name][0]) <= TOLERANCE
    assert inverses[1] is inverses[0] and inverses[2] is inverses[0]
    assert inverses[3] is not inverses[0] and inverses[4] is inverses[3]


def test_forward_passes_without_backward_are_ignored() -> None:
    """An evaluation under no_grad records nothing, and a forward pass with gradients but no backward pass (a loss
    only printed) does not enter the factors."""
    model = every_layer_net()
    (x, target), (other, _) = batches("ce-mean", (2, 9), sizes=(5, 3))
    kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), update_every=1)
    with torch.no_grad():
        model(other)
    model(other * 3)  # gradients on, never backpropagated
    _backward(model, nn.CrossEntropyLoss(), x, target)
    kfac.step()
    expected = tncompiler.kfac_factors(every_layer_net(), nn.CrossEntropyLoss(), [(x, target)])
    assert worst_error(kfac.factors, expected) <= TOLERANCE


def test_other_parameters_keep_their_gradients_and_remove_unhooks() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2 * 6 * 6, 3)).double()
    x, target = torch.randn(4, 1, 8, 8, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), update_every=1)
    _backward(model, nn.CrossEntropyLoss(), x, target)
    norm = model[1].weight.grad.clone()
    conv = model[0].weight.grad.clone()
    kfac.step()
    assert torch.equal(model[1].weight.grad, norm) and not torch.equal(model[0].weight.grad, conv)
    assert sorted(kfac.factors) == ["0", "3"]
    kfac.remove()
    assert not model[0]._forward_hooks and not model._forward_hooks and not model._forward_pre_hooks


def test_settings_are_checked() -> None:
    model = every_layer_net()
    with pytest.raises(ValueError, match="kl_clip needs"):
        tncompiler.KFAC(model, nn.CrossEntropyLoss(), kl_clip=1e-3)
    with pytest.raises(ValueError, match="inverse"):
        tncompiler.KFAC(model, nn.CrossEntropyLoss(), inverse="svd")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="update_every"):
        tncompiler.KFAC(model, nn.CrossEntropyLoss(), update_every=0)


def test_kfac_trains_a_cnn_on_digits() -> None:
    """Two epochs of SGD on KFAC's preconditioned gradients: the loss falls well below plain SGD's at the same rate
    (about 0.1 against 2.2)."""
    datasets = pytest.importorskip("sklearn.datasets")
    images, labels = datasets.load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels)
    final = {}
    for precondition in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(), nn.Flatten(),
            nn.Linear(8 * 3 * 3, 10),
        )  # fmt: skip
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        kfac = tncompiler.KFAC(
            model, nn.CrossEntropyLoss(), damping=1e-2, update_every=5, invert_every=20, kl_clip=1e-2, lr=0.1
        )
        if not precondition:
            kfac.remove()
        for _ in range(2):
            for batch in torch.randperm(len(x)).split(64):
                optimizer.zero_grad()
                nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
                if precondition:
                    kfac.step()
                optimizer.step()
        with torch.no_grad():
            final[precondition] = float(nn.functional.cross_entropy(model(x), y))
    assert final[True] < 0.5 * final[False], final
    assert final[True] < 0.3, final

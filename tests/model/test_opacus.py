"""tnc's Opacus samplers (`tncompiler.integrations.opacus`) in float64: per-example gradients and norms against
Opacus' own samplers (its unfold-based conv sampler; torch.func for the transpose convolutions, which Opacus runs
for them; its Linear norm sampler), registration and its undoing, and a PrivacyEngine step (standard and fast
gradient clipping, "mean" and "sum" losses) against the same step without tnc and against per-example gradients
from torch.func clipped by hand."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

pytest.importorskip("opacus")

from opacus import PrivacyEngine  # noqa: E402
from opacus.grad_sample import GradSampleModule  # noqa: E402
from opacus.grad_sample.conv import compute_conv_grad_sample  # noqa: E402
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient  # noqa: E402
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import (  # noqa: E402
    GradSampleModuleFastGradientClipping,
)
from opacus.grad_sample.linear import compute_linear_grad_sample, compute_linear_norm_sample  # noqa: E402

from tncompiler.integrations import opacus as tnc_opacus  # noqa: E402
from tncompiler.model.curvature_text import curvature_layout, norm_form  # noqa: E402
from tncompiler.model.layers import spec_of  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),  # the first layer's input
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha:UserWarning"),
]

Tensor = torch.Tensor
TOLERANCE = 1e-10  # float64: max |error| / max |reference|
EXAMPLES = 5

# name: (layer, input shape); every convolution kind, strides, paddings, dilations, groups, with and without bias
LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "conv1d": (lambda: nn.Conv1d(3, 4, 3, stride=2, padding=1), (EXAMPLES, 3, 11)),
    "conv1d_same_dilated": (lambda: nn.Conv1d(3, 4, 4, padding="same", dilation=2), (EXAMPLES, 3, 10)),
    "conv2d": (lambda: nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), (EXAMPLES, 3, 9, 8)),
    "conv2d_no_bias": (lambda: nn.Conv2d(2, 3, 3, bias=False), (EXAMPLES, 2, 6, 6)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2, stride=(1, 2, 1), padding=1), (EXAMPLES, 2, 4, 5, 3)),
    "grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2, padding=1), (EXAMPLES, 4, 6, 6)),
    "depthwise": (lambda: nn.Conv2d(4, 8, 3, groups=4, stride=2), (EXAMPLES, 4, 8, 8)),
    "transpose1d": (lambda: nn.ConvTranspose1d(3, 2, 3, stride=2), (EXAMPLES, 3, 6)),
    "transpose2d": (
        lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
        (EXAMPLES, 4, 4, 5),
    ),
    "transpose3d": (lambda: nn.ConvTranspose3d(2, 3, 2, stride=2, bias=False), (EXAMPLES, 2, 2, 3, 2)),
    # few positions, many channels: the compiler squares the norms through Gram matrices (GRAM below)
    "conv2d_gram": (lambda: nn.Conv2d(16, 16, 3, padding=1), (EXAMPLES, 16, 4, 4)),
    "grouped_gram": (lambda: nn.Conv2d(24, 24, 3, padding=1, groups=2), (EXAMPLES, 24, 4, 4)),
    "transpose2d_gram": (lambda: nn.ConvTranspose2d(16, 16, 3, padding=1), (EXAMPLES, 16, 4, 4)),
}
GRAM = ("conv2d_gram", "grouped_gram", "transpose2d_gram")
LINEAR_SHAPES = [(EXAMPLES, 7), (EXAMPLES, 2, 7), (EXAMPLES, 30, 7), (EXAMPLES, 2, 3, 7)]


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture(autouse=True)
def restored() -> Iterator[None]:
    """Every test leaves Opacus' registries as it found them, failing or not."""
    yield
    tnc_opacus.unregister()


def error(actual: Tensor, expected: Tensor) -> float:
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    scale = expected.abs().max().item() or 1.0
    return float((actual - expected).abs().max().item() / scale)


def call(name: str) -> tuple[nn.Module, list[Tensor], Tensor]:
    """A layer, its activations (as Opacus hands them over) and random backprops of its output's shape."""
    make, shape = LAYERS[name]
    torch.manual_seed(0)
    layer = make()
    x = torch.randn(shape)
    return layer, [x], torch.randn(layer(x).shape)


def opacus_grads(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
    """What Opacus runs without tnc: its conv sampler, or torch.func for a layer it has none for."""
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        result: dict[nn.Parameter, Tensor] = ft_compute_per_sample_gradient(layer, activations, backprops)
        return result
    return compute_conv_grad_sample(layer, activations, backprops)  # type: ignore[no-any-return]


@pytest.mark.parametrize("name", list(LAYERS))
def test_grad_samples_match_opacus(name: str) -> None:
    layer, activations, backprops = call(name)
    expected = opacus_grads(layer, activations, backprops)
    actual = tnc_opacus.compute_grad_sample(layer, activations, backprops)
    assert list(actual) == list(expected)  # the same parameters, weight first
    for parameter, reference in expected.items():
        assert error(actual[parameter], reference) < TOLERANCE


@pytest.mark.parametrize("name", list(LAYERS))
def test_norm_samples_match_the_norms_of_opacus_grad_samples(name: str) -> None:
    """Opacus' fast gradient clipping takes a conv's norms from its grad samples (`create_norm_sample`)."""
    layer, activations, backprops = call(name)
    expected = opacus_grads(layer, activations, backprops)
    actual = tnc_opacus.compute_norm_sample(layer, activations, backprops)
    assert list(actual) == list(expected)
    for parameter, reference in expected.items():
        assert error(actual[parameter], reference.flatten(1).norm(2, dim=-1)) < TOLERANCE


@pytest.mark.parametrize("shape", LINEAR_SHAPES)
def test_linear_norm_samples_match_opacus(shape: tuple[int, ...]) -> None:
    """Opacus' own Linear norm sampler for 2-d and 3-d inputs (it returns nothing for more axes: there the norms of
    its grad samples); without positions tnc's norm is the outer product's, |x|²·|ĝ|²."""
    torch.manual_seed(0)
    layer = nn.Linear(7, 5)
    activations, backprops = [torch.randn(shape)], torch.randn(*shape[:-1], 5)
    if len(shape) <= 3:
        expected = compute_linear_norm_sample(layer, activations, backprops)
    else:
        grads = compute_linear_grad_sample(layer, activations, backprops)
        expected = {p: g.flatten(1).norm(2, dim=-1) for p, g in grads.items()}
    actual = tnc_opacus.compute_norm_sample(layer, activations, backprops)
    assert list(actual) == list(expected)
    for parameter, reference in expected.items():
        assert error(actual[parameter], reference) < TOLERANCE


def test_the_cases_cover_both_norm_routes() -> None:
    """The norm tests above see both routes the compiler can choose for a convolution; a change of its cost model
    that moved these cases to one route would leave the other untested (then pick new cases)."""
    forms = {}
    for name, (make, shape) in LAYERS.items():
        layer, x = make(), torch.randn(shape)
        forms[name] = norm_form(curvature_layout(spec_of(layer), x.shape, layer(x).shape))
    assert all(forms[name] == "gram" for name in GRAM), forms
    assert "per-example" in forms.values(), forms


@pytest.mark.parametrize("name", ["conv2d", "conv2d_gram", "transpose2d"])
def test_chunked_samples_match_opacus(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the CPU the weight's quantities are computed a chunk of examples at a time: 5 examples in chunks of 2, 2
    and 1 give what Opacus' samplers give for the whole batch."""
    layer, activations, backprops = call(name)
    monkeypatch.setattr(tnc_opacus, "_CHUNK_BYTES", 2 * layer.weight.numel() * layer.weight.element_size())
    found = tnc_opacus._call(layer, activations, backprops)
    assert found is not None and found.chunk == 2
    expected = opacus_grads(layer, activations, backprops)
    grads = tnc_opacus.compute_grad_sample(layer, activations, backprops)
    norms = tnc_opacus.compute_norm_sample(layer, activations, backprops)
    for parameter, reference in expected.items():
        assert error(grads[parameter], reference) < TOLERANCE
        assert error(norms[parameter], reference.flatten(1).norm(2, dim=-1)) < TOLERANCE


def test_frozen_parameters_get_no_samples() -> None:
    layer, activations, backprops = call("conv2d")
    layer.weight.requires_grad_(False)
    assert list(tnc_opacus.compute_grad_sample(layer, activations, backprops)) == [layer.bias]
    assert list(tnc_opacus.compute_norm_sample(layer, activations, backprops)) == [layer.bias]


def test_circular_padding_falls_back_to_torch_func() -> None:
    """tnc writes zero padding only; Opacus' conv sampler ignores padding_mode (its unfold pads with zeros) and is
    wrong for a circular padding, so such a layer gets torch.func's per-example gradients."""
    torch.manual_seed(0)
    layer = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    activations, backprops = [torch.randn(EXAMPLES, 2, 6, 6)], torch.randn(EXAMPLES, 3, 6, 6)
    expected = ft_compute_per_sample_gradient(layer, activations, backprops)
    actual = tnc_opacus.compute_grad_sample(layer, activations, backprops)
    norms = tnc_opacus.compute_norm_sample(layer, activations, backprops)
    for parameter, reference in expected.items():
        assert error(actual[parameter], reference) < TOLERANCE
        assert error(norms[parameter], reference.flatten(1).norm(2, dim=-1)) < TOLERANCE


@pytest.mark.parametrize("name", ["conv2d", "transpose2d"])
def test_empty_batch_gives_empty_samples(name: str) -> None:
    """Poisson sampling can draw an empty batch: no rows, and no call of a compiled function or of vmap."""
    layer, _, _ = call(name)
    shape = LAYERS[name][1]
    x = torch.randn(0, *shape[1:])
    backprops = torch.randn(layer(x).shape)
    grads = tnc_opacus.compute_grad_sample(layer, [x], backprops)
    norms = tnc_opacus.compute_norm_sample(layer, [x], backprops)
    assert {p: tuple(g.shape) for p, g in grads.items()} == {p: (0, *p.shape) for p in layer.parameters()}
    assert {p: tuple(n.shape) for p, n in norms.items()} == {p: (0,) for p in layer.parameters()}


# --- registration --------------------------------------------------------------------------------------------------


def registries() -> tuple[dict[type, object], dict[type, object]]:
    return GradSampleModule.GRAD_SAMPLERS, GradSampleModuleFastGradientClipping.NORM_SAMPLERS


def test_register_installs_tnc_samplers_and_unregister_restores_opacus() -> None:
    grads, norms = registries()
    before = (dict(grads), dict(norms))
    tnc_opacus.register()
    assert tnc_opacus.registered()
    assert all(grads[cls] is tnc_opacus.compute_grad_sample for cls in tnc_opacus.GRAD_LAYERS)
    assert all(norms[cls] is tnc_opacus.compute_norm_sample for cls in tnc_opacus.NORM_LAYERS)
    assert grads[nn.Linear] is before[0][nn.Linear]  # Opacus keeps its Linear grad sampler
    tnc_opacus.unregister()
    assert not tnc_opacus.registered()
    assert (dict(grads), dict(norms)) == before


def test_register_twice_keeps_opacus_originals() -> None:
    """A second register() must not save tnc's own samplers as the ones to put back."""
    before = tuple(dict(r) for r in registries())
    tnc_opacus.register()
    tnc_opacus.register()
    tnc_opacus.unregister()
    assert tuple(dict(r) for r in registries()) == before


def test_unregister_leaves_a_sampler_registered_since() -> None:
    grads, _ = registries()
    tnc_opacus.register()

    def other(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> dict[nn.Parameter, Tensor]:
        raise AssertionError("never called")

    grads[nn.Conv1d] = other
    try:
        tnc_opacus.unregister()
        assert grads[nn.Conv1d] is other
        assert grads[nn.Conv2d] is compute_conv_grad_sample
    finally:
        grads[nn.Conv1d] = compute_conv_grad_sample


def test_register_without_norm_samplers_leaves_norm_registry() -> None:
    _, norms = registries()
    before = dict(norms)
    tnc_opacus.register(norm_samplers=False)
    assert dict(norms) == before
    tnc_opacus.unregister()


def test_the_core_does_not_import_opacus() -> None:
    """Opacus is an optional extra: no module of tncompiler but the integration imports it, and importing the
    integrations package imports none of them."""
    root = Path(__file__).resolve().parents[2] / "tncompiler"
    own = root / "integrations" / "opacus.py"
    for path in root.rglob("*.py"):
        if path == own:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n == "opacus" or n.startswith("opacus.") for n in names), path
    code = "import sys, tncompiler, tncompiler.model, tncompiler.integrations\nassert 'opacus' not in sys.modules\n"
    env = {**os.environ, "PYTHONPATH": str(root.parent)}
    result = subprocess.run([sys.executable, "-c", code], cwd=root.parent, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- a DP-SGD step -------------------------------------------------------------------------------------------------


def model() -> nn.Module:
    """A convolution, a grouped one, a grouped transpose convolution and a Linear: every sampler in one step."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=2, stride=2), nn.Tanh(),
        nn.ConvTranspose2d(4, 2, 2, stride=2, groups=2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3),
    )  # fmt: skip


def data(examples: int = 8) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(examples, 2, 7, 7, generator=generator), torch.randint(0, 3, (examples,), generator=generator)


def per_example_grads(net: nn.Module, x: Tensor, y: Tensor) -> dict[str, Tensor]:
    """torch.func's per-example gradients of each example's own cross-entropy: the independent reference."""
    params = {name: p.detach() for name, p in net.named_parameters()}

    def loss(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return nn.functional.cross_entropy(functional_call(net, p, (xi[None],)), yi[None])

    result: dict[str, Tensor] = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return result


def clipped_by_hand(x: Tensor, y: Tensor, bound: float, reduction: str) -> list[Tensor]:
    """Opacus' flat clipping: each example's gradient times min(1, C / (|g_n| + 1e-6)), summed, over N for a mean."""
    grads = per_example_grads(model(), x, y)
    norms = torch.stack([g.flatten(1).square().sum(1) for g in grads.values()]).sum(0).sqrt()
    coefficients = (bound / (norms + 1e-6)).clamp(max=1.0)
    scale = len(x) if reduction == "mean" else 1
    return [torch.einsum("n,n...->...", coefficients, g) / scale for g in grads.values()]


def median_norm(x: Tensor, y: Tensor) -> float:
    """A clipping bound that clips some examples and leaves others."""
    grads = per_example_grads(model(), x, y)
    return float(torch.stack([g.flatten(1).square().sum(1) for g in grads.values()]).sum(0).sqrt().median())


def dp_step(mode: str, reduction: str, x: Tensor, y: Tensor, bound: float) -> list[Tensor]:
    """One PrivacyEngine step without noise; the gradients the optimizer applied."""
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
    criterion = nn.CrossEntropyLoss(reduction=reduction)
    made = PrivacyEngine().make_private(
        module=net, optimizer=optimizer, criterion=criterion, data_loader=loader, noise_multiplier=0.0,
        max_grad_norm=bound, poisson_sampling=False, grad_sample_mode=mode, loss_reduction=reduction,
    )  # fmt: skip
    private, optimizer = made[0], made[1]
    criterion = made[2] if mode == "ghost" else criterion
    optimizer.zero_grad()
    criterion(private(x), y).backward()
    optimizer.step()
    return [p.grad.detach().clone() for p in private.parameters()]


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_privacy_engine_step_matches_opacus_and_clipping_by_hand(mode: str, reduction: str) -> None:
    x, y = data()
    bound = median_norm(x, y)
    expected = dp_step(mode, reduction, x, y, bound)
    tnc_opacus.register()
    actual = dp_step(mode, reduction, x, y, bound)
    by_hand = clipped_by_hand(x, y, bound, reduction)
    for ours, theirs, hand in zip(actual, expected, by_hand, strict=True):
        assert error(ours, theirs) < TOLERANCE
        assert error(ours, hand) < TOLERANCE


def reused() -> nn.Module:
    """One convolution called twice: Opacus' fast gradient clipping refuses a layer with a norm sampler for that."""
    conv = nn.Conv2d(2, 2, 3, padding=1)
    return nn.Sequential(conv, nn.Tanh(), conv, nn.Flatten(), nn.Linear(2 * 7 * 7, 3))


def test_ghost_clipping_of_a_reused_convolution_needs_norm_samplers_off() -> None:
    x, y = data()

    def step() -> list[Tensor]:
        torch.manual_seed(4)
        net = reused()
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        loader = DataLoader(TensorDataset(x, y), batch_size=len(x))
        private, optimizer, criterion, _ = PrivacyEngine().make_private(
            module=net, optimizer=optimizer, criterion=nn.CrossEntropyLoss(), data_loader=loader,
            noise_multiplier=0.0, max_grad_norm=0.5, poisson_sampling=False, grad_sample_mode="ghost",
        )  # fmt: skip
        criterion(private(x), y).backward()
        optimizer.step()
        return [p.grad.detach().clone() for p in private.parameters()]

    expected = step()
    tnc_opacus.register()
    with pytest.raises(NotImplementedError, match="Parameter tying"):
        step()
    tnc_opacus.unregister()
    tnc_opacus.register(norm_samplers=False)
    for ours, theirs in zip(step(), expected, strict=True):
        assert error(ours, theirs) < TOLERANCE

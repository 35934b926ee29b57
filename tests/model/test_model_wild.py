"""Layers in the wild (issue 19): the text of a layer never carries user text into its code lines; parametrized
layers (weight norm, spectral norm) compile, and their factors, KFAC steps and sampled gradients are those of the
weight the parametrization computes; frozen tensors are left out of the factors as curvlinops leaves them out, and
KFAC leaves their gradients alone. References: PyTorch's own layers, curvlinops' KFACLinearOperator on the same (or
the equivalent plain) model, dense Kronecker solves and hand-written parametrization VJPs, in float64."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import spectral_norm, weight_norm

import tncompiler
from tests.model.model_references import relative_error, worst_error
from tests.model.test_model_factors import CLASSES, LOSSES, Transpose, batches
from tncompiler.model import layers

Tensor = torch.Tensor
TOLERANCE = 1e-10
CONTROL = "a\nb\rc\x0bd\x0ce\x1cf\x85g\u2028h\x00i\x1bj\tk\x7f"  # every kind of line break and control character


# --- the text ---------------------------------------------------------------------------------------------------------


def test_a_weight_normed_conv_has_the_plain_layers_text_and_compiles() -> None:
    """The regression: the module's multi-line repr went into the text, its second line parsed as code."""
    plain, normed = nn.Conv2d(3, 8, 3, stride=2), weight_norm(nn.Conv2d(3, 8, 3, stride=2))
    assert "\n" in repr(normed)  # what broke the text
    text = tncompiler.layer_source(normed)
    assert text == tncompiler.layer_source(plain)  # one text, one compiled module, for both
    assert text.splitlines()[0] == "# Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2))"
    assert tncompiler.compile_layer(normed) is tncompiler.compile_layer(plain)


def test_a_title_with_line_breaks_and_control_characters_stays_one_comment_line() -> None:
    """A LayerSpec's title is free text: every character that could end the comment or the line is escaped."""
    spec = layers.spec_of(nn.Linear(4, 3))
    wild = layers.LayerSpec(**{**vars(spec), "title": CONTROL})
    text, plain = tncompiler.layer_source(wild), tncompiler.layer_source(spec)
    first, *rest = text.splitlines()  # splitlines breaks at every one of them
    assert rest == plain.splitlines()[1:]
    assert first == r"# a\nb\rc\x0bd\x0ce\x1cf\x85g\u2028h\x00i\x1bj\tk\x7f"
    compiled = tncompiler.compile_layer(wild)
    x, w = torch.randn(2, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert relative_error(compiled.y(x, w, torch.zeros(3, dtype=torch.float64)), x @ w.T) <= TOLERANCE


def test_a_subclass_name_reaches_neither_the_text_nor_the_module() -> None:
    """The description and the compiled module's name come from the PyTorch class, never the user's subclass."""
    odd = type('Odd"""\nindex z = 2', (nn.Linear,), {})
    module = odd(4, 3)
    text = tncompiler.layer_source(module)
    assert "Odd" not in text and text == tncompiler.layer_source(nn.Linear(4, 3))
    compiled = tncompiler.compile_layer(module)  # its name enters a file name and the module's docstring
    assert "linear" in compiled.__name__ and "Odd" not in compiled.__name__ + str(compiled.__doc__)


def test_hyper_parameters_that_are_not_numbers_are_refused() -> None:
    """Attributes overwritten after construction, or a spec made by hand, cannot write code: they are refused."""
    conv = nn.Conv1d(2, 2, 3)
    conv.padding = "same\ninput z[n]"  # type: ignore[assignment]
    with pytest.raises(ValueError, match=r"padding='same\\ninput z\[n\]'; PyTorch's words are 'same', 'valid'"):
        tncompiler.layer_source(conv)
    conv = nn.Conv1d(2, 2, 3)
    conv.kernel_size = ("3, k2 = 4",)  # type: ignore[assignment]
    with pytest.raises(ValueError, match="kernel must be a non-negative integer, got '3, k2 = 4'"):
        tncompiler.layer_source(conv)
    linear = nn.Linear(4, 3)
    linear.out_features = True
    with pytest.raises(ValueError, match="out_channels must be a non-negative integer, got True"):
        tncompiler.layer_source(linear)
    spec = layers.spec_of(nn.Conv1d(2, 2, 3))
    with pytest.raises(ValueError, match="padding '1\\\\ny' is not an integer"):
        layers.LayerSpec(**{**vars(spec), "padding": ("1\ny",)})
    with pytest.raises(ValueError, match="kind 'conv;' is not one of"):
        layers.LayerSpec(**{**vars(spec), "kind": "conv;"})


# --- parametrized layers ----------------------------------------------------------------------------------------------


PARAMETRIZED = {
    "weight-norm-conv2d": lambda: weight_norm(nn.Conv2d(2, 4, 3, stride=2, padding=1)),
    "weight-norm-tconv2d-grouped": lambda: weight_norm(nn.ConvTranspose2d(4, 2, 2, stride=2, groups=2)),
    "spectral-norm-linear": lambda: spectral_norm(nn.Linear(5, 3)),
    "spectral-norm-conv1d": lambda: spectral_norm(nn.Conv1d(2, 3, 3, padding="same")),
}


@pytest.mark.parametrize("name", PARAMETRIZED)
def test_a_parametrized_layers_compiled_functions_are_its_own(name: str) -> None:
    """y and vjp_w of the compiled layer on the computed weight equal the layer's forward and autograd's gradient
    in that weight (one cached evaluation of the parametrization for both)."""
    torch.manual_seed(0)
    module = PARAMETRIZED[name]().double()
    shape = (3, 5) if isinstance(module, nn.Linear) else (3, module.in_channels) + (6,) * len(module.kernel_size)  # type: ignore[arg-type]
    x = torch.randn(shape, dtype=torch.float64)
    compiled, spec = tncompiler.compile_layer(module), layers.spec_of(module)
    with parametrize.cached():
        weight = module.weight
        y = module(x)
        grad_y = torch.randn_like(y)
        (expected_vjp_w,) = torch.autograd.grad(y, weight, grad_y)
        ours = layers.with_sizes(compiled.y, spec.sizes(x))(x, weight.detach(), module.bias.detach())
    assert relative_error(ours, y.detach()) <= TOLERANCE
    assert relative_error(layers.with_sizes(compiled.vjp_w, spec.sizes(x))(x, grad_y), expected_vjp_w) <= TOLERANCE


class Parametrized(nn.Module):
    """A weight-normed Conv2d, a weight-normed grouped ConvTranspose2d (its weight is [(g c), d, k...]) and a
    spectral-normed Linear; or the same layers plain."""

    def __init__(self, parametrized: bool = True) -> None:
        super().__init__()
        normed = weight_norm if parametrized else _plain
        self.conv = normed(nn.Conv2d(2, 4, 3, stride=2, padding=1))
        self.tconv = normed(nn.ConvTranspose2d(4, 2, 2, stride=2, groups=2))
        self.head = (spectral_norm if parametrized else _plain)(nn.Linear(72, CLASSES))

    def forward(self, x: Tensor) -> Tensor:  # x: [n, 2, 6, 6]
        h = torch.tanh(self.tconv(torch.tanh(self.conv(x))))
        return self.head(h.flatten(1))  # type: ignore[no-any-return]


def _plain(module: nn.Module) -> nn.Module:
    return module


def parametrized_net() -> Parametrized:
    torch.manual_seed(0)
    return Parametrized().double()


def plain_copy(model: nn.Module) -> nn.Module:
    """A plain model holding the weights the parametrizations compute now, in eval mode: spectral norm's vectors as
    the last forward pass left them. (Not deepcopy and remove_parametrizations: the copy shares the original's
    injected class, and removing the parametrization from it deletes the original's `weight` property too.)"""
    plain, mode = Parametrized(parametrized=False).double(), model.training
    model.eval()
    with torch.no_grad():
        for name in ("conv", "tconv", "head"):
            layer, target = getattr(model, name), getattr(plain, name)
            target.weight.copy_(layer.weight)
            target.bias.copy_(layer.bias)
    model.train(mode)
    return plain.train(mode)


def curvlinops_state(
    model: nn.Module, loss_func: nn.Module, data: list[tuple[Tensor, Tensor]], approx: str, fisher: str
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """KFACLinearOperator's input and gradient covariances (the bias folded in), for the parameters that require
    grad; a layer with a trained bias alone has a gradient covariance only."""
    curvlinops = pytest.importorskip("curvlinops")
    operator = curvlinops.KFACLinearOperator(
        model, loss_func, [p for p in model.parameters() if p.requires_grad], data, fisher_type=fisher,
        kfac_approx=approx, separate_weight_and_bias=False, check_deterministic=False, seed=2147483647,
        mc_samples=2 if fisher == "mc" else 1,
    )  # fmt: skip
    operator.compute_kronecker_factors()
    state = operator.state_dict()
    return dict(state["input_covariances"]), dict(state["gradient_covariances"])


@pytest.mark.parametrize(("fisher", "approx"), list(itertools.product(["empirical", "type-2"], ["expand", "reduce"])))
def test_a_parametrized_layers_factors_belong_to_its_computed_weight(fisher: str, approx: str) -> None:
    """Equal to curvlinops' factors of the plain model that holds the computed weights (spectral norm in eval mode,
    so that every batch sees the same weight), and to ours of that plain model."""
    model, loss_func = parametrized_net().eval(), nn.CrossEntropyLoss()
    data = batches("ce-mean", (2, 6, 6), sizes=(4, 3))
    actual = tncompiler.kfac_factors(model, loss_func, data, approx=approx, fisher=fisher)  # type: ignore[arg-type]
    plain = plain_copy(model)
    known = copy.deepcopy(plain)
    known.tconv.requires_grad_(False)  # curvlinops does not know transpose convolutions; the others' factors stay
    inputs, gradients = curvlinops_state(known, loss_func, data, approx, fisher)
    assert sorted(actual) == ["conv", "head", "tconv"]
    for name in ("conv", "head"):  # curvlinops knows Linear and Conv2d
        assert relative_error(actual[name][0], inputs[name]) <= TOLERANCE
        assert relative_error(actual[name][1], gradients[name]) <= TOLERANCE
    expected = tncompiler.kfac_factors(plain, loss_func, data, approx=approx, fisher=fisher)  # type: ignore[arg-type]
    assert worst_error(actual, expected) <= TOLERANCE
    assert actual["tconv"][0].shape == (2, 2 * 4 + 1, 2 * 4 + 1)


def _weight_norm_vjp(module: nn.Module, cotangent: Tensor) -> list[Tensor]:
    """W = g v / |v| (norms over all but dim 0), by hand: dg = <ΔW, v/|v|> per row, dv = g/|v| (ΔW - <ΔW, v̂> v̂)."""
    originals = module.parametrizations.weight  # type: ignore[union-attr]
    g, v = originals.original0.detach(), originals.original1.detach()
    norm = v.flatten(1).norm(dim=1).view_as(g)
    direction = v / norm
    along = (cotangent * direction).flatten(1).sum(1).view_as(g)
    return [along, g / norm * (cotangent - along * direction)]


def _spectral_norm_vjp(module: nn.Module, cotangent: Tensor) -> list[Tensor]:
    """W = V / σ with σ = uᵀ V v for the stored vectors u, v (constants, as the parametrization treats them)."""
    originals = module.parametrizations.weight  # type: ignore[union-attr]
    u, v = originals[0]._u.detach(), originals[0]._v.detach()
    original = originals.original.detach()

    def computed(weight: Tensor) -> Tensor:
        return weight / torch.dot(u, weight @ v)

    return [torch.func.vjp(computed, original)[1](cotangent)[0]]


def _step(model: nn.Module, x: Tensor, target: Tensor, **options: Any) -> tncompiler.KFAC:
    kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), update_every=1, damping=1e-2, **options)
    nn.functional.cross_entropy(model(x), target).backward()
    return kfac


@pytest.mark.parametrize("inverse", ["eigh", "cholesky"])
def test_kfac_preconditions_the_computed_weight_and_carries_it_back(inverse: str) -> None:
    """One step in training mode (spectral norm advances its power iteration once): the factors are those of the
    plain model holding the weights that pass used, and each original's gradient is the parametrization's VJP (by
    hand) with the plain model's preconditioned weight gradient; biases as the plain model's."""
    ((x, target),) = batches("ce-mean", (2, 6, 6), sizes=(5,))
    model = parametrized_net()
    kfac = _step(model, x, target, inverse=inverse)
    plain = plain_copy(model)  # after the forward pass: the weights it used
    plain_kfac = _step(plain, x, target, inverse=inverse)
    vectors = [tensor.clone() for tensor in model.head.parametrizations.weight[0].buffers()]
    kfac.step()
    plain_kfac.step()
    # the step evaluates the parametrization without advancing spectral norm's power iteration
    assert all(map(torch.equal, model.head.parametrizations.weight[0].buffers(), vectors))
    assert worst_error(kfac.factors, plain_kfac.factors) <= TOLERANCE
    kfac.remove()
    assert not any(module._forward_hooks for module in model.modules())
    for name, vjp in (("conv", _weight_norm_vjp), ("tconv", _weight_norm_vjp), ("head", _spectral_norm_vjp)):
        module, reference = getattr(model, name), getattr(plain, name)
        originals = list(module.parametrizations.weight.parameters())
        for actual, expected in zip(originals, vjp(module, reference.weight.grad), strict=True):
            assert relative_error(actual.grad, expected) <= 1e-9, name
        assert relative_error(module.bias.grad, reference.bias.grad) <= TOLERANCE, name


def test_a_parametrized_gradient_starts_afresh_after_zero_grad() -> None:
    """A backward pass whose gradients were zeroed (a skipped step) leaves nothing behind; two backward passes
    without zero_grad add up, as .grad does. The plain model is the reference for both."""
    (x1, t1), (x2, t2) = batches("ce-mean", (2, 6, 6), sizes=(4, 3))
    model = parametrized_net().eval()
    plain = plain_copy(model)
    results = []
    for net in (model, plain):
        kfac = tncompiler.KFAC(net, nn.CrossEntropyLoss(), update_every=1, damping=1e-2)
        nn.functional.cross_entropy(net(x1 * 3), t1).backward()
        net.zero_grad()  # the step that never came
        nn.functional.cross_entropy(net(x1), t1).backward()
        nn.functional.cross_entropy(net(x2), t2).backward()
        kfac.step()
        results.append(kfac)
    conv, reference = model.conv, plain.conv
    expected = _weight_norm_vjp(conv, reference.weight.grad)
    for actual, wanted in zip(conv.parametrizations.weight.parameters(), expected, strict=True):
        assert relative_error(actual.grad, wanted) <= 1e-9


def test_kfac_leaves_a_frozen_original_alone() -> None:
    """Weight norm with its magnitude g frozen: only v's gradient is written; g's stays as it was."""
    ((x, target),) = batches("ce-mean", (2, 6, 6), sizes=(5,))
    model = parametrized_net()
    magnitude = model.conv.parametrizations.weight.original0
    magnitude.requires_grad_(False)
    sentinel = torch.full_like(magnitude, 7.0)
    magnitude.grad = sentinel
    kfac = _step(model, x, target)
    direction = model.conv.parametrizations.weight.original1.grad.clone()
    kfac.step()
    assert magnitude.grad is sentinel and bool((sentinel == 7.0).all())
    assert not torch.equal(model.conv.parametrizations.weight.original1.grad, direction)


@pytest.mark.parametrize("over", ["positions", "batch"])
def test_sampled_parametrized_layers_at_p_one_are_exact(over: str) -> None:
    """sampled() reads the computed weight once per call, as the layer's forward does: at p = 1 every gradient (the
    originals' included) is autograd's, and spectral norm's vectors advance exactly as without it."""
    ((x, _),) = batches("ce-mean", (2, 6, 6), sizes=(4,))
    cotangent = torch.randn(4, CLASSES, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    exact, model = parametrized_net(), parametrized_net()
    names = [name for name, _ in exact.named_parameters()]
    expected = dict(zip(names, torch.autograd.grad(exact(x), list(exact.parameters()), cotangent)))
    with tncompiler.sampled(model, p=1.0, over=over):  # type: ignore[arg-type]
        actual = dict(zip(names, torch.autograd.grad(model(x), list(model.parameters()), cotangent)))
    for name in names:
        assert relative_error(actual[name], expected[name]) <= 1e-12, name
    assert torch.equal(model.head.parametrizations.weight[0]._u, exact.head.parametrizations.weight[0]._u)
    direction = model.conv.parametrizations.weight.original1
    with tncompiler.sampled(model, p=0.5, over=over, generator=torch.Generator().manual_seed(0)):  # type: ignore[arg-type]
        (half,) = torch.autograd.grad(model(x), [direction], cotangent)
    assert not torch.allclose(half, expected["conv.parametrizations.weight.original1"])  # a sampled VJP reached v


# --- frozen tensors ---------------------------------------------------------------------------------------------------


def frozen_net() -> nn.Module:
    """A frozen bias (Conv2d and a weight-sharing Linear), a frozen weight with its bias trained, and a layer with
    nothing trained (with a padding mode tnc cannot write: a frozen layer is never written)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 2, 3),  # [n, 2, 6, 6]
        nn.Tanh(),
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(3, 3, 3, padding=1, padding_mode="reflect"),
        Transpose(),  # [n, 36, 3]
        nn.Linear(3, 4),
        nn.Flatten(),
        nn.Linear(144, CLASSES),
    ).double()
    for parameter in (model[0].bias, model[2].weight, model[4].weight, model[4].bias, model[6].bias):
        parameter.requires_grad_(False)
    return model


FROZEN_CHECKS = list(itertools.product(["ce-mean", "mse-sum"], ["empirical", "type-2", "mc"], ["expand", "reduce"]))


@pytest.mark.parametrize(("loss", "fisher", "approx"), FROZEN_CHECKS)
def test_frozen_tensors_are_left_out_as_curvlinops_leaves_them_out(loss: str, fisher: str, approx: str) -> None:
    """A frozen bias: no row in A (18x18, where it was 19x19); a frozen weight with a trained bias: curvlinops' B
    alone, A = [[1]]; nothing trained: no factors. mc with curvlinops' draws."""
    model, data = frozen_net(), batches(loss, (2, 8, 8))
    inputs, gradients = curvlinops_state(model, LOSSES[loss](), data, approx, fisher)
    generator = torch.Generator().manual_seed(2147483647)
    actual = tncompiler.kfac_factors(
        model, LOSSES[loss](), data, approx=approx, fisher=fisher, mc_samples=2 if fisher == "mc" else 1,  # type: ignore[arg-type]
        generator=generator,
    )  # fmt: skip
    assert sorted(actual) == sorted(gradients) == ["0", "2", "6", "8"] and sorted(inputs) == ["0", "6", "8"]
    assert actual["0"][0].shape == (18, 18) and actual["6"][0].shape == (3, 3)
    for name in inputs:
        assert relative_error(actual[name][0], inputs[name]) <= TOLERANCE, name
    for name in gradients:
        assert relative_error(actual[name][1], gradients[name]) <= TOLERANCE, name
    assert torch.equal(actual["2"][0], torch.ones(1, 1, dtype=torch.float64))


def _dense_solve(a: Tensor, b: Tensor, gradient: Tensor, damping: float) -> Tensor:
    """vec(Δ) = (B ⊗ A + λ I)⁻¹ vec(G) for G [out, in], written out densely."""
    kron = torch.kron(b, a) + damping * torch.eye(a.shape[0] * b.shape[0], dtype=a.dtype)
    return torch.linalg.solve(kron, gradient.reshape(-1)).reshape(gradient.shape)


def test_kfac_never_touches_a_frozen_gradient() -> None:
    """Frozen tensors keep their gradients (here set by hand) as they were; the trained ones are the dense damped
    solves with the factors, which are kfac_factors'."""
    model, ((x, target),) = frozen_net(), batches("ce-mean", (2, 8, 8), sizes=(5,))
    frozen = [model[0].bias, model[4].weight, model[6].bias]
    sentinels = [torch.full_like(p, 7.0) for p in frozen]
    for parameter, sentinel in zip(frozen, sentinels):
        parameter.grad = sentinel
    kfac = _step(model, x, target)
    before = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    kfac.step()
    assert all(p.grad is s and bool((s == 7.0).all()) for p, s in zip(frozen, sentinels))
    assert model[2].weight.grad is None and model[4].bias.grad is None
    expected = tncompiler.kfac_factors(frozen_net(), nn.CrossEntropyLoss(), [(x, target)])
    assert worst_error(kfac.factors, expected) <= TOLERANCE
    for name, key in (("0", "0.weight"), ("6", "6.weight"), ("2", "2.bias")):
        a, b = kfac.factors[name]
        gradient = before[key].reshape(b.shape[0], -1)
        wanted = _dense_solve(a, b, gradient, 1e-2)
        actual = dict(model.named_parameters())[key].grad.reshape(wanted.shape)
        assert relative_error(actual, wanted) <= 1e-8, name


@pytest.fixture
def single_process_group(tmp_path: Path) -> Iterator[Any]:
    if not dist.is_available() or not dist.is_gloo_available() or dist.is_initialized():
        pytest.skip("torch.distributed with gloo is not available (or already in use)")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        yield dist.group.WORLD
    finally:
        dist.destroy_process_group()


def test_a_process_group_sums_frozen_layers_like_the_others(single_process_group: Any) -> None:
    """The sums go through the all-reduce (one rank) with the same factors; a bias-only layer this rank never
    called gets zero sums, as a layer with a weight does, so that every rank reduces the same tensors."""

    class Unused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model, self.idle = frozen_net(), nn.Linear(3, 2).double()
            self.idle.weight.requires_grad_(False)

        def forward(self, x: Tensor) -> Tensor:
            return self.model(x)  # type: ignore[no-any-return]

    data = batches("ce-mean", (2, 8, 8))
    alone = tncompiler.kfac_factors(Unused(), nn.CrossEntropyLoss(), data)
    reduced = tncompiler.kfac_factors(Unused(), nn.CrossEntropyLoss(), data, process_group=single_process_group)
    idle = reduced.pop("idle")
    assert worst_error(reduced, alone) <= TOLERANCE
    assert torch.equal(idle[0], torch.ones(1, 1, dtype=torch.float64)) and not idle[1].any()


def _ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One KFAC step of the parametrized net under DDP, each of two ranks with half of the batch."""
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    try:
        ((x, target),) = batches("ce-mean", (2, 6, 6), sizes=(8,))
        ddp = DistributedDataParallel(parametrized_net())
        kfac = _step(ddp, x[rank * 4 : (rank + 1) * 4], target[rank * 4 : (rank + 1) * 4])
        kfac.step()
        torch.save({name: p.grad for name, p in ddp.module.named_parameters()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_under_ddp_every_rank_writes_the_whole_batchs_gradients(tmp_path: Path) -> None:
    """The collected gradients of the computed weights are each rank's own: they are averaged as DDP averages the
    parameters' gradients, so both ranks write what one process with the whole batch writes."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    assert "TNC_CACHE_DIR" in os.environ  # the workers read the modules this session compiled
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    ((x, target),) = batches("ce-mean", (2, 6, 6), sizes=(8,))
    model = parametrized_net()
    _step(model, x, target).step()
    for name, parameter in model.named_parameters():
        for rank in ranks:
            assert relative_error(rank[name], parameter.grad) <= TOLERANCE, name

"""Unfold (im2col) written as a definition, and the KFAC Kronecker factors `kfac` / `kfac_grad` (expand and
reduce), against unfold- and autograd-based references and against curvlinops' KFACLinearOperator."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests import cases
from tests.cases import Conv, linear_source, load, pattern_unfold, random_tensors, relative_error, unfold_source
from tncompiler import cli

Tensor = torch.Tensor
TOLERANCE = 1e-10  # float64, max abs error / max abs reference
BATCH = 3
conv = functools.partial(cases.conv, batch=BATCH)

# --- unfold ------------------------------------------------------------------------------------------------------

UNFOLDS: dict[str, Conv] = {
    "1d-stride2-dil2": conv([9], [3], stride=2, padding=1, dilation=2, c_in=3),
    "1d-same-even": conv([7], [4], padding="same"),
    "2d-plain": conv([5, 6], [3, 2]),
    "2d-stride2-pad1": conv([7, 7], [3, 3], stride=2, padding=1, c_in=3),
    "2d-pair-pads-dil": conv([6, 7], [2, 3], padding=[(1, 0), (0, 2)], dilation=[2, 1], stride=[1, 2]),
    "2d-same-valid": conv([6, 5], [4, 3], padding=["same", "valid"]),
    "3d-mixed": conv([4, 5, 6], [2, 3, 2], stride=[1, 2, 2], padding=[1, 0, (1, 0)], dilation=[2, 1, 1]),
}


def torch_unfold(spec: Conv, x: Tensor) -> Tensor:
    """F.unfold for 1-d and 2-d (1-d as 2-d with a trailing axis of one), padding through F.pad."""
    x = F.pad(x, [p for pair in reversed(spec.pads()) for p in pair])
    if spec.dims == 1:
        x = x.unsqueeze(-1)
    ones = (1,) * (2 - spec.dims)
    return F.unfold(x, spec.kernel + ones, dilation=spec.dilation + ones, stride=spec.stride + ones)


@pytest.mark.parametrize("case", list(UNFOLDS))
def test_unfold(case: str) -> None:
    """u[n, (c k...), (o...)] = x[n, c, i...] * p1(i1, o1, k1) * ...: F.unfold, and explicit patterns in any dims."""
    spec = UNFOLDS[case]
    (x,) = cases.argument_list(spec)[:1]
    actual = load(unfold_source(spec)).u(x)
    assert relative_error(actual, pattern_unfold(spec, x).flatten(1, 2)) <= TOLERANCE
    if spec.dims <= 2:
        assert relative_error(actual, torch_unfold(spec, x)) <= TOLERANCE


def test_unfold_source_reads_as_in_the_docs() -> None:
    assert "u[n, (c k1 k2), (o1 o2)] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)" in unfold_source(
        UNFOLDS["2d-plain"])


# --- KFAC factors of convolutions --------------------------------------------------------------------------------

FACTORS = ["A = kfac(y, w, batch=n)", "Ar = kfac(y, w, batch=n, approx=reduce)",
           "B = kfac_grad(y, w, batch=n)", "Br = kfac_grad(y, w, batch=n, approx=reduce)"]
KFACS: dict[str, Conv] = {
    "1d-g1": conv([8], [3], stride=2, padding=1, c_out=3, bias=True),
    "1d-g2": conv([7], [2], dilation=2, padding="same", groups=2),
    "2d-g1": conv([6, 5], [3, 2], stride=[2, 1], padding=[1, (0, 1)], c_out=3, bias=True),
    "2d-g2": conv([5, 6], [2, 3], padding=1, groups=2, c_out=3),
    "2d-depthwise": conv([6, 6], [3, 3], stride=2, padding="valid", groups=3, c_in=1, c_out=2),
    "3d-g1": conv([4, 4, 5], [2, 2, 3], stride=[1, 2, 1], padding=[0, 1, "same"], c_in=1),
    "3d-g2": conv([3, 4, 4], [2, 2, 2], dilation=[1, 2, 1], groups=2, c_in=1, c_out=2, bias=True),
    # long axes: KFAC-reduce sums the windows of x (backend `_window_sum`) instead of a product with Σ_o Π
    "1d-long-dilated": conv([1100], [5], stride=2, padding=9, dilation=3),
    "2d-long-stride2": conv([60, 57], [3, 2], stride=2, padding=[1, (0, 1)], groups=2, c_out=1),
}


def _per_group(factor: Tensor, spec: Conv) -> Tensor:
    """References are [groups, features, features]; files with one group have no group axis."""
    return factor if spec.groups > 1 else factor.squeeze(0)


def input_factor(spec: Conv, x: Tensor, approx: str) -> Tensor:
    """KFC (expand): 1/N Σ_{n, positions} u uᵀ; reduce: 1/(N P²) Σ_n (Σ_positions u)(Σ_positions u)ᵀ."""
    unfolded = pattern_unfold(spec, x)  # [n, (g c), (k...), (o...)]
    n, _, taps, positions = unfolded.shape
    unfolded = unfolded.reshape(n, spec.groups, spec.c_in * taps, positions)  # [n, g, (c k...), (o...)]
    if approx == "expand":
        return _per_group(torch.einsum("ngip,ngjp->gij", unfolded, unfolded) / n, spec)
    summed = unfolded.sum(-1)
    return _per_group(torch.einsum("ngi,ngj->gij", summed, summed) / (n * positions**2), spec)


def output_gradients(spec: Conv, arguments: list[Tensor]) -> Tensor:
    """∂L/∂y of a nonlinear loss of the layer's output, by autograd."""
    y = cases.forward(spec, *arguments)
    leaf = y.detach().requires_grad_()
    (target,) = random_tensors([tuple(y.shape)], seed=3)
    loss = 0.5 * ((leaf.tanh() - target) ** 2).sum()
    (gradient,) = torch.autograd.grad(loss, leaf)
    return gradient


def gradient_factor(spec: Conv, gradient: Tensor, approx: str) -> Tensor:
    """expand: 1/N Σ_{n, positions} g gᵀ; reduce: 1/N Σ_n (Σ_positions g)(Σ_positions g)ᵀ."""
    n = gradient.shape[0]
    grouped = gradient.reshape(n, spec.groups, spec.c_out, -1)  # [n, g, d, (o...)]
    if approx == "expand":
        return _per_group(torch.einsum("ngip,ngjp->gij", grouped, grouped) / n, spec)
    summed = grouped.sum(-1)
    return _per_group(torch.einsum("ngi,ngj->gij", summed, summed) / n, spec)


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("case", list(KFACS))
def test_input_factor(case: str, approx: str) -> None:
    spec = KFACS[case]
    module = load(cases.source(spec, transforms=FACTORS))
    x = cases.argument_list(spec)[0]
    actual = (module.A if approx == "expand" else module.Ar)(x)
    assert relative_error(actual, input_factor(spec, x, approx)) <= TOLERANCE


@pytest.mark.parametrize("approx", ["expand", "reduce"])
@pytest.mark.parametrize("case", list(KFACS))
def test_output_gradient_factor(case: str, approx: str) -> None:
    spec = KFACS[case]
    module = load(cases.source(spec, transforms=FACTORS))
    gradient = output_gradients(spec, cases.argument_list(spec))
    actual = (module.B if approx == "expand" else module.Br)(gradient)
    assert relative_error(actual, gradient_factor(spec, gradient, approx)) <= TOLERANCE


def test_factor_layouts() -> None:
    """[groups..., (in-features), (in-features')] and [groups..., (out-features), (out-features')]."""
    spec = KFACS["2d-g2"]
    module = load(cases.source(spec, transforms=FACTORS))
    x, _ = cases.argument_list(spec)
    gradient = torch.zeros(BATCH, spec.groups * spec.c_out, *spec.pattern_out(), dtype=torch.float64)
    features_in, features_out = spec.c_in * 2 * 3, spec.c_out
    assert module.A(x).shape == module.Ar(x).shape == (spec.groups, features_in, features_in)
    assert module.B(gradient).shape == module.Br(gradient).shape == (spec.groups, features_out, features_out)


def test_expand_and_reduce_differ_by_weight_sharing() -> None:
    """Without positions to share the weight over (kernel as large as the input), expand equals reduce."""
    spec = conv([5, 4], [5, 4], c_out=3)
    module = load(cases.source(spec, transforms=FACTORS))
    x, w = cases.argument_list(spec)
    gradient = output_gradients(spec, [x, w])
    assert relative_error(module.A(x), module.Ar(x)) <= TOLERANCE
    assert relative_error(module.B(gradient), module.Br(gradient)) <= TOLERANCE


def test_tnc_check_prints_factor_signatures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The primed indices of derived layouts have sizes too (`tnc check` once raised KeyError: "c'")."""
    path = tmp_path / "linear_kfac.tnd"
    path.write_text(linear_source(FACTORS))
    assert cli.main(["check", str(path)]) == 0
    assert "A(x) -> [c, c'] = [4, 4]" in capsys.readouterr().out


# --- KFAC factors of dense layers: no index patterns ----------------------------------------------------------------

SEQUENCE = """
index n, t = 5, c = 4, d = 3
input x[n, t, c]
input w[d, c]
input b[d]
y[n, t, d] = x[n, t, c] * w[d, c] + b[d]
""" + "\n".join(FACTORS) + "\n"


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_dense_layer_factors(approx: str) -> None:
    """Without positions both approximations are x xᵀ / N and g gᵀ / N."""
    module = load(linear_source(FACTORS))
    x, g = random_tensors([(BATCH, 4), (BATCH, 3)])
    a_function, b_function = (module.A, module.B) if approx == "expand" else (module.Ar, module.Br)
    assert relative_error(a_function(x), x.T @ x / BATCH) <= TOLERANCE
    assert relative_error(b_function(g), g.T @ g / BATCH) <= TOLERANCE


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_dense_layer_over_a_sequence(approx: str) -> None:
    """A dense layer applied at every position t shares its weight over t, like a convolution."""
    module = load(SEQUENCE)
    x, g = random_tensors([(BATCH, 5, 4), (BATCH, 5, 3)])
    if approx == "expand":
        expected_a, expected_b = torch.einsum("nti,ntj->ij", x, x) / BATCH, torch.einsum("nti,ntj->ij", g, g) / BATCH
        actual_a, actual_b = module.A(x), module.B(g)
    else:
        xs, gs = x.sum(1), g.sum(1)
        expected_a, expected_b = xs.T @ xs / (BATCH * 25), gs.T @ gs / BATCH
        actual_a, actual_b = module.Ar(x), module.Br(g)
    assert relative_error(actual_a, expected_a) <= TOLERANCE
    assert relative_error(actual_b, expected_b) <= TOLERANCE


# --- against curvlinops ------------------------------------------------------------------------------------------


def _cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2), nn.Flatten(),
                         nn.Linear(4 * 3 * 3, 3)).double()


def _layer_source(layer: nn.Module, spatial: tuple[int, ...]) -> str:
    """The `.tnd` file of one layer of the CNN, with its KFAC factors."""
    if isinstance(layer, nn.Linear):
        return linear_source(FACTORS, c=layer.in_features, d=layer.out_features)
    assert isinstance(layer, nn.Conv2d) and isinstance(layer.padding, tuple)
    spec = conv(list(spatial), list(layer.kernel_size), stride=list(layer.stride), padding=list(layer.padding),
                dilation=list(layer.dilation), c_in=layer.in_channels, c_out=layer.out_channels, bias=True)
    return cases.source(spec, transforms=FACTORS)


def _inputs_and_output_gradients(model: nn.Sequential, x: Tensor, labels: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
    """Each layer's input, and the gradient of the summed cross-entropy with respect to its output."""
    inputs: dict[str, Tensor] = {}
    outputs: dict[str, Tensor] = {}

    def record(layer: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        name = names[layer]
        inputs[name], outputs[name] = args[0], out

    names = {layer: name for name, layer in model.named_children() if isinstance(layer, nn.Conv2d | nn.Linear)}
    handles = [layer.register_forward_hook(record) for layer in names]
    loss = F.cross_entropy(model(x), labels, reduction="sum")
    for handle in handles:
        handle.remove()
    gradients = torch.autograd.grad(loss, list(outputs.values()))
    return {name: (inputs[name].detach(), g) for name, g in zip(outputs, gradients)}


def _curvlinops_factors(model: nn.Sequential, x: Tensor, labels: Tensor, approx: str) -> dict[str, dict[str, Tensor]]:
    """KFACLinearOperator's factors with the empirical Fisher of the mean cross-entropy."""
    curvlinops = pytest.importorskip("curvlinops")
    operator = curvlinops.KFACLinearOperator(
        model, nn.CrossEntropyLoss(reduction="mean"), list(model.parameters()), [(x, labels)],
        fisher_type="empirical", kfac_approx=approx, check_deterministic=False)
    operator.compute_kronecker_factors()
    state = operator.state_dict()
    return {"A": state["input_covariances"], "B": state["gradient_covariances"]}


@pytest.mark.parametrize("approx", ["expand", "reduce"])
def test_cnn_factors_match_curvlinops(approx: str) -> None:
    """curvlinops divides KFC's (expand) input factor by the number of output positions as well, so ours is
    P times larger; its reduce factor averages over positions, ours sums and divides by P²: equal. With the
    mean loss, its gradient factor is (1/N) Σ g gᵀ of the summed loss's gradients, as ours for both."""
    model = _cnn()
    x, = random_tensors([(5, 1, 8, 8)])
    labels = torch.tensor([0, 1, 2, 1, 0])
    expected = _curvlinops_factors(model, x, labels, approx)
    for name, (layer_input, gradient) in _inputs_and_output_gradients(model, x, labels).items():
        layer = getattr(model, name)
        module = load(_layer_source(layer, tuple(layer_input.shape[2:])))
        positions = gradient[0, 0].numel()
        a_function, b_function = (module.A, module.B) if approx == "expand" else (module.Ar, module.Br)
        scale = positions if approx == "expand" else 1
        assert relative_error(a_function(layer_input), scale * expected["A"][name]) <= TOLERANCE, name
        assert relative_error(b_function(gradient), expected["B"][name]) <= TOLERANCE, name

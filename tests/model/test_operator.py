"""`KFACOperator` against curvlinops 3.0.1's `KFACLinearOperator`, `KFACInverseLinearOperator` and
`EKFACLinearOperator` (nn.Linear, with and without weight sharing, and nn.Conv2d, which it supports) for every fisher,
approx and bias setting, in float64; and, for grouped layers, transpose and 1-d convolutions and a layer called twice
(which curvlinops does not support, or treats otherwise), against dense references: the factors' per-group blocks
placed by index arithmetic on PyTorch's weight layouts, torch.linalg on the dense matrix, and per-example gradients
from torch.func for EKFAC."""

from __future__ import annotations

import itertools
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import tncompiler
from tncompiler.model.operator import KFACOperator

curvlinops = pytest.importorskip("curvlinops")
pytestmark = pytest.mark.usefixtures("one_thread")

Tensor = torch.Tensor
TOLERANCE = 1e-10  # float64: max |error| / max |reference|
SEED = 2147483647  # curvlinops' default seed: with a generator seeded alike, fisher="mc" draws the same labels
CLASSES = 3
FISHERS = ["empirical", "type-2", "mc"]
APPROXES = ["expand", "reduce"]


def error(actual: Tensor, expected: Tensor) -> float:
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    scale = expected.abs().max().item() or 1.0
    return float((actual - expected).abs().max().item() / scale)


class Tokens(nn.Module):
    """[n, c, h, w] -> [n, h·w, c]: the linear layer after it shares its weight over the h·w positions."""

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(2).transpose(1, 2)


class Mean(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.mean(1)


def curvlinops_net() -> nn.Module:
    """Conv2d (with and without a bias, strided) and Linear (with weight sharing, and without): what curvlinops
    supports. Small enough that 48 examples give full-rank factors with distinct eigenvalues (EKFAC's eigenbasis is
    then unique, so two implementations can agree on it)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(3, 4, 3, stride=2, bias=False),
        nn.Tanh(),
        Tokens(),
        nn.Linear(4, 5),  # on [n, 9, 4]
        nn.Tanh(),  # (a ReLU here leaves a unit dead on these data: singular factors)
        Mean(),
        nn.Linear(5, CLASSES),
    ).double()


def batches(
    shape: tuple[int, ...], loss: str = "mse", sizes: tuple[int, ...] = (20, 16, 12)
) -> list[tuple[Tensor, Tensor]]:
    generator = torch.Generator().manual_seed(1)
    data = []
    for size in sizes:
        x = torch.randn(size, *shape, generator=generator, dtype=torch.float64)
        if loss == "ce":
            y = torch.randint(0, CLASSES, (size,), generator=generator)
        elif loss == "bce":
            y = torch.randint(0, 2, (size, CLASSES), generator=generator).double()
        else:
            y = torch.randn(size, CLASSES, generator=generator, dtype=torch.float64)
        data.append((x, y))
    return data


def trained(model: nn.Module) -> list[Tensor]:
    return [p for p in model.parameters() if p.requires_grad]


def columns(model: nn.Module, k: int = 2) -> Tensor:
    dimension = sum(p.numel() for p in trained(model))
    return torch.randn(dimension, k, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def ours(model: nn.Module, loss: nn.Module, data: Any, fisher: str, approx: str, separate: bool) -> KFACOperator:
    mc = 2 if fisher == "mc" else 1
    generator = torch.Generator().manual_seed(SEED)
    return KFACOperator(
        model, loss, data, approx=approx, fisher=fisher, mc_samples=mc,  # type: ignore[arg-type]
        separate_weight_and_bias=separate, generator=generator,
    )  # fmt: skip


def theirs(
    model: nn.Module, loss: nn.Module, data: Any, fisher: str, approx: str, separate: bool, ekfac: bool = False
) -> Any:
    kind = curvlinops.EKFACLinearOperator if ekfac else curvlinops.KFACLinearOperator
    return kind(
        model, loss, trained(model), data, fisher_type=fisher, mc_samples=2 if fisher == "mc" else 1,
        kfac_approx=approx, separate_weight_and_bias=separate, check_deterministic=False, seed=SEED,
    )  # fmt: skip


def assert_same_operator(mine: Any, reference: Any, v: Tensor) -> None:
    assert error(mine @ v, reference @ v) <= TOLERANCE
    for name in ("trace", "logdet", "frobenius_norm"):
        assert error(getattr(mine, name)(), getattr(reference, name)) <= TOLERANCE, name


COMBINATIONS = list(itertools.product(FISHERS, APPROXES, [True, False]))


@pytest.mark.parametrize(("fisher", "approx", "separate"), COMBINATIONS)
def test_kfac_equals_curvlinops(fisher: str, approx: str, separate: bool) -> None:
    """K @ V, trace, logdet, Frobenius norm, and the default damped inverse; mc with curvlinops' draws."""
    model, data, loss = curvlinops_net(), batches((2, 7, 7)), nn.MSELoss()
    mine, reference, v = (
        ours(model, loss, data, fisher, approx, separate),
        theirs(model, loss, data, fisher, approx, separate),
        columns(model),
    )
    assert_same_operator(mine, reference, v)
    inverse = curvlinops.KFACInverseLinearOperator(reference, damping=1e-3)
    assert error(mine.inverse(damping=1e-3) @ v, inverse @ v) <= TOLERANCE


@pytest.mark.parametrize(("fisher", "approx", "separate"), COMBINATIONS)
def test_eigenvalue_corrected_equals_curvlinops_ekfac(fisher: str, approx: str, separate: bool) -> None:
    """EKFAC @ V, its matrix functions and its (exactly damped) inverse; mc with the same draws in both passes."""
    model, data, loss = curvlinops_net(), batches((2, 7, 7)), nn.MSELoss()
    mine = ours(model, loss, data, fisher, approx, separate).eigenvalue_corrected()
    reference, v = theirs(model, loss, data, fisher, approx, separate, ekfac=True), columns(model)
    assert_same_operator(mine, reference, v)
    inverse = curvlinops.KFACInverseLinearOperator(reference, damping=1e-3, use_exact_damping=True)
    assert error(mine.inverse(damping=1e-3) @ v, inverse @ v) <= TOLERANCE


INVERSES = {
    "pair": ({"damping": (1e-3, 1e-2)}, {"damping": (1e-3, 1e-2)}),
    "heuristic": ({"damping": 1e-3, "heuristic": True}, {"damping": 1e-3, "use_heuristic_damping": True}),
    "heuristic-min": (
        {"damping": 1e-3, "heuristic": True, "min_damping": 0.05},
        {"damping": 1e-3, "use_heuristic_damping": True, "min_damping": 0.05},
    ),
    "exact": ({"damping": 1e-3, "exact": True}, {"damping": 1e-3, "use_exact_damping": True}),
}


@pytest.mark.parametrize(("option", "separate"), list(itertools.product(INVERSES, [True, False])))
def test_inverse_options_equal_curvlinops(option: str, separate: bool) -> None:
    """Each damping of KFACInverseLinearOperator: a pair (λ_A, λ_B), the π heuristic (which damps a separate bias's B
    with its weight's λ_B), its minimum, and exact damping."""
    model, data, loss = curvlinops_net(), batches((2, 7, 7)), nn.MSELoss()
    reference = theirs(model, loss, data, "type-2", "expand", separate)
    mine_options, their_options = INVERSES[option]
    inverse = curvlinops.KFACInverseLinearOperator(reference, **their_options)
    v = columns(model)
    actual = ours(model, loss, data, "type-2", "expand", separate).inverse(**mine_options) @ v  # type: ignore[arg-type]
    assert error(actual, inverse @ v) <= TOLERANCE


def test_inverse_solves_first_then_applies_the_formed_inverses() -> None:
    """The first application of a fresh inverse to few columns solves with the Cholesky factors (a 41x41 A, one
    vector); the next forms the inverses: both equal curvlinops' (which forms them at once)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 4), nn.Tanh(), nn.Linear(4, CLASSES)).double()
    data = batches((40,), sizes=(30, 30))
    mine = ours(model, nn.MSELoss(), data, "type-2", "expand", False).inverse(damping=1e-3)
    reference = curvlinops.KFACInverseLinearOperator(
        theirs(model, nn.MSELoss(), data, "type-2", "expand", False), damping=1e-3
    )
    v = columns(model, 1)[:, 0]
    first = mine @ v
    assert mine._maps[0].a._inverse is None  # type: ignore[attr-defined]  # the first layer's A: solved, not formed
    second = mine @ v
    assert mine._maps[0].a._inverse is not None  # type: ignore[attr-defined]
    expected = reference @ v
    assert error(first, expected) <= TOLERANCE
    assert error(second, expected) <= TOLERANCE


@pytest.mark.parametrize("loss", ["ce-mean", "ce-sum", "bce", "mse-sum"])
def test_other_losses_equal_curvlinops(loss: str) -> None:
    functions: dict[str, Callable[[], nn.Module]] = {
        "ce-mean": nn.CrossEntropyLoss,
        "ce-sum": lambda: nn.CrossEntropyLoss(reduction="sum"),
        "bce": nn.BCEWithLogitsLoss,
        "mse-sum": lambda: nn.MSELoss(reduction="sum"),
    }
    model, data, function = curvlinops_net(), batches((2, 7, 7), loss.split("-")[0]), functions[loss]()
    mine, reference = (
        ours(model, function, data, "type-2", "reduce", True),
        theirs(model, function, data, "type-2", "reduce", True),
    )
    v = columns(model)
    assert error(mine @ v, reference @ v) <= TOLERANCE
    assert error(mine.trace(), reference.trace) <= TOLERANCE


def frozen_net() -> nn.Module:
    """The first convolution's bias frozen, the last layer's weight frozen (its bias alone trained)."""
    model = curvlinops_net()
    model[0].bias.requires_grad_(False)
    model[8].weight.requires_grad_(False)
    return model


@pytest.mark.parametrize("separate", [True, False])
def test_frozen_tensors_are_left_out_as_curvlinops_leaves_them(separate: bool) -> None:
    """A frozen bias has no row in A; a layer that trains its bias alone is B on its own, undamped A = [[1]]."""
    model, data, loss = frozen_net(), batches((2, 7, 7)), nn.MSELoss()
    mine, reference, v = (
        ours(model, loss, data, "empirical", "expand", separate),
        theirs(model, loss, data, "empirical", "expand", separate),
        columns(model),
    )
    assert mine.shape == reference.shape
    assert_same_operator(mine, reference, v)
    for options, their_options in (INVERSES["heuristic"], ({"damping": 1e-2}, {"damping": 1e-2})):
        inverse = curvlinops.KFACInverseLinearOperator(reference, **their_options)
        assert error(mine.inverse(**options) @ v, inverse @ v) <= TOLERANCE  # type: ignore[arg-type]
    ekfac = theirs(model, loss, data, "empirical", "expand", separate, ekfac=True)
    assert_same_operator(mine.eigenvalue_corrected(), ekfac, v)


def test_lists_and_flat_tensors_as_curvlinops_takes_them() -> None:
    """A list of parameter-shaped tensors (a vector), the same with a trailing axis (a matrix), a flat [D] or [D, K]:
    the result has the form of the argument, as curvlinops gives it."""
    model, data, loss = curvlinops_net(), batches((2, 7, 7)), nn.MSELoss()
    mine, reference = (
        ours(model, loss, data, "empirical", "expand", True),
        theirs(model, loss, data, "empirical", "expand", True),
    )
    flat = columns(model, 3)
    shapes = [p.shape for p in trained(model)]
    matrices = [part.reshape(*shape, 3) for part, shape in zip(flat.split([s.numel() for s in shapes]), shapes)]
    vectors = [m[..., 0] for m in matrices]
    for argument in (flat, flat[:, 0], matrices, vectors):
        actual, expected = mine @ argument, reference @ argument
        if isinstance(expected, list):
            assert isinstance(actual, list) and len(actual) == len(expected)
            assert all(error(a, b) <= TOLERANCE for a, b in zip(actual, expected))
        else:
            assert error(actual, expected) <= TOLERANCE
    assert error(mine.to_dense(), reference @ torch.eye(mine.shape[1], dtype=torch.float64)) <= TOLERANCE


def test_bad_arguments_are_refused_with_the_shapes() -> None:
    model, data = curvlinops_net(), batches((2, 7, 7), sizes=(4,))
    mine = KFACOperator(model, nn.MSELoss(), data, approx="expand", fisher="empirical")
    dimension = mine.shape[1]
    with pytest.raises(ValueError, match=f"shape \\({dimension},\\)"):
        mine @ torch.zeros(dimension + 1, dtype=torch.float64)
    with pytest.raises(ValueError, match="shaped as the trained parameters"):
        mine @ [torch.zeros(3)]
    with pytest.raises(TypeError, match="tensor or a list of tensors"):
        mine @ 3.0  # type: ignore[operator]
    with pytest.raises(ValueError, match="heuristic=True or exact=True"):
        mine.inverse(1e-3, heuristic=True, exact=True)
    with pytest.raises(ValueError, match="not a pair"):
        mine.inverse((1e-3, 1e-2), exact=True)
    with pytest.raises(ValueError, match="damping must be ≥ 0"):
        mine.inverse(-1.0)


# --- layers curvlinops does not support: dense references -----------------------------------------------------------


class Grouped(nn.Module):
    """A grouped Conv2d called twice, a grouped strided ConvTranspose2d, a Conv1d without a bias and a Linear head.
    (The transpose convolution's taps overlap and its padding crops them unevenly: with a 2x2 kernel at stride 2 each
    output would see one tap, A would repeat one block per tap (degenerate eigenvalues: no unique EKFAC basis), and
    every tap would see every input, so KFAC-reduce's A would be singular.)"""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.tconv = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, groups=2)
        self.conv1d = nn.Conv1d(4, 2, 3, bias=False)
        self.head = nn.Linear(2, CLASSES)

    def forward(self, x: Tensor) -> Tensor:  # [n, 4, 3, 3]
        h = torch.tanh(self.conv(torch.tanh(self.conv(x))))
        h = torch.tanh(self.tconv(h))  # [n, 4, 5, 5]
        h = torch.tanh(self.conv1d(h.flatten(2)))  # [n, 2, 23]
        return self.head(h.mean(2))  # type: ignore[no-any-return]


def grouped_net() -> nn.Module:
    torch.manual_seed(0)
    return Grouped().double()


def weight_positions(module: nn.Module) -> Tensor:
    """[g, out, in]: the flat position in the weight of each entry of its per-group matrix, by index arithmetic on
    PyTorch's layouts [(g d), c, k...] and a transpose convolution's [(g c), d, k...]; in = (c, k...)."""
    if isinstance(module, nn.Linear):
        return torch.arange(module.weight.numel()).reshape(1, module.out_features, module.in_features)
    assert isinstance(module, nn.modules.conv._ConvNd)
    groups, kernel = module.groups, math.prod(module.kernel_size)
    c, d = module.in_channels // groups, module.out_channels // groups
    g_, d_, c_, k_ = torch.meshgrid(*(torch.arange(s) for s in (groups, d, c, kernel)), indexing="ij")
    transposed = ((g_ * c + c_) * d + d_) * kernel + k_
    plain = ((g_ * d + d_) * c + c_) * kernel + k_
    return (transposed if module.transposed else plain).reshape(groups, d, c * kernel)


Blocks = list[tuple[Tensor, Tensor, Tensor]]  # (positions [g, out, in'], A [g, in', in'], B [g, out, out])


def reference_blocks(model: nn.Module, factors: dict[str, tuple[Tensor, Tensor]], separate: bool) -> Blocks:
    """Each block's positions among all trained parameters and its factors, from `kfac_factors`' per-group blocks; a
    bias on its own has A = [[1]]."""
    offsets, start = {}, 0
    for p in trained(model):
        offsets[id(p)], start = start, start + p.numel()
    blocks: Blocks = []
    for name, (a, b) in factors.items():
        module = model.get_submodule(name)
        a, b = (a, b) if a.dim() == 3 else (a[None], b[None])
        groups, out = b.shape[0], b.shape[1]
        weight = offsets[id(module.weight)] + weight_positions(module) if module.weight.requires_grad else None
        has_bias = module.bias is not None and module.bias.requires_grad
        bias = offsets[id(module.bias)] + torch.arange(groups * out).reshape(groups, out, 1) if has_bias else None
        one = torch.ones(groups, 1, 1, dtype=b.dtype)
        if weight is None:
            blocks.append((bias, one, b))  # type: ignore[arg-type]
        elif bias is None:
            blocks.append((weight, a, b))
        elif separate:
            blocks += [(weight, a[:, :-1, :-1], b), (bias, one, b)]
        else:
            blocks.append((torch.cat([weight, bias], dim=2), a, b))
    return blocks


def dense(blocks: Blocks, dimension: int, transform: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]) -> Tensor:
    """Σ over the blocks and groups of kron(B', A') placed at the block's positions, (A', B') = transform(A, B)."""
    matrix = torch.zeros(dimension, dimension, dtype=torch.float64)
    for positions, a, b in blocks:
        for g in range(b.shape[0]):
            a_g, b_g = transform(a[g], b[g])
            rows = positions[g].reshape(-1)  # out-major, as kron(B, A) is laid out
            matrix[rows[:, None], rows[None, :]] = torch.kron(b_g, a_g)
    return matrix


def grouped_operator(
    separate: bool, fisher: str = "type-2", approx: str = "expand", **kw: Any
) -> tuple[nn.Module, Any, KFACOperator]:
    model, data = grouped_net(), batches((4, 3, 3), sizes=(18, 12))
    loss = kw.pop("loss", nn.MSELoss())
    operator = KFACOperator(model, loss, data, approx=approx, fisher=fisher, separate_weight_and_bias=separate, **kw)  # type: ignore[arg-type]
    return model, data, operator


def unchanged(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    return a, b


@pytest.mark.parametrize(("approx", "separate"), list(itertools.product(APPROXES, [True, False])))
def test_grouped_and_transposed_layers_are_exact_block_diagonals(approx: str, separate: bool) -> None:
    """The dense matrix is the per-group kron(B, A) blocks at their parameters' positions; trace, logdet and the
    Frobenius norm are those of that matrix (torch.linalg); the inverses are the blocks of the damped factors'
    inverses and, exact, inv(K + λ I)."""
    model, data, operator = grouped_operator(separate, approx=approx)
    factors = tncompiler.kfac_factors(model, nn.MSELoss(), data, approx=approx, fisher="type-2")  # type: ignore[arg-type]
    blocks, dimension = reference_blocks(model, factors, separate), operator.shape[0]
    expected = dense(blocks, dimension, unchanged)
    assert error(operator.to_dense(), expected) <= TOLERANCE
    assert error(operator.trace(), torch.trace(expected)) <= TOLERANCE
    assert error(operator.logdet(), torch.linalg.slogdet(expected)[1]) <= TOLERANCE
    assert error(operator.frobenius_norm(), torch.linalg.matrix_norm(expected)) <= TOLERANCE
    damping = 1e-2

    def damped(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        eye_a = torch.eye(a.shape[0], dtype=a.dtype) * (0.0 if a.shape[0] == 1 and a[0, 0] == 1 else damping)
        return torch.linalg.inv(a + eye_a), torch.linalg.inv(b + damping * torch.eye(b.shape[0], dtype=b.dtype))

    assert error(operator.inverse(damping).to_dense(), dense(blocks, dimension, damped)) <= 1e-9
    exact = torch.linalg.inv(expected + damping * torch.eye(dimension, dtype=torch.float64))
    assert error(operator.inverse(damping, exact=True).to_dense(), exact) <= 1e-9


def per_example_gradients(model: nn.Module, data: list[tuple[Tensor, Tensor]]) -> Tensor:
    """[N, D]: the gradient of each example's summed MSE in the trained parameters, by torch.func."""
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    fixed = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}

    def loss(parameters: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        output = torch.func.functional_call(model, {**fixed, **parameters}, (x[None],))
        return nn.functional.mse_loss(output, y[None], reduction="sum")

    parameters = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    rows = []
    for x, y in data:
        gradients = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(parameters, x, y)
        rows.append(torch.cat([gradients[name].flatten(1) for name in names], dim=1))
    return torch.cat(rows)


@pytest.mark.parametrize(("approx", "separate"), list(itertools.product(APPROXES, [True, False])))
def test_eigenvalue_corrected_grouped_layers_equal_per_example_gradients(approx: str, separate: bool) -> None:
    """EKFAC = Q diag(s) Qᵀ with Q the per-group kron(Q_B, Q_A) of the factors' eigenvectors and s = Σ_n (Qᵀ g_n)²
    over torch.func's per-example gradients g_n (the empirical Fisher of a summed loss); the layer called twice
    contributes the sum of both calls to g_n."""
    model, data, operator = grouped_operator(
        separate, fisher="empirical", approx=approx, loss=nn.MSELoss(reduction="sum")
    )
    factors = tncompiler.kfac_factors(model, nn.MSELoss(reduction="sum"), data, approx=approx)  # type: ignore[arg-type]
    blocks, dimension = reference_blocks(model, factors, separate), operator.shape[0]

    def eigenvectors(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        return torch.linalg.eigh(a).eigenvectors, torch.linalg.eigh(b).eigenvectors

    basis = dense(blocks, dimension, eigenvectors)
    values = (per_example_gradients(model, data) @ basis).square().sum(0)
    expected = basis @ torch.diag(values) @ basis.T
    corrected = operator.eigenvalue_corrected()
    assert error(corrected.to_dense(), expected) <= TOLERANCE
    assert error(corrected.trace(), values.sum()) <= TOLERANCE
    assert error(corrected.logdet(), values.log().sum()) <= TOLERANCE
    inverse = torch.linalg.inv(expected + 1e-3 * torch.eye(dimension, dtype=torch.float64))
    assert error(corrected.inverse(1e-3).to_dense(), inverse) <= 1e-9


def test_mc_ekfac_replays_the_factors_draws() -> None:
    """EKFAC's pass draws the labels the factors' pass drew, as curvlinops reseeds for both, also without a
    generator. Seen on one example through a linear layer (bias folded in): K = vec(G) vec(G)ᵀ, rank one, so EKFAC,
    whose corrected eigenvalues are (Q_Bᵀ G' Q_A)² for the second pass's gradient G', equals K exactly when G' = G;
    a different draw (MSE: Gaussian labels) would change G'."""
    model = nn.Sequential(nn.Linear(3, CLASSES)).double()
    data = [(torch.randn(1, 3, dtype=torch.float64), torch.zeros(1, CLASSES, dtype=torch.float64))]
    loss = nn.MSELoss(reduction="sum")
    torch.manual_seed(5)
    operator = KFACOperator(model, loss, data, approx="expand", fisher="mc", separate_weight_and_bias=False)
    assert error(operator.eigenvalue_corrected().to_dense(), operator.to_dense()) <= TOLERANCE
    other = KFACOperator(model, loss, data, approx="expand", fisher="mc", separate_weight_and_bias=False)
    assert error(other.to_dense(), operator.to_dense()) > 1e-3  # the check above would see other labels


# --- what the operator refuses, and edge cases ------------------------------------------------------------------


class WithNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.norm(self.linear(x)))  # type: ignore[no-any-return]


def small_data() -> list[tuple[Tensor, Tensor]]:
    return batches((3,), sizes=(8,))


def test_parameters_outside_supported_layers_are_refused_by_name() -> None:
    """As curvlinops refuses them (NotImplementedError), with the parameters' names; frozen, they are left out."""
    model = WithNorm().double()
    with pytest.raises(ValueError, match=r"norm\.weight, norm\.bias .*requires_grad_\(False\)"):
        KFACOperator(model, nn.MSELoss(), small_data(), approx="expand", fisher="empirical")
    model.norm.requires_grad_(False)
    operator = KFACOperator(model, nn.MSELoss(), small_data(), approx="expand", fisher="empirical")
    reference = curvlinops.KFACLinearOperator(
        model, nn.MSELoss(), trained(model), small_data(), fisher_type="empirical", check_deterministic=False
    )
    v = columns(model)
    assert error(operator @ v, reference @ v) <= TOLERANCE


def test_parametrized_and_tied_weights_are_refused() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, CLASSES)).double()
    torch.nn.utils.parametrizations.weight_norm(model[0])
    with pytest.raises(ValueError, match="weight of layer '0' is parametrized"):
        KFACOperator(model, nn.MSELoss(), small_data(), approx="expand", fisher="empirical")
    tied = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, CLASSES), nn.Tanh(), nn.Linear(3, 3)).double()
    tied[4].weight = tied[0].weight
    with pytest.raises(ValueError, match="layers '0' and '4' share a parameter"):
        KFACOperator(
            tied,
            nn.MSELoss(),
            [(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64))],
            approx="expand",
            fisher="empirical",
        )


def test_one_pair_and_one_shot_iterators() -> None:
    """One (x, y) pair is one batch; a one-shot iterator gives the factors, but EKFAC (a second pass) says why not."""
    model, (pair,) = curvlinops_net(), batches((2, 7, 7), sizes=(6,))
    v = columns(model)
    from_pair = KFACOperator(model, nn.MSELoss(), pair, approx="expand", fisher="empirical")
    from_list = KFACOperator(model, nn.MSELoss(), [pair], approx="expand", fisher="empirical")
    assert error(from_pair @ v, from_list @ v) <= TOLERANCE
    assert error(from_pair.eigenvalue_corrected() @ v, from_list.eigenvalue_corrected() @ v) <= TOLERANCE
    once = KFACOperator(model, nn.MSELoss(), iter([pair]), approx="expand", fisher="empirical")
    assert error(once @ v, from_list @ v) <= TOLERANCE
    with pytest.raises(ValueError, match="one-shot iterator"):
        once.eigenvalue_corrected()


class Unused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(3, CLASSES)
        self.unused = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.used(x)  # type: ignore[no-any-return]


def test_a_trained_layer_no_batch_calls_has_zero_factors() -> None:
    """Its gradient is always zero, so are its factors: K is zero there and its damped inverse 1/λ² (1/λ for the
    bias on its own)."""
    model = Unused().double()
    operator = KFACOperator(model, nn.MSELoss(), small_data(), approx="expand", fisher="empirical")
    block = slice(CLASSES * 4, None)  # the unused layer's weight and bias come after the used one's
    assert torch.count_nonzero(operator.to_dense()[block]) == 0
    inverse = operator.inverse(0.1).to_dense()[block, block]
    expected = torch.diag(torch.tensor([100.0] * 6 + [10.0] * 2, dtype=torch.float64))
    assert error(inverse, expected) <= TOLERANCE


def test_a_singular_factor_without_damping_names_the_layer() -> None:
    """A feature that is always zero makes A singular: in float32 the Cholesky factorisation fails, is retried in
    float64 with a warning (as curvlinops does), fails again and raises, naming the factor and the layer."""
    model = nn.Sequential(nn.Linear(3, CLASSES))
    x = torch.randn(4, 3)
    x[:, 2] = 0.0
    data = [(x, torch.randn(4, CLASSES))]
    operator = KFACOperator(model, nn.MSELoss(), data, approx="expand", fisher="empirical")
    with (
        pytest.warns(UserWarning, match="retrying in float64"),
        pytest.raises(ValueError, match="input factor A of layer '0'"),
    ):
        operator.inverse(0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        operator.inverse(1e-3) @ torch.ones(operator.shape[1])  # damped: no warning


# --- across processes ----------------------------------------------------------------------------------------------

WORLD = 2


def _operators_on_a_share(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        share = batches((4, 3, 3), sizes=(18, 12))[rank]
        operator = KFACOperator(
            grouped_net(), nn.MSELoss(), [share], approx="expand", fisher="type-2", process_group=dist.group.WORLD
        )
        results = {"kfac": operator.to_dense(), "ekfac": operator.eigenvalue_corrected().to_dense()}
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ranks_with_shares_of_the_data_get_the_operator_of_all_of_it(tmp_path: Path) -> None:
    """Two gloo processes, 18 and 12 examples: both hold the KFAC and EKFAC of all 30 (uneven shares weigh each
    example alike)."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    os.environ.setdefault("TNC_CACHE_DIR", str(tmp_path / "cache"))
    mp.spawn(_operators_on_a_share, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    _, _, whole = grouped_operator(True)
    expected = {"kfac": whole.to_dense(), "ekfac": whole.eigenvalue_corrected().to_dense()}
    for rank in range(WORLD):
        results = torch.load(tmp_path / f"rank{rank}.pt")
        for name in expected:
            assert error(results[name], expected[name]) <= TOLERANCE, (rank, name)

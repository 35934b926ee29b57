"""`TncGGN`, tnc's laplace-torch back end, against laplace's own back ends in float64: `CurvlinopsGGN` for
hessian_structure="kron" and `BackPackGGN` for "diag" (fit, marginal likelihood, predictive), for regression and
classification; grouped convolutions against curvlinops on the same model with each group a convolution of its own;
the diagonal of layers the references lack against laplace's torch.func GGN (`GGNInterface.diag`)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

laplace = pytest.importorskip("laplace")

from laplace.curvature import BackPackGGN, CurvlinopsGGN, GGNInterface  # noqa: E402
from laplace.utils import Kron  # noqa: E402

from tncompiler.integrations.laplace import GroupedKron, GroupedKronDecomposed, TncGGN  # noqa: E402

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),  # BackPACK's hooks, in laplace
]

Tensor = torch.Tensor
TOLERANCE = 1e-10  # float64: |error| / |reference|, or max |error| / max |reference| for tensors
SEED = 2147483647  # curvlinops' default seed: a generator seeded alike draws curvlinops' Monte-Carlo labels
EXAMPLES, OUTPUTS = 20, 3
LIKELIHOODS = ["classification", "regression"]


@pytest.fixture(autouse=True)
def float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def error(actual: Tensor, expected: Tensor) -> float:
    assert actual.shape == expected.shape, (tuple(actual.shape), tuple(expected.shape))
    scale = expected.abs().max().item() or 1.0
    return float((actual - expected).abs().max().item() / scale)


def cnn(groups: int = 1) -> nn.Module:
    """Two convolutions (strided, the second grouped or not), a Tanh between two Linears: every block kind."""
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2, groups=groups), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 3 * 3, 5), nn.Tanh(), nn.Linear(5, OUTPUTS),
    )  # fmt: skip


def data(likelihood: str, batch_size: int = 7) -> DataLoader[tuple[Tensor, ...]]:
    """20 examples in uneven batches (7, 7, 6): each batch's A is scaled by its own share of the data."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(EXAMPLES, 1, 8, 8, generator=generator)
    if likelihood == "classification":
        y = torch.randint(0, OUTPUTS, (EXAMPLES,), generator=generator)
    else:
        y = torch.randn(EXAMPLES, OUTPUTS, generator=generator)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def fitted(
    model: nn.Module, likelihood: str, structure: str, backend: type, loader: DataLoader[tuple[Tensor, ...]], **kw: Any
) -> Any:
    kwargs = {"sigma_noise": 0.7} if likelihood == "regression" else {}
    la = laplace.Laplace(model, likelihood, subset_of_weights="all", hessian_structure=structure, backend=backend,
                         prior_precision=0.5, **kwargs, **kw)  # fmt: skip
    la.fit(loader)
    return la


def predictive(la: Any, x: Tensor) -> list[Tensor]:
    if la.likelihood == "classification":
        return [la(x, pred_type="glm", link_approx="probit")]
    return list(la(x, pred_type="glm"))


def assert_same_posterior(ours: Any, theirs: Any, priors: list[Tensor], their_priors: list[Tensor]) -> None:
    """Loss, marginal likelihood at each prior precision (the same, written per parameter for each), predictive."""
    assert error(torch.as_tensor(ours.loss), torch.as_tensor(theirs.loss)) < TOLERANCE
    for prior, their_prior in zip(priors, their_priors):
        ml, expected = ours.log_marginal_likelihood(prior), theirs.log_marginal_likelihood(their_prior)
        assert error(ml, expected) < TOLERANCE, (prior, ml.item(), expected.item())
    x = next(iter(data(ours.likelihood)))[0][:5]
    for mine, reference in zip(predictive(ours, x), predictive(theirs, x)):
        assert error(mine, reference) < TOLERANCE


def per_layer(model: nn.Module) -> Tensor:
    return torch.linspace(0.3, 2.0, len(list(model.parameters())))


# --- equal to laplace's back ends ------------------------------------------------------------------------------------


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_kron_equals_curvlinops(likelihood: str) -> None:
    loader = data(likelihood)
    ours = fitted(cnn(), likelihood, "kron", TncGGN, loader)
    theirs = fitted(cnn(), likelihood, "kron", CurvlinopsGGN, loader)
    assert type(ours.H_facs) is Kron and len(ours.H_facs.kfacs) == len(theirs.H_facs.kfacs)
    for mine, reference in zip(ours.H_facs.kfacs, theirs.H_facs.kfacs):
        assert [f.shape for f in mine] == [f.shape for f in reference]
        assert all(error(f, g) < TOLERANCE for f, g in zip(mine, reference))
    priors = [torch.tensor(0.5), torch.tensor(3.0), per_layer(cnn())]
    assert_same_posterior(ours, theirs, priors, priors)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_diag_equals_backpack(likelihood: str) -> None:
    loader = data(likelihood)
    ours = fitted(cnn(), likelihood, "diag", TncGGN, loader)
    theirs = fitted(cnn(), likelihood, "diag", BackPackGGN, loader)
    assert error(ours.H, theirs.H) < TOLERANCE
    priors = [torch.tensor(0.5), per_layer(cnn())]
    assert_same_posterior(ours, theirs, priors, priors)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_stochastic_draws_equal_the_references(likelihood: str) -> None:
    """The Monte-Carlo Fisher: kron with curvlinops' seed (one batch: curvlinops reseeds per batch) and diag with
    BackPACK's draws from torch's global generator."""
    loader = data(likelihood, batch_size=EXAMPLES)
    generator = torch.Generator().manual_seed(SEED)
    ours = fitted(
        cnn(), likelihood, "kron", TncGGN, loader, backend_kwargs={"stochastic": True, "generator": generator}
    )
    theirs = fitted(cnn(), likelihood, "kron", CurvlinopsGGN, loader, backend_kwargs={"stochastic": True})
    assert error(ours.log_marginal_likelihood(), theirs.log_marginal_likelihood()) < TOLERANCE
    torch.manual_seed(5)
    ours = fitted(cnn(), likelihood, "diag", TncGGN, loader, backend_kwargs={"stochastic": True})
    torch.manual_seed(5)
    theirs = fitted(cnn(), likelihood, "diag", BackPackGGN, loader, backend_kwargs={"stochastic": True})
    assert error(ours.H, theirs.H) < TOLERANCE


def test_kron_leaves_frozen_layers_out_as_curvlinops() -> None:
    ours_model, their_model = cnn(), cnn()
    for model in (ours_model, their_model):
        model[0].requires_grad_(False)
    loader = data("classification")
    ours = fitted(ours_model, "classification", "kron", TncGGN, loader)
    theirs = fitted(their_model, "classification", "kron", CurvlinopsGGN, loader)
    assert len(ours.H_facs.kfacs) == len(theirs.H_facs.kfacs) == 6
    assert_same_posterior(ours, theirs, [torch.tensor(0.5)], [torch.tensor(0.5)])


# --- grouped convolutions: one block per group -----------------------------------------------------------------------


class SplitConv(nn.Module):
    """A grouped convolution written as one convolution per group, on the same weights (curvlinops' reference)."""

    def __init__(self, grouped: nn.Conv2d) -> None:
        super().__init__()
        g = grouped.groups
        self.parts = nn.ModuleList()
        for weight, bias in zip(grouped.weight.chunk(g), grouped.bias.chunk(g)):  # type: ignore[union-attr]
            part = nn.Conv2d(grouped.in_channels // g, grouped.out_channels // g, grouped.kernel_size,
                             stride=grouped.stride, padding=grouped.padding)  # fmt: skip
            part.weight.data.copy_(weight)
            part.bias.data.copy_(bias)  # type: ignore[union-attr]
            self.parts.append(part)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([part(xs) for part, xs in zip(self.parts, x.chunk(len(self.parts), dim=1))], dim=1)


def split(model: nn.Module) -> nn.Module:
    copy = cnn(groups=model[2].groups)
    copy.load_state_dict(model.state_dict())
    copy[2] = SplitConv(copy[2])
    return copy


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_grouped_kron_equals_curvlinops_on_the_split_groups(likelihood: str) -> None:
    """The posterior does not depend on the order of the parameters; with a per-parameter prior, each of the grouped
    weight's groups gets the weight's prior, as each split convolution gets it."""
    loader = data(likelihood)
    ours = fitted(cnn(groups=2), likelihood, "kron", TncGGN, loader)
    theirs = fitted(split(cnn(groups=2)), likelihood, "kron", CurvlinopsGGN, loader)
    assert isinstance(ours.H_facs, GroupedKron) and isinstance(ours.H, GroupedKronDecomposed)
    assert len(ours.H_facs.kfacs) == len(theirs.H_facs.kfacs) == 10
    prior = per_layer(cnn(groups=2))  # 8 parameters; the split model has 10: the grouped weight and bias twice
    their_prior = torch.cat([prior[:4], prior[2:4], prior[4:]])
    assert_same_posterior(ours, theirs, [torch.tensor(0.5), prior], [torch.tensor(0.5), their_prior])


def test_grouped_kron_fits_online_as_curvlinops_on_the_split_groups() -> None:
    """`fit(override=False)` rescales the old blocks and adds the new ones (GroupedKron + GroupedKron)."""
    first, second = data("classification"), data("classification", batch_size=EXAMPLES)
    ours, theirs = cnn(groups=2), split(cnn(groups=2))
    la_ours = fitted(ours, "classification", "kron", TncGGN, first)
    la_theirs = fitted(theirs, "classification", "kron", CurvlinopsGGN, first)
    la_ours.fit(second, override=False)
    la_theirs.fit(second, override=False)
    assert isinstance(la_ours.H_facs, GroupedKron)
    assert_same_posterior(la_ours, la_theirs, [torch.tensor(0.5)], [torch.tensor(0.5)])


def test_grouped_kron_refuses_a_non_zero_per_parameter_kron() -> None:
    la = fitted(cnn(groups=2), "classification", "kron", TncGGN, data("classification"))
    plain = Kron.init_from_model(la.params, torch.device("cpu"), torch.float64)
    assert isinstance(plain + la.H_facs, GroupedKron)  # laplace's zero blocks: the grouped blocks are kept
    plain.kfacs[0][0] += 1.0
    with pytest.raises(ValueError, match="non-zero per-parameter Kron"):
        plain + la.H_facs


# --- layers the references lack, and what kron refuses ---------------------------------------------------------------


def test_diag_of_layers_the_references_lack_equals_torch_func() -> None:
    """A grouped transpose convolution, a norm layer (in eval mode) and a frozen bias."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.ConvTranspose2d(4, 2, 3, stride=2, groups=2),
        nn.Flatten(), nn.Linear(2 * 7 * 7, OUTPUTS),
    ).eval()  # fmt: skip
    nn.init.normal_(model[1].weight)
    model[0].bias.requires_grad_(False)  # type: ignore[union-attr]
    x, y = next(iter(data("classification")))
    backend = TncGGN(model, "classification")
    loss, diagonal = backend.diag(x, y)
    expected_loss, expected = GGNInterface.diag(backend, x, y)  # laplace's own: Jacobians from torch.func
    assert error(loss, expected_loss) < TOLERANCE and error(diagonal, expected) < TOLERANCE


def refusal(model: nn.Module, **kwargs: Any) -> str:
    x, y = next(iter(data("classification")))
    with pytest.raises(ValueError) as raised:
        TncGGN(model, "classification", **kwargs).kron(x, y, EXAMPLES)
    return str(raised.value)


def test_kron_refuses_what_kron_has_no_block_for() -> None:
    torch.manual_seed(3)
    transpose = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ConvTranspose2d(2, 2, 3), nn.Flatten(), nn.Linear(128, OUTPUTS))
    assert "layer '1' is a transpose convolution" in refusal(transpose)
    norm = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(72, OUTPUTS)).eval()
    assert "trained parameter '1.weight'" in refusal(norm)
    shared = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.Linear(64, 64), nn.Linear(64, OUTPUTS))
    shared[2].weight = shared[1].weight
    assert "layers '1' and '2' share a parameter" in refusal(shared)
    with pytest.raises(ValueError, match="last_layer=True is not supported"):
        TncGGN(cnn(), "classification", last_layer=True)


def test_the_core_does_not_import_laplace() -> None:
    """laplace-torch and Opacus are optional extras: tncompiler, its models and the integrations package load without
    them."""
    code = (
        "import sys, tncompiler, tncompiler.model, tncompiler.integrations\n"
        "tncompiler.kfac_factors\n"
        "assert not {'laplace', 'opacus'} & set(sys.modules), 'an optional extra was imported'\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    result = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

"""`curvature`: every quantity against BackPACK 1.7 where BackPACK supports the model (same scaling, same MC draws
for the same seed), and against torch.func on the whole model (per-example `grad` of each example's share of the
loss; the GGN diagonal from the Jacobian of each example's output and the Hessian of the loss in it) for grouped,
transposed, 1-d, 3-d, residual, several-input, sequence and non-layer-parameter models. float64, 1e-10."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.autograd.graph import get_gradient_edge
from torch.func import functional_call, grad, hessian, jacrev, vmap

from tncompiler.model.curvature import QUANTITIES, _column_batches, curvature
from tncompiler.model.curvature_text import (
    curvature_functions,
    curvature_layout,
    curvature_source,
    norm_costs,
    norm_form,
)
from tncompiler.model.layers import spec_of

Tensor = torch.Tensor
TOLERANCE = 1e-10
EXACT = ("batch_grad", "batch_l2", "sum_grad_squared", "variance", "diag_ggn_exact")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True, scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A disk cache of this module's own (the curvature texts are compiled once per layer and position sizes)."""
    before = os.environ.get("TNC_CACHE_DIR")
    os.environ["TNC_CACHE_DIR"] = str(tmp_path_factory.mktemp("tnc-curvature-cache"))
    yield
    if before is None:
        del os.environ["TNC_CACHE_DIR"]
    else:
        os.environ["TNC_CACHE_DIR"] = before


def relative_error(actual: Tensor, expected: Tensor) -> float:
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item() or 1.0
    return float((actual - expected).abs().max().item() / scale)


def worst(actual: dict[str, dict[str, Tensor]], expected: dict[str, dict[str, Tensor]]) -> float:
    assert actual.keys() == expected.keys()
    errors = []
    for quantity in expected:
        assert list(actual[quantity]) == list(expected[quantity]), quantity
        errors += [relative_error(actual[quantity][n], expected[quantity][n]) for n in expected[quantity]]
    return max(errors)


# --- the torch.func reference -----------------------------------------------------------------------------------------


def _summed(loss_func: nn.Module, output: Tensor, target: Tensor) -> Tensor:
    if isinstance(loss_func, nn.CrossEntropyLoss):
        return nn.functional.cross_entropy(output, target, reduction="sum")
    if isinstance(loss_func, nn.BCEWithLogitsLoss):
        return nn.functional.binary_cross_entropy_with_logits(output, target, reduction="sum")
    return nn.functional.mse_loss(output, target, reduction="sum")


def reference(
    model: nn.Module, loss_func: nn.Module, inputs: tuple[Tensor, ...], target: Tensor
) -> dict[str, dict[str, Tensor]]:
    """The five deterministic quantities from torch.func on the whole model, example by example."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    output = model(*inputs).detach()
    n = output.shape[0]
    terms = output.numel() // output.shape[1] if isinstance(loss_func, nn.CrossEntropyLoss) else output.numel()
    scale = 1.0 / terms if loss_func.reduction == "mean" else 1.0

    def example_output(values: dict[str, Tensor], rows: tuple[Tensor, ...]) -> Tensor:
        return functional_call(model, values, tuple(r.unsqueeze(0) for r in rows))  # type: ignore[no-any-return]

    def example_loss(values: dict[str, Tensor], rows: tuple[Tensor, ...], label: Tensor) -> Tensor:
        return _summed(loss_func, example_output(values, rows), label.unsqueeze(0)) * scale

    per_example = vmap(grad(example_loss), in_dims=(None, 0, 0))(params, inputs, target)
    diagonal = {name: torch.zeros_like(p) for name, p in params.items()}
    for j in range(n):
        rows = tuple(x[j] for x in inputs)
        jacobians = jacrev(example_output)(params, rows)
        out = example_output(params, rows)
        label = target[j].unsqueeze(0)
        curvature_in_output = hessian(lambda o, label=label: _summed(loss_func, o, label) * scale)(out)
        h = curvature_in_output.reshape(out.numel(), out.numel())
        for name, jacobian in jacobians.items():
            flat = jacobian.reshape(out.numel(), -1)
            diagonal[name] += (flat * (h @ flat)).sum(0).reshape(params[name].shape)
    squares = {k: g.square().sum(0) for k, g in per_example.items()}
    means = {k: g.sum(0) / n for k, g in per_example.items()}
    return {
        "batch_grad": per_example,
        "batch_l2": {k: g.square().reshape(n, -1).sum(1) for k, g in per_example.items()},
        "sum_grad_squared": squares,
        "variance": {k: squares[k] / n - means[k].square() for k in per_example},
        "diag_ggn_exact": diagonal,
    }


# --- BackPACK --------------------------------------------------------------------------------------------------------

_BACKPACK = {
    "batch_grad": ("BatchGrad", "grad_batch"),
    "batch_l2": ("BatchL2Grad", "batch_l2"),
    "sum_grad_squared": ("SumGradSquared", "sum_grad_squared"),
    "variance": ("Variance", "variance"),
    "diag_ggn_exact": ("DiagGGNExact", "diag_ggn_exact"),
    "diag_ggn_mc": ("DiagGGNMC", "diag_ggn_mc"),
}


def backpack_quantities(
    model: nn.Module, loss_func: nn.Module, x: Tensor, target: Tensor, quantities: tuple[str, ...], mc_samples: int = 1
) -> dict[str, dict[str, Tensor]]:
    backpack = pytest.importorskip("backpack")
    extensions = pytest.importorskip("backpack.extensions")
    model, loss_func = backpack.extend(model), backpack.extend(loss_func)
    made = []
    for quantity in quantities:
        cls = getattr(extensions, _BACKPACK[quantity][0])
        made.append(cls(mc_samples=mc_samples) if quantity == "diag_ggn_mc" else cls())
    model.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BackPACK's full backward hooks warn where no input requires grad
        with backpack.backpack(*made):
            loss_func(model(x), target).backward()
    return {q: {n: getattr(p, _BACKPACK[q][1]).clone() for n, p in model.named_parameters()} for q in quantities}


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, dilation=1),
        nn.Sigmoid(),
        nn.Flatten(),
        nn.Linear(6 * 3 * 3, 5),
        nn.Tanh(),
        nn.Linear(5, 5),
    ).double()


def data(loss: str, x_shape: tuple[int, ...], out: int = 5, n: int = 6) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(n, *x_shape, generator=generator, dtype=torch.float64)
    if loss == "ce":
        return x, torch.randint(0, out, (n,), generator=generator)
    return x, torch.randn(n, out, generator=generator, dtype=torch.float64)


LOSSES: dict[str, Callable[[str], nn.Module]] = {
    "ce": lambda r: nn.CrossEntropyLoss(reduction=r),
    "mse": lambda r: nn.MSELoss(reduction=r),
}


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("loss", ["ce", "mse"])
def test_every_quantity_equals_backpack(loss: str, reduction: str) -> None:
    x, target = data(loss, (3, 8, 8))
    ours = curvature(small_cnn(), LOSSES[loss](reduction), (x, target), quantities=EXACT)
    theirs = backpack_quantities(small_cnn(), LOSSES[loss](reduction), x, target, EXACT)
    assert worst(ours, theirs) <= TOLERANCE


@pytest.mark.parametrize("loss", ["ce", "mse", "bce"])
def test_diag_ggn_mc_has_backpacks_draws_for_the_same_seed(loss: str) -> None:
    """With the global generator seeded alike, the labels drawn are BackPACK's own (as torch.distributions draws)."""
    x, target = data("ce" if loss == "ce" else "mse", (3, 8, 8), out=1 if loss == "bce" else 5)
    loss_func = nn.BCEWithLogitsLoss() if loss == "bce" else LOSSES[loss]("mean")
    if loss == "bce":
        target = (target > 0).double()
        model = nn.Sequential(*list(small_cnn())[:-1], nn.Linear(5, 1).double())
    else:
        model = small_cnn()
    torch.manual_seed(7)
    ours = curvature(model, loss_func, (x, target), quantities=["diag_ggn_mc"], mc_samples=3)
    torch.manual_seed(7)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # BackPACK makes MSE's √0.5 in the default dtype: float32 rounds it
    try:
        theirs = backpack_quantities(model, loss_func, x, target, ("diag_ggn_mc",), mc_samples=3)
    finally:
        torch.set_default_dtype(default)
    assert worst(ours, theirs) <= TOLERANCE


def test_diag_ggn_mc_estimates_the_exact_diagonal() -> None:
    """Many samples average to the exact diagonal; the same generator state gives the same draws. A small MLP: one
    backward pass per sample on the CPU; a LayerNorm, so that torch.func's rows are sampled too."""
    x, target = data("ce", (4,))
    torch.manual_seed(0)
    model, loss_func = _sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 5)), nn.CrossEntropyLoss()
    exact = curvature(model, loss_func, (x, target), quantities=["diag_ggn_exact"])["diag_ggn_exact"]
    first, second = (
        curvature(model, loss_func, (x, target), quantities=["diag_ggn_mc"], mc_samples=2000,
                  generator=torch.Generator().manual_seed(5))["diag_ggn_mc"]
        for _ in range(2)
    )  # fmt: skip
    for name in exact:
        assert torch.equal(first[name], second[name])
        assert relative_error(first[name], exact[name]) <= 0.15


def test_grad_is_left_as_an_ordinary_backward_leaves_it() -> None:
    x, target = data("ce", (3, 8, 8))
    model = small_cnn()
    expected = small_cnn()
    for p in [*model.parameters(), *expected.parameters()]:
        p.grad = torch.ones_like(p)  # accumulated onto, as loss.backward() does
    curvature(model, nn.CrossEntropyLoss(), (x, target), quantities=["batch_l2", "diag_ggn_exact"])
    nn.CrossEntropyLoss()(expected(x), target).backward()
    for ours, theirs in zip(model.parameters(), expected.parameters()):
        assert relative_error(ours.grad, theirs.grad) <= 1e-13  # type: ignore[arg-type]


def test_grouped_batch_l2_is_exact_where_backpacks_is_not() -> None:
    """BackPACK's BatchL2Grad of a grouped convolution contracts the groups' inputs with every group's gradients."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)).double()
    x, target = data("ce", (4, 6, 6))
    ours = curvature(model, nn.CrossEntropyLoss(), (x, target), quantities=EXACT)
    assert worst(ours, reference(model, nn.CrossEntropyLoss(), (x,), target)) <= TOLERANCE
    theirs = backpack_quantities(model, nn.CrossEntropyLoss(), x, target, ("batch_l2",))["batch_l2"]["0.weight"]
    assert relative_error(theirs, ours["batch_l2"]["0.weight"]) > 0.1


# --- models BackPACK does not cover: torch.func ----------------------------------------------------------------------


class Residual(nn.Module):
    """A residual block whose convolution is called twice, and a second input added after pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.shared = nn.Conv2d(4, 4, 3, padding="same", bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 + 2, 5)

    def forward(self, x: Tensor, extra: Tensor) -> Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.shared(torch.tanh(self.shared(h)))
        h = self.norm(h).mean((2, 3))
        return self.head(torch.cat([h, extra], dim=1))  # type: ignore[no-any-return]


class Tokens(nn.Module):
    """Tokens: an embedding, a layer norm, a linear layer over positions, a scalar parameter, and an output layer
    whose weight is the embedding's (torch.func covers the shared tensor; the output layer's bias is its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.norm = nn.LayerNorm(4)
        self.mix = nn.Linear(4, 4)
        self.out = nn.Linear(4, 7)
        self.out.weight = self.embed.weight
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.mix(self.norm(self.embed(tokens))) * self.scale  # [n, l, 4]
        return self.out(torch.tanh(h)).mean(1)  # type: ignore[no-any-return]


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attend = nn.MultiheadAttention(6, 2, batch_first=True)
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(6, 3, 2))
        self.head = nn.Linear(3 * 3, 3)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.attend(x, x, x, need_weights=False)
        return self.head(torch.tanh(self.conv(h.transpose(1, 2))).flatten(1))  # type: ignore[no-any-return]


Case = tuple[nn.Module, tuple[Tensor, ...], Tensor, nn.Module]
N = 5
_generator = torch.Generator()


def randn(*shape: int) -> Tensor:
    return torch.randn(*shape, generator=_generator, dtype=torch.float64)


def labels(*shape: int, classes: int = 3) -> Tensor:
    return torch.randint(0, classes, shape, generator=_generator)


def _sequential(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(*layers).double()


def grouped() -> Case:
    first = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2)
    model = _sequential(first, nn.ReLU(), nn.Conv2d(6, 6, 1, groups=3), nn.Flatten(), nn.Linear(6 * 4 * 3, 3))
    return model, (randn(N, 4, 7, 5),), labels(N), nn.CrossEntropyLoss()


def transposed() -> Case:
    first = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2)
    second = nn.ConvTranspose2d(6, 2, 2, stride=1, dilation=2, bias=False)
    model = _sequential(first, nn.Tanh(), second, nn.Flatten(), nn.Linear(2 * 10 * 10, 3))
    return model, (randn(N, 4, 4, 4),), randn(N, 3), nn.MSELoss(reduction="sum")


def one_d() -> Case:
    first, second = nn.Conv1d(3, 4, 3, stride=2, padding=2), nn.ConvTranspose1d(4, 2, 3, stride=2)
    model = _sequential(first, nn.ReLU(), second, nn.Flatten(), nn.Linear(2 * 13, 3))
    return model, (randn(N, 3, 9),), labels(N), nn.CrossEntropyLoss(reduction="sum")


def three_d() -> Case:
    first, second = nn.Conv3d(2, 3, 2, padding=1), nn.ConvTranspose3d(3, 2, 2, stride=2)
    model = _sequential(first, nn.Sigmoid(), second, nn.Flatten(), nn.Linear(2 * 8 * 8 * 8, 3))
    return model, (randn(N, 2, 3, 3, 3),), randn(N, 3), nn.MSELoss()


def residual() -> Case:
    model = Residual().double().eval()
    model.norm.running_mean.uniform_(-0.5, 0.5)  # type: ignore[operator]
    model.norm.running_var.uniform_(0.5, 1.5)  # type: ignore[operator]
    return model, (randn(N, 3, 5, 5), randn(N, 2)), labels(N), nn.CrossEntropyLoss()


def tokens() -> Case:
    return Tokens().double(), (labels(N, 6, classes=7),), labels(N, classes=7), nn.CrossEntropyLoss()


def segmentation() -> Case:
    """Cross-entropy over positions: one Hessian column per class and position."""
    model = _sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Conv2d(3, 3, 1))
    return model, (randn(N, 2, 3, 3),), labels(N, 3, 3), nn.CrossEntropyLoss()


def tied() -> Case:
    """One weight in two linear layers (their calls' per-example gradients are summed before squaring)."""
    first, second = nn.Linear(4, 4), nn.Linear(4, 4)
    second.weight = first.weight
    model = _sequential(first, nn.Tanh(), second, nn.Tanh(), nn.Linear(4, 3))
    return model, (randn(N, 4),), labels(N), nn.CrossEntropyLoss()


def attention() -> Case:
    """nn.MultiheadAttention reads its out_proj's weight without calling out_proj: torch.func covers it; a
    weight-normed convolution's originals too."""
    return Attention().double(), (randn(N, 4, 6),), randn(N, 3), nn.MSELoss()


CASES: dict[str, Callable[[], Case]] = {
    f.__name__: f for f in (grouped, transposed, one_d, three_d, residual, tokens, segmentation, tied, attention)
}


def model_case(name: str) -> Case:
    torch.manual_seed(0)
    _generator.manual_seed(2)
    return CASES[name]()


@pytest.mark.parametrize("name", CASES)
def test_every_quantity_equals_torch_func(name: str) -> None:
    model, inputs, target, loss_func = model_case(name)
    ours = curvature(model, loss_func, (inputs if len(inputs) > 1 else inputs[0], target), quantities=EXACT)
    assert worst(ours, reference(model, loss_func, inputs, target)) <= TOLERANCE


def test_a_call_with_output_size_gets_the_patterns_of_that_size() -> None:
    """A transpose convolution called with output_size= has other output padding than its module's."""

    class Sized(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
            self.head = nn.Linear(3 * 8 * 7, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.up(x, output_size=[8, 7]).flatten(1))  # type: ignore[no-any-return]

    torch.manual_seed(0)
    model = Sized().double()
    x = torch.randn(4, 2, 4, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 0])
    ours = curvature(model, nn.CrossEntropyLoss(), (x, target), quantities=EXACT)
    assert worst(ours, reference(model, nn.CrossEntropyLoss(), (x,), target)) <= TOLERANCE


# --- the norm's form -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layer", "shape", "form"),
    [
        (nn.Conv2d(3, 8, 3, padding=1), (2, 3, 16, 16), "per-example"),  # many positions, few channels
        (nn.Conv2d(16, 16, 3, padding=1), (2, 16, 4, 4), "gram"),  # few positions, many channels
        (nn.Conv2d(32, 32, 3, padding=1, groups=2), (2, 32, 4, 4), "gram"),  # Gram per group
        (nn.ConvTranspose2d(32, 16, 3, padding=1), (2, 32, 4, 4), "per-example"),  # the compiler pairs the copies
        (nn.Linear(8, 8), (2, 40, 8), "per-example"),
        (nn.Linear(8, 8), (2, 8), "outer"),
    ],
)
def test_the_norms_form_is_chosen_from_the_compilers_counts(
    layer: nn.Module, shape: tuple[int, ...], form: str
) -> None:
    """The text writes the squared norm both ways (the per-example gradients squared; Gram matrices of windows and
    output gradients), its last line names the form with fewer multiply-adds as the compiler counts them, `curvature`
    calls that one, and both equal torch.func's."""
    layer = layer.double()
    x = torch.randn(*shape, dtype=torch.float64)
    layout = curvature_layout(spec_of(layer), x.shape, layer(x).shape)
    assert norm_form(layout) == form
    source = curvature_source(layout)
    assert "batch_l2_w_per_example[n] = batch_grad_w[n, " in source
    chosen = "window_gram, grad_gram, batch_l2_w_gram" if form == "gram" else "batch_l2_w_per_example"
    assert source.splitlines()[-1].startswith(f"# batch_l2_w: {chosen}")
    costs = norm_costs(layout)
    assert form == "outer" or (costs["gram"] < costs["per-example"]) == (form == "gram")
    model = nn.Sequential(layer, nn.Flatten(), nn.LazyLinear(3)).double()
    model(x)  # materialise the lazy layer
    target = torch.tensor([0, 2])
    ours = curvature(model, nn.CrossEntropyLoss(), (x, target), quantities=["batch_l2"])
    expected = reference(model, nn.CrossEntropyLoss(), (x,), target)["batch_l2"]
    assert worst(ours, {"batch_l2": expected}) <= TOLERANCE
    if form != "outer":  # the form not chosen gives the same norms
        functions, output = curvature_functions(layout), layer(x)
        grad = torch.randn_like(output)
        laid = (x.flatten(1, -2), grad.flatten(1, -2)) if isinstance(layer, nn.Linear) else (x, grad)
        direct = functions.batch_l2_w_per_example(*laid)
        gram = functions.batch_l2_w_gram(functions.window_gram(laid[0]), functions.grad_gram(laid[1]))
        assert relative_error(gram, direct) <= TOLERANCE


# --- errors ----------------------------------------------------------------------------------------------------------


def test_a_batchnorm_in_training_mode_is_refused_by_name() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 5)).double()
    x, target = data("ce", (3, 8, 8))
    with pytest.raises(ValueError, match=r"module '1' \(BatchNorm2d.*training mode"):
        curvature(model, nn.CrossEntropyLoss(), (x, target), quantities=["batch_grad"])


def test_an_unknown_quantity_names_the_known_ones() -> None:
    x, target = data("ce", (3, 8, 8))
    with pytest.raises(ValueError, match="unknown quantity 'diag_h'; known: 'batch_grad', .*'diag_ggn_mc'"):
        curvature(small_cnn(), nn.CrossEntropyLoss(), (x, target), quantities=["batch_grad", "diag_h"])
    assert tuple(_BACKPACK) == QUANTITIES


def test_a_layer_that_sees_no_batch_axis_is_refused_by_name() -> None:
    class Folded(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Conv1d(2, 3, 1)

        def forward(self, x: Tensor) -> Tensor:
            return self.layer(x.reshape(1, 2, -1)).reshape(x.shape[0], -1)  # type: ignore[no-any-return]

    x, target = torch.randn(4, 2, 3, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer 'layer' was called on an input of shape \(1, 2, 12\)"):
        curvature(Folded().double(), nn.MSELoss(), (x, target), quantities=["batch_l2"])


def test_random_draws_in_a_torch_func_model_are_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4), nn.Dropout(0.5), nn.Linear(4, 3)).double()
    x, target = data("ce", (4,), out=3)
    with pytest.raises(ValueError, match=r"draws random numbers .* '1.weight', '1.bias'"):
        curvature(model, nn.CrossEntropyLoss(), (x, target), quantities=["batch_grad"])


@pytest.mark.parametrize("samples", [0, -1, 1.5, True])
def test_mc_samples_must_be_a_positive_integer(samples: Any) -> None:
    x, target = data("ce", (3, 8, 8))
    with pytest.raises(ValueError, match="mc_samples must be a positive integer"):
        curvature(small_cnn(), nn.CrossEntropyLoss(), (x, target), quantities=["diag_ggn_mc"], mc_samples=samples)


# --- several processes -----------------------------------------------------------------------------------------------

WORLD = 2
SHARES = (slice(0, 5), slice(5, 8))  # uneven: 5 examples on rank 0, 3 on rank 1


def _distributed_data(loss: str) -> tuple[Tensor, Tensor]:
    return data(loss, (3, 8, 8), n=8)


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        results = {}
        for loss, reduction in (("ce", "mean"), ("mse", "sum")):
            x, target = _distributed_data(loss)
            part = SHARES[rank]
            results[f"{loss}-{reduction}"] = curvature(
                small_cnn(), LOSSES[loss](reduction), (x[part], target[part]), quantities=EXACT,
                process_group=dist.group.WORLD,
            )  # fmt: skip
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    folder = tmp_path_factory.mktemp("curvature-ddp")
    mp.spawn(_worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


@pytest.mark.parametrize(("loss", "reduction"), [("ce", "mean"), ("mse", "sum")])
def test_ranks_get_the_sums_of_all_the_data_and_their_own_examples(
    ranks: list[dict[str, Any]], loss: str, reduction: str
) -> None:
    """sum_grad_squared, variance and the GGN diagonal are the whole batch's on every rank (a "mean" scaled over
    all examples); batch_grad and batch_l2 are each rank's own, as a process with its share alone has them."""
    x, target = _distributed_data(loss)
    whole = curvature(small_cnn(), LOSSES[loss](reduction), (x, target), quantities=EXACT)
    for rank, result in enumerate(ranks):
        ours = result[f"{loss}-{reduction}"]
        part = SHARES[rank]
        alone = curvature(small_cnn(), LOSSES[loss](reduction), (x[part], target[part]), quantities=EXACT)
        summed = ("sum_grad_squared", "variance", "diag_ggn_exact")
        assert worst({q: ours[q] for q in summed}, {q: whole[q] for q in summed}) <= TOLERANCE
        per_example = ("batch_grad", "batch_l2")
        assert worst({q: ours[q] for q in per_example}, {q: alone[q] for q in per_example}) <= TOLERANCE


@pytest.mark.parametrize("batched", [True, False])
def test_columns_reach_the_layers_alike_batched_or_one_by_one(batched: bool) -> None:
    """The GPU path (vectorised backward passes of 32 columns) and the CPU path (one per column) give the same
    columns at every layer output; the CPU test suite runs the GPU path here."""
    model = small_cnn()
    x, _ = data("ce", (3, 8, 8))
    outputs: list[Tensor] = []
    hooks = [m.register_forward_hook(lambda m, a, o: outputs.append(o)) for m in model if isinstance(m, nn.Linear)]
    output = model(x)
    for hook in hooks:
        hook.remove()
    edges = [get_gradient_edge(o) for o in outputs]
    columns = torch.randn(40, *output.shape, dtype=torch.float64)  # more than one batch of 32
    found = [torch.cat(parts) for parts in zip(*_column_batches(output, edges, columns, batched=batched))]  # type: ignore[arg-type]
    expected = [
        torch.stack(p) for p in zip(*(torch.autograd.grad(output, outputs, c, retain_graph=True) for c in columns))
    ]
    for actual, wanted in zip(found, expected):
        assert relative_error(actual, wanted) <= 1e-13

"""`tncompiler.KFAC` never stops a run on its inverses: rank-deficient float32 factors (constant input channels, a
batch smaller than the factor, grouped convolutions) train under every update/inversion schedule with finite
parameters and one warning at most; a float32 decomposition that fails (forced here by a patched torch.linalg) falls
back to float64, a jitter, then the identity times trace/size, and the first two still give the damped inverse of
the float64 reference (dense torch.kron solves). Adaptive damping is π-damping between the factors."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn

import tncompiler
from tncompiler.model import cache

Tensor = torch.Tensor
Case = Callable[[torch.Generator], tuple[nn.Module, Tensor]]
SCHEDULES = [(1, 1), (5, 5), (1, 20), (5, 1)]  # (update_every, invert_every)
SEEDS = range(20)
STEPS = 6
CLASSES = 4

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True, scope="module")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The layers compile into a cache of this module's own, not the user's."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TNC_CACHE_DIR", str(tmp_path_factory.mktemp("tnc-cache")))
        yield
    cache.clear_memory()


# --- models whose factors are rank-deficient ----------------------------------------------------------------------


def _constant_features(generator: torch.Generator) -> tuple[nn.Module, Tensor]:
    """100 of 128 input features constantly 0, scattered (MKL's float32 eigh fails on most such factors)."""
    x = torch.relu(torch.randn(4, 128, generator=generator))
    x[:, torch.randperm(128, generator=generator)[:100]] = 0.0
    return nn.Sequential(nn.Linear(128, CLASSES)), x


def _constant_channels(generator: torch.Generator) -> tuple[nn.Module, Tensor]:
    """A convolution whose input has 12 of 16 channels constant: A is 145 × 145, of rank ≤ 2 examples · 9 positions."""
    x = torch.randn(2, 16, 5, 5, generator=generator)
    x[:, torch.randperm(16, generator=generator)[:12]] = 1.0
    return nn.Sequential(nn.Conv2d(16, 4, 3), nn.Flatten(), nn.Linear(36, CLASSES)), x


def _small_batch(generator: torch.Generator) -> tuple[nn.Module, Tensor]:
    """Two examples for a 129 × 129 input factor."""
    return nn.Sequential(nn.ReLU(), nn.Linear(128, CLASSES)), torch.randn(2, 128, generator=generator)


def _grouped(generator: torch.Generator) -> tuple[nn.Module, Tensor]:
    """A grouped convolution (two 145 × 145 input factors) with zero channels in both groups."""
    x = torch.randn(2, 32, 5, 5, generator=generator)
    x[:, torch.randperm(32, generator=generator)[:24]] = 0.0
    return nn.Sequential(nn.Conv2d(32, 8, 3, groups=2), nn.Flatten(), nn.Linear(72, CLASSES)), x


CASES: dict[str, Case] = {
    "constant features": _constant_features,
    "constant channels": _constant_channels,
    "batch smaller than the factor": _small_batch,
    "grouped conv": _grouped,
}


def _train(
    model: nn.Module, x: Tensor, steps: int = STEPS, **options: object
) -> tuple[tncompiler.KFAC, list[warnings.WarningMessage], bool]:
    """SGD with KFAC on one batch, fresh labels each step: the KFAC, its warnings, and whether any inversion fell
    back. KL clipping as in the README: without it, an inverse kept for 20 steps while the labels change can
    diverge (a step of G/λ along the directions its B lacked), which is KFAC's dynamics, not its inverses."""
    kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), kl_clip=1e-2, lr=0.1, **options)  # type: ignore[arg-type]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    labels = torch.Generator().manual_seed(1)
    fell_back = False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(steps):
            optimizer.zero_grad()
            target = torch.randint(0, CLASSES, (x.shape[0],), generator=labels)
            nn.CrossEntropyLoss()(model(x), target).backward()
            kfac.step()
            fell_back = fell_back or bool(kfac.fallbacks)
            optimizer.step()
    return kfac, [w for w in caught if "tncompiler.KFAC" in str(w.message)], fell_back


def _check_run(model: nn.Module, caught: list[warnings.WarningMessage], fell_back: bool, where: str) -> None:
    assert all(bool(p.isfinite().all()) for p in model.parameters()), where
    assert len(caught) == (1 if fell_back else 0), (where, [str(w.message) for w in caught])
    assert all(issubclass(w.category, RuntimeWarning) for w in caught), where


@pytest.mark.parametrize("inverse", ["eigh", "cholesky"])
@pytest.mark.parametrize("case", CASES)
def test_rank_deficient_float32_factors_never_stop_training(case: str, inverse: str) -> None:
    """20 seeds, each under one of the schedules in turn; a float32 eigh that fails (most seeds of the constant
    features, some of the channels and groups, with MKL's LAPACK) used to raise torch.linalg.LinAlgError."""
    for seed in SEEDS:
        update_every, invert_every = SCHEDULES[seed % len(SCHEDULES)]
        torch.manual_seed(seed)
        model, x = CASES[case](torch.Generator().manual_seed(seed))
        _, caught, fell_back = _train(
            model, x, inverse=inverse, update_every=update_every, invert_every=invert_every, damping=1e-3
        )
        _check_run(model, caught, fell_back, f"seed {seed}")


@pytest.mark.slow
@pytest.mark.parametrize("inverse", ["eigh", "cholesky"])
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("case", CASES)
def test_rank_deficient_factors_every_seed_under_every_schedule(
    case: str, schedule: tuple[int, int], inverse: str
) -> None:
    for seed in SEEDS:
        torch.manual_seed(seed)
        model, x = CASES[case](torch.Generator().manual_seed(seed))
        _, caught, fell_back = _train(model, x, 12, inverse=inverse, update_every=schedule[0], invert_every=schedule[1])
        _check_run(model, caught, fell_back, f"seed {seed}")


# --- forced failures ----------------------------------------------------------------------------------------------

_EIGH = torch.linalg.eigh
_CHOLESKY_EX = torch.linalg.cholesky_ex


def _failing_eigh(fails: Callable[[Tensor], bool], nan: bool = False) -> Callable[..., tuple[Tensor, Tensor]]:
    """torch.linalg.eigh that raises LinAlgError (or, with `nan`, returns NaN eigenvalues) where `fails`."""

    def eigh(matrix: Tensor, *args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        values, vectors = _EIGH(matrix, *args, **kwargs)  # type: ignore[arg-type]
        if not fails(matrix):
            return values, vectors
        if nan:
            return torch.full_like(values, math.nan), vectors
        raise torch.linalg.LinAlgError("linalg.eigh: The algorithm failed to converge (forced by the test)")  # type: ignore[attr-defined]

    return eigh


def _failing_cholesky(fails: Callable[[Tensor], bool]) -> Callable[..., tuple[Tensor, Tensor]]:
    """torch.linalg.cholesky_ex that reports a failed factorisation (info 1) where `fails`."""

    def cholesky_ex(matrix: Tensor, *args: object, **kwargs: object) -> tuple[Tensor, Tensor]:
        factor, info = _CHOLESKY_EX(matrix, *args, **kwargs)  # type: ignore[arg-type]
        return (factor, torch.ones_like(info)) if fails(matrix) else (factor, info)

    return cholesky_ex


def _float32(matrix: Tensor) -> bool:
    return matrix.dtype == torch.float32


def _first_calls(count: int) -> Callable[[Tensor], bool]:
    """Fails the first `count` calls (of the first factor: A of the only layer, then its fallbacks)."""
    calls = [0]

    def fails(matrix: Tensor) -> bool:
        calls[0] += 1
        return calls[0] <= count

    return fails


def _always(matrix: Tensor) -> bool:
    return True


def _patch(monkeypatch: pytest.MonkeyPatch, inverse: str, fails: Callable[[Tensor], bool], nan: bool = False) -> None:
    if inverse == "eigh":
        monkeypatch.setattr(torch.linalg, "eigh", _failing_eigh(fails, nan))
    else:
        monkeypatch.setattr(torch.linalg, "cholesky_ex", _failing_cholesky(fails))


@pytest.mark.parametrize("inverse", ["eigh", "cholesky"])
@pytest.mark.parametrize("schedule", SCHEDULES)
def test_failing_float32_decompositions_warn_once_under_every_schedule(
    schedule: tuple[int, int], inverse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every inversion of every layer falls back; the first warns, naming the layers and the fallback."""
    _patch(monkeypatch, inverse, _float32)
    torch.manual_seed(0)
    model, x = _grouped(torch.Generator().manual_seed(0))
    kfac, caught, fell_back = _train(model, x, 12, inverse=inverse, update_every=schedule[0], invert_every=schedule[1])
    _check_run(model, caught, fell_back, f"schedule {schedule}")
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "layer '0' (A: float64; B: float64)" in message and "layer '2'" in message, message
    assert kfac.fallbacks == {"0": "A: float64; B: float64", "2": "A: float64; B: float64"}


# --- the fallbacks' inverses against float64 references -----------------------------------------------------------


def _layers() -> tuple[nn.Module, Tensor, Tensor]:
    """A grouped convolution and a linear layer, with labels; 8 examples, so the factors are well conditioned."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(4, 6, 3, groups=2), nn.Tanh(), nn.Flatten(), nn.Linear(6 * 16, 5))
    return model, torch.randn(8, 4, 6, 6), torch.randint(0, 5, (8,))


def _matrices(model: nn.Module) -> dict[str, Tensor]:
    """Each layer's gradient as [groups, out, in + 1], the bias last, in float64."""
    matrices = {}
    for name, module in model.named_children():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            groups = getattr(module, "groups", 1)
            assert module.weight.grad is not None and module.bias is not None and module.bias.grad is not None
            weight = module.weight.grad.reshape(groups, module.weight.shape[0] // groups, -1)
            matrices[name] = torch.cat([weight, module.bias.grad.reshape(groups, -1, 1)], 2).double()
    return matrices


def _pi(a: Tensor, b: Tensor) -> float:
    return math.sqrt((float(a.trace()) / a.shape[0]) / (float(b.trace()) / b.shape[0]))


def _kron_solve(a: Tensor, b: Tensor, gradient: Tensor, damping: float, factored: bool) -> Tensor:
    """vec(Δ) = K⁻¹ vec(G) per group, row-major vec of G [out, in]: K = B ⊗ A + λ I, or with `factored`
    (B + √λ/π I) ⊗ (A + π√λ I)."""
    results = []
    for a_g, b_g, g_g in zip(a.double(), b.double(), gradient):
        eye_a, eye_b = torch.eye(a_g.shape[0], dtype=a_g.dtype), torch.eye(b_g.shape[0], dtype=a_g.dtype)
        if factored:
            pi, root = _pi(a_g, b_g), math.sqrt(damping)
            kron = torch.kron(b_g + root / pi * eye_b, a_g + pi * root * eye_a)
        else:
            kron = torch.kron(b_g, a_g) + damping * torch.eye(a_g.shape[0] * b_g.shape[0], dtype=a_g.dtype)
        results.append(torch.linalg.solve(kron, g_g.reshape(-1)).reshape(g_g.shape))
    return torch.stack(results)


def _step(inverse: str, damping: object) -> tuple[tncompiler.KFAC, dict[str, Tensor], dict[str, Tensor], int]:
    """One KFAC step on `_layers`: the KFAC, the gradients before and after, and how many warnings it gave."""
    model, x, target = _layers()
    kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), damping=damping, update_every=1, inverse=inverse)  # type: ignore[arg-type]
    nn.CrossEntropyLoss()(model(x), target).backward()
    before = _matrices(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kfac.step()
    return kfac, before, _matrices(model), len(caught)


def _error(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def _check_damped_inverse(inverse: str, damping: float, factored: bool, tolerance: float = 1e-4) -> tncompiler.KFAC:
    kfac, before, after, _ = _step(inverse, damping)
    for name, (a, b) in kfac.running.items():
        expected = _kron_solve(a, b, before[name], damping, factored)
        assert _error(after[name], expected) <= tolerance, (name, _error(after[name], expected))
    return kfac


@pytest.mark.parametrize("nan", [False, True], ids=["raises", "returns NaN"])
def test_failed_float32_eigh_falls_back_to_float64_and_is_the_damped_inverse(
    nan: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    _patch(monkeypatch, "eigh", _float32, nan)
    kfac = _check_damped_inverse("eigh", 1e-2, factored=False)
    assert kfac.fallbacks == {"0": "A: float64; B: float64", "3": "A: float64; B: float64"}


def test_eigh_jitter_is_taken_off_the_eigenvalues(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first factor fails in float32, in float64 and with the jitters 1e-6 to 1e-4 · trace/size: the one of
    1e-3 works, and the eigenvalues it shifted are shifted back (a jitter left in would be off by about 1e-3)."""
    _patch(monkeypatch, "eigh", _first_calls(5))
    kfac = _check_damped_inverse("eigh", 1e-2, factored=False)
    assert kfac.fallbacks == {"0": "A: float64 with a jitter of 0.001·trace/size"}


def test_cholesky_falls_back_to_float64_then_a_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    _patch(monkeypatch, "cholesky", _float32)
    kfac = _check_damped_inverse("cholesky", 1e-2, factored=True)
    assert kfac.fallbacks == {"0": "A: float64; B: float64", "3": "A: float64; B: float64"}
    monkeypatch.undo()
    _patch(monkeypatch, "cholesky", _first_calls(2))  # float32 and float64 fail; a jitter of 1e-6 · trace/size works
    kfac = _check_damped_inverse("cholesky", 1e-2, factored=True)
    assert kfac.fallbacks == {"0": "A: float64 with a jitter of 1e-06·trace/size"}


@pytest.mark.parametrize("inverse", ["eigh", "cholesky"])
def test_the_last_resort_is_the_damped_identity_times_trace_over_size(
    inverse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every decomposition fails: A and B are taken as (tr A / dim A) I and (tr B / dim B) I, damped as usual."""
    _patch(monkeypatch, inverse, _always)
    damping = 1e-2
    kfac, before, after, warned = _step(inverse, damping)
    assert warned == 1
    assert set(kfac.fallbacks.values()) == {"A: the identity times trace/size; B: the identity times trace/size"}
    for name, (a, b) in kfac.running.items():
        mean_a = a.double().diagonal(dim1=1, dim2=2).mean(1)
        mean_b = b.double().diagonal(dim1=1, dim2=2).mean(1)
        scaled_a = mean_a.view(-1, 1, 1) * torch.eye(a.shape[1], dtype=torch.float64)
        scaled_b = mean_b.view(-1, 1, 1) * torch.eye(b.shape[1], dtype=torch.float64)
        expected = _kron_solve(scaled_a, scaled_b, before[name], damping, factored=inverse == "cholesky")
        assert _error(after[name], expected) <= 1e-5, name


def test_a_float32_eigh_that_works_is_not_a_fallback() -> None:
    kfac, _, _, warned = _step("eigh", 1e-2)
    assert warned == 0 and kfac.fallbacks == {}


# --- adaptive damping -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inverse", ["eigh", "cholesky"])
@pytest.mark.parametrize("damping", ["adaptive", ("adaptive", 1e-2)], ids=["default", "given"])
def test_adaptive_damping_is_pi_damping_between_the_factors(inverse: str, damping: object) -> None:
    """(A + π√λ I)⁻¹ ⊗ (B + √λ/π I)⁻¹ with π² = (tr A / dim A) / (tr B / dim B), λ = 1e-3 unless given."""
    value = 1e-3 if damping == "adaptive" else 1e-2
    kfac, before, after, warned = _step(inverse, damping)
    assert warned == 0 and kfac.damping == value and kfac.adaptive
    for name, (a, b) in kfac.running.items():
        for a_g, b_g, g_g, actual in zip(a.double(), b.double(), before[name], after[name]):
            pi, root = _pi(a_g, b_g), math.sqrt(value)
            damped_a = a_g + pi * root * torch.eye(a_g.shape[0], dtype=torch.float64)
            damped_b = b_g + root / pi * torch.eye(b_g.shape[0], dtype=torch.float64)
            expected = torch.linalg.inv(damped_b) @ g_g @ torch.linalg.inv(damped_a)
            assert _error(actual, expected) <= 1e-4, name


def test_training_with_adaptive_damping_lowers_the_loss() -> None:
    model, x, target = _layers()
    kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), damping="adaptive", update_every=1, invert_every=2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(10):
        optimizer.zero_grad()
        loss = nn.CrossEntropyLoss()(model(x), target)
        loss.backward()
        kfac.step()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < 0.5 * losses[0], losses


@pytest.mark.parametrize("damping", [-1.0, math.nan, "pi", ("adaptive", -1.0), ("adaptive",), ("eigh", 1e-3), True])
def test_damping_is_checked(damping: object) -> None:
    model, _, _ = _layers()
    with pytest.raises(ValueError, match=r"damping must be a number ≥ 0, 'adaptive' or \('adaptive', λ ≥ 0\)"):
        tncompiler.KFAC(model, nn.CrossEntropyLoss(), damping=damping)  # type: ignore[arg-type]

"""`KFACOperator`'s damped inverse against curvlinops' on a digits-sized CNN: `python -m bench.operators [--repeat R]`.

The model classifies sklearn's digits (1797 grey 8x8 images, 10 classes): Conv2d(1, 16, 3, padding 1), ReLU,
Conv2d(16, 32, 3, stride 2, padding 1), ReLU, Flatten, Linear(512, 10); its KFAC (type-2 Fisher, KFAC-expand, bias
kept apart: curvlinops' default) over all the images, in float32, on one thread. Both operators' factors are computed
once, before any timing, and their results are first checked equal (1e-4 relative, float32). Timed, in interleaved
rounds (medians; `bench.measure`), for one vector v [D] and a matrix V [D, 16]:

- `inverse @ v`: a fresh damped inverse (damping 1e-3: a Cholesky factorisation of every factor) applied once, as
  `K.inverse(damping=1e-3) @ v` and `KFACInverseLinearOperator(K, damping=1e-3) @ v`;
- `cached inverse @ v`: the same inverse applied again (curvlinops caches the inverted factors after the first call);
- `K @ v`.

Reported: the times and the ratio tnc / curvlinops (median of the per-round ratios; below 1: tnc is faster).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from bench.measure import summarize, time_interleaved
from tncompiler.model.operator import KFACOperator

DAMPING = 1e-3
TOLERANCE = 1e-4
BATCH = 256


def digits() -> list[tuple[Tensor, Tensor]]:
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    x = torch.tensor(images, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(labels, dtype=torch.int64)
    return list(zip(x.split(BATCH), y.split(BATCH)))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def operators(model: nn.Module, data: list[tuple[Tensor, Tensor]]) -> tuple[KFACOperator, object]:
    import curvlinops

    ours = KFACOperator(model, nn.CrossEntropyLoss(), data, approx="expand", fisher="type-2")
    theirs = curvlinops.KFACLinearOperator(
        model, nn.CrossEntropyLoss(), [p for p in model.parameters() if p.requires_grad], data,
        fisher_type="type-2", kfac_approx="expand", check_deterministic=False,
    )  # fmt: skip
    theirs.compute_kronecker_factors()
    return ours, theirs


def relative(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


def cases(
    ours: KFACOperator, theirs: object, v: Tensor
) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """(tnc, curvlinops) thunks per timed case."""
    from curvlinops import KFACInverseLinearOperator

    inverse, their_inverse = ours.inverse(damping=DAMPING), KFACInverseLinearOperator(theirs, damping=DAMPING)
    their_inverse @ v  # fills curvlinops' cache of inverted factors
    return {
        "inverse @ v": (
            lambda: ours.inverse(damping=DAMPING) @ v,
            lambda: KFACInverseLinearOperator(theirs, damping=DAMPING) @ v,
        ),
        "cached inverse @ v": (lambda: inverse @ v, lambda: their_inverse @ v),
        "K @ v": (lambda: ours @ v, lambda: theirs @ v),  # type: ignore[operator]
    }


def check(pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]]) -> bool:
    good = True
    for name, (mine, reference) in pairs.items():
        result, expected = mine(), reference()
        assert isinstance(result, Tensor) and isinstance(expected, Tensor)
        error = relative(result, expected)
        if error > TOLERANCE:
            print(f"!!! MISMATCH {name}: {error:.1e}", file=sys.stderr)
            good = False
    return good


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.operators", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15, help="timed rounds")
    parser.add_argument("--columns", type=int, default=16, help="K of the matrix case")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: for a machine others keep busy")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, data = cnn(), digits()
    ours, theirs = operators(model, data)
    dimension = ours.shape[1]
    print(f"digits CNN: {sum(len(x) for x, _ in data)} images, {dimension} parameters, float32, 1 thread")
    print(f"{'case':<28}{'tnc':>12}{'curvlinops':>14}{'tnc / curvlinops':>20}")
    good = True
    generator = torch.Generator().manual_seed(0)
    for label, shape in (("v [D]", (dimension,)), (f"V [D, {args.columns}]", (dimension, args.columns))):
        v = torch.randn(*shape, generator=generator)
        pairs = cases(ours, theirs, v)
        good &= check(pairs)
        for name, (mine, reference) in pairs.items():
            samples = time_interleaved({"tnc": mine, "curvlinops": reference}, "cpu", args.repeat, clock=args.clock)
            times, ratios = summarize(samples)
            case = f"{name} ({label})"
            print(f"{case:<28}{times['tnc'] * 1e3:>10.3f}ms{times['curvlinops'] * 1e3:>12.3f}ms"
                  f"{ratios['curvlinops']:>20.2f}")  # fmt: skip
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())

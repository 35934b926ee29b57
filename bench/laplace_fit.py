"""laplace-torch's `fit` with tnc's back end against its own: `python -m bench.laplace_fit [--repeat R] [--clock cpu]`.

The model is `bench.operators`' CNN for sklearn's digits (Conv2d(1, 16, 3, padding 1), ReLU, Conv2d(16, 32, 3,
stride 2, padding 1), ReLU, Flatten, Linear(512, 10): 9930 parameters), classifying all 1797 images in batches of 256,
in float32 on one thread. Timed: `la.fit(loader)` of `laplace.Laplace(model, "classification",
subset_of_weights="all", hessian_structure=...)` with

- kron: `TncGGN` against `CurvlinopsGGN` (laplace's default back end), both the type-2 KFAC (GGN);
- diag: `TncGGN` against `BackPackGGN`, both the exact GGN diagonal.

Each back end has its own copy of the model (BackPACK's `extend` leaves hooks on the one it is given). Before any
timing, each pair's marginal likelihoods and curvatures are checked equal (1e-4 relative, float32). Interleaved
rounds (`bench.measure`); reported: the median times and the median of the per-round ratios tnc / reference (below
1: tnc is faster). One fit computes each batch's curvature and loss; laplace's own work (the decomposition of the
Kronecker factors, moving tensors) is the same for both back ends and included.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bench.measure import summarize, time_interleaved
from bench.operators import BATCH, cnn, digits

TOLERANCE = 1e-4


def loader() -> DataLoader[tuple[Tensor, ...]]:
    batches = digits()
    x, y = torch.cat([x for x, _ in batches]), torch.cat([y for _, y in batches])
    return DataLoader(TensorDataset(x, y), batch_size=BATCH)


def fitter(
    model: nn.Module, structure: str, backend: type, data: DataLoader[tuple[Tensor, ...]]
) -> Callable[[], object]:
    """A thunk that fits a Laplace approximation on its own copy of the model, and returns it."""
    from laplace import Laplace

    la = Laplace(copy.deepcopy(model), "classification", subset_of_weights="all", hessian_structure=structure,
                 backend=backend)  # fmt: skip

    def fit() -> object:
        la.fit(data)
        return la

    return fit


def curvature_of(la: object) -> Tensor:
    """The fitted curvature as one flat tensor (the Kronecker factors' entries, or the diagonal)."""
    facs = getattr(la, "H_facs", None)
    if facs is not None:
        return torch.cat([f.flatten() for block in facs.kfacs for f in block])
    h = la.H  # type: ignore[attr-defined]
    assert isinstance(h, Tensor)
    return h


def check(name: str, mine: Callable[[], object], reference: Callable[[], object]) -> bool:
    ours, theirs = mine(), reference()
    ml, expected_ml = ours.log_marginal_likelihood(), theirs.log_marginal_likelihood()  # type: ignore[attr-defined]
    errors = {
        "marginal likelihood": float(((ml - expected_ml) / expected_ml).abs()),
        "curvature": float((curvature_of(ours) - curvature_of(theirs)).abs().max() / curvature_of(theirs).abs().max()),
    }
    bad = {what: error for what, error in errors.items() if not error <= TOLERANCE}
    for what, error in bad.items():
        print(f"!!! MISMATCH {name}: {what} {error:.1e}", file=sys.stderr)
    return not bad


def main(argv: Sequence[str] | None = None) -> int:
    from laplace.curvature import BackPackGGN, CurvlinopsGGN

    from tncompiler.integrations.laplace import TncGGN

    parser = argparse.ArgumentParser(prog="python -m bench.laplace_fit", description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=9, help="timed rounds")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: for a machine others keep busy")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    model, data = cnn(), loader()
    parameters = sum(p.numel() for p in model.parameters())
    print(f"digits CNN: {len(data.dataset)} images in batches of {BATCH}, {parameters} parameters, float32, 1 thread, "
          f"{args.clock} clock, {args.repeat} rounds")  # fmt: skip
    print(f"{'structure':<10}{'tnc':>12}{'reference':>22}{'tnc / reference':>18}")
    good = True
    for structure, reference, label in (("kron", CurvlinopsGGN, "curvlinops"), ("diag", BackPackGGN, "BackPACK")):
        mine, theirs = fitter(model, structure, TncGGN, data), fitter(model, structure, reference, data)
        good &= check(structure, mine, theirs)
        samples = time_interleaved({"tnc": mine, label: theirs}, "cpu", args.repeat, clock=args.clock, budget_s=1e9)
        times, ratios = summarize(samples)
        print(f"{structure:<10}{times['tnc'] * 1e3:>10.1f}ms{label:>12}{times[label] * 1e3:>8.1f}ms"
              f"{ratios[label]:>18.2f}")  # fmt: skip
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())

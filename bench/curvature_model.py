"""Model-level curvature against BackPACK: `python -m bench.curvature_model [--quick] [--threads 1] [--clock cpu]`.

A CIFAR-sized CNN (3x32x32 inputs, three 3x3 convolutions with ReLU and 2x2 max-pooling, two linear layers, 10
classes, cross-entropy with a mean), float32, at batch 64 and 256. Timed interleaved, each call a whole forward and
backward pass with the quantity:

- `tncompiler.curvature(model, loss, (x, y), quantities=["diag_ggn_exact"])` against BackPACK 1.7's `DiagGGNExact`
  (goal: tnc / BackPACK ≤ 0.8);
- `quantities=["batch_l2"]` against `BatchL2Grad` (goal ≤ 0.5).

Both run on their own copy of the model (BackPACK's `extend` hooks every module). Before timing, the results are
checked against each other (1e-4 relative, float32); exit status 1 on a mismatch. Reported: the median seconds per
call (and of a plain forward and backward pass, "plain"), the median over rounds of the paired ratio tnc / BackPACK,
and of (tnc - plain) / (BackPACK - plain), what each costs beyond the pass both run; and which form the compiler chose
for each layer's squared norm (per-example gradients or Gram products, `curvature_text.norm_form`).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from bench.measure import summarize, time_interleaved, timing_arguments, timing_parser
from tncompiler.model.curvature import curvature
from tncompiler.model.curvature_text import curvature_layout, norm_form
from tncompiler.model.layers import SUPPORTED, spec_of

__all__ = ["cifar_cnn", "main"]

BATCHES = (64, 256)
GOALS = {"diag_ggn_exact": 0.8, "batch_l2": 0.5}
EXTENSIONS = {"diag_ggn_exact": ("DiagGGNExact", "diag_ggn_exact"), "batch_l2": ("BatchL2Grad", "batch_l2")}
TOLERANCE = 1e-4


def cifar_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Linear(128, 10),
    )  # fmt: skip


def _data(batch: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(batch)
    return torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,), generator=generator)


def _thunks(quantity: str, batch: int) -> tuple[dict[str, Callable[[], dict[str, Tensor]]], nn.Module]:
    from backpack import backpack, extend, extensions  # type: ignore[import-untyped]

    x, y = _data(batch)
    ours, theirs = cifar_cnn(), extend(copy.deepcopy(cifar_cnn()))
    loss, their_loss = nn.CrossEntropyLoss(), extend(nn.CrossEntropyLoss())
    extension, attribute = EXTENSIONS[quantity]

    def tnc() -> dict[str, Tensor]:
        ours.zero_grad(set_to_none=True)
        return curvature(ours, loss, (x, y), quantities=[quantity])[quantity]

    def reference() -> dict[str, Tensor]:
        theirs.zero_grad(set_to_none=True)
        with backpack(getattr(extensions, extension)()):
            their_loss(theirs(x), y).backward()
        return {name: getattr(p, attribute) for name, p in theirs.named_parameters()}

    def plain() -> dict[str, Tensor]:
        ours.zero_grad(set_to_none=True)
        loss(ours(x), y).backward()
        return {}

    return {"tnc": tnc, "backpack": reference, "plain": plain}, ours


def _overhead(samples: dict[str, list[float]]) -> float:
    """The median over rounds of (tnc - plain) / (BackPACK - plain): the quantity's own cost beyond the forward and
    backward pass both must run."""
    rounds = zip(samples["tnc"], samples["backpack"], samples["plain"])
    return statistics.median((t - p) / max(b - p, 1e-9) for t, b, p in rounds)


def _mismatch(thunks: dict[str, Callable[[], dict[str, Tensor]]]) -> float:
    ours, theirs = thunks["tnc"](), thunks["backpack"]()
    return max(float((ours[n] - theirs[n]).abs().max() / theirs[n].abs().max()) for n in theirs)


def _forms(model: nn.Module, batch: int) -> str:
    """Each layer's squared-norm form, as the compiler chose it for these sizes."""
    shapes: dict[str, tuple[torch.Size, torch.Size]] = {}
    hooks = [
        m.register_forward_hook(lambda m, a, o, name=name: shapes.__setitem__(name, (a[0].shape, o.shape)))
        for name, m in model.named_modules()
        if isinstance(m, SUPPORTED)
    ]
    with torch.no_grad():
        model(_data(batch)[0])
    for hook in hooks:
        hook.remove()
    modules = dict(model.named_modules())
    return ", ".join(f"{n}: {norm_form(curvature_layout(spec_of(modules[n]), *s))}" for n, s in shapes.items())


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = timing_parser("bench.curvature_model", __doc__ or "", (7, 3), ((0.5, 0.2), (0.2, 0.1)))
    return timing_arguments(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    warnings.filterwarnings("ignore", message="Full backward hook")  # BackPACK's hooks, where no input needs grad
    print(f"curvature of a CIFAR CNN, float32, {torch.get_num_threads()} threads, {args.repeat} rounds ({args.clock})")
    print(f"norm forms: {_forms(cifar_cnn(), BATCHES[0])}")
    print(
        f"{'quantity':16} {'batch':>6} {'plain s':>9} {'tnc s':>9} {'BackPACK s':>11} {'tnc/BackPACK':>13} "
        f"{'extra tnc/BackPACK':>19} {'goal':>6} {'error':>9}"
    )
    bad = False
    for quantity in GOALS:
        for batch in BATCHES:
            thunks, _ = _thunks(quantity, batch)
            error = _mismatch(thunks)
            bad |= error > TOLERANCE
            timed: dict[str, Callable[[], object]] = dict(thunks)
            samples = time_interleaved(timed, "cpu", args.repeat, args.warmup, args.block, args.clock, budget_s=300.0)
            times, ratios = summarize(samples, args.statistic)
            ratio = ratios["backpack"]  # summarize gives the first thunk's time over each one's: tnc / BackPACK
            extra = _overhead(samples)
            met = "met" if ratio <= GOALS[quantity] else "missed"
            print(
                f"{quantity:16} {batch:6d} {times['plain']:9.4f} {times['tnc']:9.4f} {times['backpack']:11.4f} "
                f"{ratio:13.2f} {extra:19.2f} {GOALS[quantity]:6.2f} {error:9.1e}  {met}",
                flush=True,
            )
    if bad:
        print("MISMATCH against BackPACK")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

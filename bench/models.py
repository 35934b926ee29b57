"""Whole models: `python -m bench.models [--batches 32 128] [--repeat 9] [--threads N] [--device cpu|cuda]`.

KFAC's factors of a CNN (three Conv2d, average pooling, one Linear; 3x32x32 inputs, 10 classes, float32), forward
and backward pass included, at two batch sizes:

- tnc: `tncompiler.kfac_factors(model, loss, [(x, y)], fisher=..., approx=...)`: one forward pass, one backward pass
  to the layers' outputs per output cotangent (type-2: the classes at once, vectorised), the factors from the layers'
  compiled functions.
- tnc step: a training step with the factors: `loss.backward()` (the parameters' gradients too), then
  `KFAC.step()` updating the factors and preconditioning the gradients (no inversion).
- curvlinops: a fresh `KFACLinearOperator(...)` and `compute_kronecker_factors()` (a backward pass to the
  parameters per cotangent; its factors are checked against tnc's first, 1e-4 relative).
- BackPACK: `with backpack(KFLR())` (type-2) or `KFAC()` (mc, one sample) around `loss.backward()`, expand only.
  Its input factors equal tnc's expand ones up to the number of positions; for convolutions its gradient factor is
  its own approximation, not curvlinops' (linear layers agree to rounding), so it is timed, not compared.

Then the disk cache: compiling 50 different layers into an empty cache, loading them back from disk in a process
that has not seen them (the memory cache cleared), and from memory.
"""

from __future__ import annotations

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import tncompiler
from bench.measure import summarize, time_interleaved
from tncompiler.model import cache

__all__ = ["cnn", "fifty_layers", "main"]

Tensor = torch.Tensor
COMBINATIONS = [("type-2", "expand"), ("mc", "expand"), ("empirical", "expand"), ("empirical", "reduce")]


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(8), nn.Flatten(),
        nn.Linear(128, 10),
    )  # fmt: skip


def _curvlinops(model: nn.Module, x: Tensor, y: Tensor, fisher: str, approx: str) -> Callable[[], Any]:
    from curvlinops import KFACLinearOperator

    def run() -> Any:
        operator = KFACLinearOperator(
            model, nn.CrossEntropyLoss(), list(model.parameters()), [(x, y)], fisher_type=fisher, kfac_approx=approx,
            separate_weight_and_bias=False, check_deterministic=False, num_data=len(x), num_per_example_loss_terms=1,
        )  # fmt: skip
        operator.compute_kronecker_factors()
        return operator

    return run


def _backpack(model: nn.Module, x: Tensor, y: Tensor, fisher: str) -> Callable[[], Any] | None:
    try:
        from backpack import backpack, extend
        from backpack.extensions import KFAC, KFLR
    except ImportError:
        return None
    extended, loss = extend(copy.deepcopy(model)), extend(nn.CrossEntropyLoss())
    extension = {"type-2": KFLR, "mc": KFAC}.get(fisher)
    if extension is None:
        return None

    def run() -> None:
        extended.zero_grad(set_to_none=True)
        with backpack(extension()):
            loss(extended(x), y).backward()

    return run


def _tnc_step(model: nn.Module, x: Tensor, y: Tensor, fisher: str, approx: str) -> Callable[[], Any]:
    trained = copy.deepcopy(model)
    kfac = tncompiler.KFAC(
        trained,
        nn.CrossEntropyLoss(),
        update_every=1,
        invert_every=10**9,
        fisher=fisher,  # type: ignore[arg-type]
        approx=approx,
    )  # type: ignore[arg-type]

    def run() -> None:
        trained.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(trained(x), y).backward()
        kfac.step()

    return run


def _check(model: nn.Module, x: Tensor, y: Tensor, fisher: str, approx: str) -> float:
    """tnc against curvlinops (mc: the same draws), max relative error over the factors."""
    operator = _curvlinops(model, x, y, fisher, approx)()
    state = operator.state_dict()
    ours = tncompiler.kfac_factors(
        model,
        nn.CrossEntropyLoss(),
        [(x, y)],
        fisher=fisher,
        approx=approx,  # type: ignore[arg-type]
        generator=torch.Generator(x.device).manual_seed(2147483647),
    )
    worst = 0.0
    for name, (a, b) in ours.items():
        for actual, expected in ((a, state["input_covariances"][name]), (b, state["gradient_covariances"][name])):
            worst = max(worst, float((actual - expected).abs().max() / expected.abs().max()))
    return worst


def _row(batch: int, fisher: str, approx: str, device: str, repeat: int) -> None:
    model = cnn().to(device)
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, 32, 32, generator=generator).to(device)
    y = torch.randint(0, 10, (batch,), generator=generator).to(device)
    error = _check(model, x, y, fisher, approx)
    thunks: dict[str, Callable[[], Any]] = {
        "tnc": lambda: tncompiler.kfac_factors(model, nn.CrossEntropyLoss(), [(x, y)], fisher=fisher, approx=approx),  # type: ignore[arg-type]
        "tnc step": _tnc_step(model, x, y, fisher, approx),
        "curvlinops": _curvlinops(model, x, y, fisher, approx),
    }
    backpack = _backpack(model, x, y, fisher) if approx == "expand" else None
    if backpack is not None:
        thunks["backpack"] = backpack
    times, ratios = summarize(time_interleaved(thunks, device, repeat))
    names = ("tnc", "tnc step", "curvlinops", "backpack")
    cells = " ".join(f"{1e3 * times[name]:8.1f}" if name in times else "       -" for name in names)
    versus_curvlinops = ratios["curvlinops"]  # per-round ratios tnc / curvlinops, their median
    versus_backpack = f"{ratios['backpack'] / ratios['tnc step']:6.2f}" if "backpack" in times else "     -"
    ok = "ok" if error <= 1e-4 else f"MISMATCH {error:.1e}"
    print(f"{batch:5d}  {fisher:9s} {approx:6s} {cells}   {versus_curvlinops:6.2f}   {versus_backpack}   {ok}")


def fifty_layers() -> list[nn.Module]:
    """50 layers with 50 different sets of hyper-parameters: each needs its own compiled module."""
    layers: list[nn.Module] = []
    for j in range(50):
        kind = j % 5
        if kind == 0:
            layers.append(nn.Linear(16 + j, 8 + j))
        elif kind == 1:
            layers.append(nn.Conv2d(8 + j, 16, 3, stride=1 + j % 2, padding=1))
        elif kind == 2:
            layers.append(nn.Conv2d(16, 8 + 2 * j, 1 + 2 * (j % 3), groups=2, padding="same"))
        elif kind == 3:
            layers.append(nn.Conv1d(4 + j, 8, 5, dilation=1 + j % 3))
        else:
            layers.append(nn.ConvTranspose2d(8 + j, 8, 4, stride=2, padding=1))
    return layers


def measure_cache() -> None:
    layers = fifty_layers()
    before = os.environ.get("TNC_CACHE_DIR")
    with tempfile.TemporaryDirectory() as folder:
        os.environ["TNC_CACHE_DIR"] = folder
        try:
            spent = {}
            for stage in ("compiled (empty cache)", "loaded from disk", "from memory"):
                if stage != "from memory":
                    cache.clear_memory()
                start = time.perf_counter()
                for layer in layers:
                    tncompiler.compile_layer(layer)
                spent[stage] = time.perf_counter() - start
        finally:
            cache.clear_memory()
            if before is None:
                del os.environ["TNC_CACHE_DIR"]
            else:
                os.environ["TNC_CACHE_DIR"] = before
    print(f"\n50 layers, 50 different compiled modules ({len(set(map(tncompiler.layer_source, layers)))} texts):")
    for stage, seconds in spent.items():
        print(f"  {stage:24s} {seconds:8.3f} s   ({1e3 * seconds / len(layers):.2f} ms per layer)")


def main() -> None:
    parser = argparse.ArgumentParser(description="KFAC factors of a CNN: tnc against curvlinops and BackPACK")
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 128])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="3 rounds, one batch size")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.repeat, args.batches = 3, args.batches[:1]
    threads = torch.get_num_threads()
    print(f"KFAC factors of a CNN (3 Conv2d, pooling, Linear; 3x32x32, float32) on {args.device}, {threads} threads;")
    print(f"medians of {args.repeat} rounds, ms; ratios: medians of the per-round ratios")
    print("batch  fisher    approx     tnc  tnc step curvlinops backpack  tnc/curvlinops  step/backpack")
    for batch in args.batches:
        for fisher, approx in COMBINATIONS:
            _row(batch, fisher, approx, args.device, args.repeat)
    measure_cache()


if __name__ == "__main__":
    main()

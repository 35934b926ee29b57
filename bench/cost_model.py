"""Calibrate the time model of `tncompiler.cost` against measured times: `python -m bench.cost_model`.

For each layer of the suite (the quick set; every layer with `--all`) and three small calls (SMALL), and each
function of its `.tnd` file (bench/ops.py: forward, both VJPs, unfold, both KFAC factors, sampled weight VJPs), the
generated function is timed
(median of rounds, one thread, float32, CPU time of this process) and its time predicted: the sum, over the networks
its optimised diagram computes (shared ones, then terms), of `cost.seconds(multiply-adds, entries moved, kind)` at the
layer's sizes (sampled indices at their expected kept size). The `Machine` constants are then fitted by least squares
on log time (coordinate descent over each constant's logarithm). Prints the fitted constants, and, for the defaults of
`cost.MACHINE` and for the fit: the median and 90th percentile of predicted / measured, the median |log ratio| and the
rank correlation (Spearman). `--check`: exit 1 when the defaults' median |log ratio| exceeds CHECK_BOUND.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import sys
from collections.abc import Callable, Sequence

import torch

import tncompiler
from bench.layers import LAYERS, QUICK, Layer
from bench.measure import summarize, time_interleaved
from bench.ops import OPS, make_inputs, tnc_thunk, tnd_source
from tncompiler.api import build_program
from tncompiler.cost import MACHINE, Kind, Machine, bytes_moved, evaluate, expected_sizes, flops, seconds, symbols_of
from tncompiler.driver import Compilation

__all__ = ["CHECK_BOUND", "Sample", "fit", "main", "spearman"]

# Small calls, where the time is the fixed cost of a call (batch 1 or 2, a few channels): without them the fitted
# overhead absorbs the suite's slow strided kernels instead (0.23 ms a kernel call, 50x a tiny conv2d's).
SMALL = (
    Layer("small.conv2d", "bench/calls.py's tiny call", 3, 8, (3, 3), (8, 8), 1, padding=(1, 1)),
    Layer("small.strided", "a stride-2 call of batch 2", 8, 16, (3, 3), (8, 8), 2, stride=(2, 2), padding=(1, 1)),
    Layer("small.conv1d", "a 1-d call of batch 2", 4, 4, (3,), (16,), 2),
)

# --check fails when the defaults' median |log(predicted / measured)| exceeds this: a factor of 2 either way
CHECK_BOUND = math.log(2.0)
# where the fit starts (not at the defaults, so that a refit does not depend on them)
START = Machine(1e10, 1e10, 1e10, 1e-5, 1e-5)
FITTED = ("kernel_rate", "contract_rate", "bandwidth", "kernel_overhead", "contract_overhead")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One generated function: its networks' (multiply-adds, entries moved, kind) and its measured seconds."""

    name: str
    work: tuple[tuple[float, float, Kind], ...]
    measured: float

    def predicted(self, machine: Machine) -> float:
        return sum(seconds(f, e, kind, machine) for f, e, kind in self.work)


def _work(layer: Layer, compilation: Compilation, diagram_name: str) -> tuple[tuple[float, float, Kind], ...]:
    """Each network's work at the layer's sizes: the batch n, a sampled index at its expected kept size."""
    built = next(d for d in compilation.program.diagrams if d.name == diagram_name)
    diagram = compilation.optimised(built)
    sizes = symbols_of(
        *[size for net in diagram.networks() for size in net.sizes.values()], *[s.size for s in built.samplers]
    )
    at = {s: layer.batch for s in sizes if s.name == "n"}
    at |= expected_sizes(built.samplers, at)
    work = []
    for net in diagram.networks():
        kind: Kind = "kernel" if net.lowering.native is not None else "contract"
        work.append((float(evaluate(flops(net), at)), float(evaluate(bytes_moved(net), at)), kind))
    return tuple(work)


def measure_layer(layer: Layer, repeat: int) -> list[Sample]:
    source = tnd_source(layer)
    module = tncompiler.load_source(source, f"{layer.name}.tnd")
    compilation = Compilation(build_program(source, f"{layer.name}.tnd"), source)
    tensors = make_inputs(layer, "cpu")
    generator = torch.Generator().manual_seed(0)
    thunks: dict[str, Callable[[], object]] = {op.function: tnc_thunk(module, op, tensors, generator) for op in OPS}
    with torch.no_grad():
        times, _ = summarize(time_interleaved(thunks, "cpu", repeat, 0.03, 0.02, "cpu", budget_s=2.0))
    return [Sample(f"{layer.name}/{op.name}", _work(layer, compilation, op.function), times[op.function]) for op in OPS]


def _loss(samples: Sequence[Sample], machine: Machine) -> float:
    return sum(math.log(s.predicted(machine) / s.measured) ** 2 for s in samples)


def fit(samples: Sequence[Sample], start: Machine = START, rounds: int = 30) -> Machine:
    """Least squares on log time: each constant in turn scaled by the best of 2^(j/8), j = -16..16, until none moves."""
    machine = start
    for _ in range(rounds):
        moved = False
        for name in FITTED:
            value = getattr(machine, name)
            tries = [dataclasses.replace(machine, **{name: value * 2 ** (j / 8)}) for j in range(-16, 17)]
            best = min(tries, key=lambda m: _loss(samples, m))
            if _loss(samples, best) < _loss(samples, machine) * (1 - 1e-9):
                machine, moved = best, True
        if not moved:
            break
    return machine


def _ranks(values: Sequence[float]) -> list[float]:
    """Ranks from 1, ties at their average rank."""
    order = sorted(range(len(values)), key=lambda k: values[k])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for k in order[start : end + 1]:
            ranks[k] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation: Pearson's of the ranks."""
    ra, rb = _ranks(a), _ranks(b)
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    spread = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / spread if spread else 0.0


def quality(samples: Sequence[Sample], machine: Machine) -> dict[str, float]:
    ratios = sorted(s.predicted(machine) / s.measured for s in samples)
    return {
        "median ratio": statistics.median(ratios),
        "p90 ratio": ratios[min(len(ratios) - 1, math.ceil(0.9 * len(ratios)) - 1)],
        "median |log ratio|": statistics.median(abs(math.log(r)) for r in ratios),
        "spearman": spearman([s.predicted(machine) for s in samples], [s.measured for s in samples]),
    }


def _print(samples: Sequence[Sample], default: Machine, fitted: Machine) -> None:
    print(f"{'function':44} {'measured ms':>12} {'default ms':>11} {'fitted ms':>10}")
    for s in samples:
        print(
            f"{s.name:44} {s.measured * 1e3:12.3f} {s.predicted(default) * 1e3:11.3f} {s.predicted(fitted) * 1e3:10.3f}"
        )
    print("\nfitted constants (Machine):")
    for name in FITTED:
        print(f"  {name:18} {getattr(fitted, name):.3g}")
    print(f"\n{'predicted / measured':22} {'median':>8} {'p90':>8} {'med|log|':>9} {'spearman':>9}")
    for label, machine in (("defaults (cost.MACHINE)", default), ("fitted", fitted)):
        q = quality(samples, machine)
        print(f"{label:22} {q['median ratio']:8.2f} {q['p90 ratio']:8.2f} {q['median |log ratio|']:9.2f} "
              f"{q['spearman']:9.3f}")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cost_model", description=__doc__.split("\n")[0])
    parser.add_argument("--all", action="store_true", help="every layer of the suite (default: the quick set)")
    parser.add_argument("--repeat", type=int, default=5, help="timed rounds per function (median)")
    parser.add_argument(
        "--check", action="store_true", help=f"exit 1 if the defaults' median |log ratio| > {CHECK_BOUND:.2f}"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    layers = (*(LAYERS if args.all else QUICK), *SMALL)
    samples = [sample for layer in layers for sample in measure_layer(layer, args.repeat)]
    fitted = fit(samples)
    _print(samples, MACHINE, fitted)
    error = quality(samples, MACHINE)["median |log ratio|"]
    if args.check and error > CHECK_BOUND:
        print(f"!!! the defaults' median |log ratio| {error:.2f} exceeds {CHECK_BOUND:.2f}: refit (bench/README.md)")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

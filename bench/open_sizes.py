"""Call-time sizes cost nothing: `python -m bench.open_sizes [--threads 1 --clock cpu] [--quick] [--channels]`.

For every layer and op of the suite, the function compiled from a file that leaves the spatial sizes (with
`--channels`, also the channel sizes) open, bound from the arguments at call time, is compared with the one compiled
from the file that writes every size in: it must give the same result (float32, 1e-5 relative; sampled ops with the
same seeded draws) and run the same ATen compute ops, in the same order (views are free and left out). Both are then
timed interleaved in this process; reported per op is the median over layers of the per-round median ratio
open / fixed (target: at most 1.05).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import types
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import tncompiler
from bench.layers import LAYERS, QUICK, Layer
from bench.measure import summarize, time_interleaved, timing_arguments, timing_parser
from bench.ops import OPS, Op, Tensors, make_inputs, tnc_thunk, tnd_source

__all__ = ["compute_ops", "main"]

TOLERANCE = 1e-5
TARGET = 1.05


class _Recorder(TorchDispatchMode):
    """Records the ATen ops a call runs, views left out."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if not func.is_view:
            self.ops.append(str(func.overloadpacket.__name__))
        return func(*args, **(kwargs or {}))


def compute_ops(thunk: Any) -> list[str]:
    """The names of the ATen compute ops one call runs, in order."""
    with _Recorder() as recorder:
        thunk()
    return recorder.ops


def _thunks(modules: dict[str, types.ModuleType], op: Op, tensors: Tensors) -> dict[str, Any]:
    return {
        kind: tnc_thunk(module, op, tensors, torch.Generator().manual_seed(0) if op.index else None)
        for kind, module in modules.items()
    }


def _fresh(modules: dict[str, types.ModuleType], op: Op, tensors: Tensors) -> dict[str, torch.Tensor]:
    """One result each, with equal seeds for sampled ops."""
    return {kind: thunk() for kind, thunk in _thunks(modules, op, tensors).items()}


def compare(layer: Layer, ops: Sequence[Op], args: argparse.Namespace) -> list[tuple[str, str, float, bool, bool]]:
    """(layer, op, open/fixed time ratio, same result, same compute ops) for each op."""
    modules = {
        "fixed": tncompiler.load_source(tnd_source(layer), f"{layer.name}.tnd"),
        "open": tncompiler.load_source(tnd_source(layer, open_sizes=args.open), f"{layer.name}.open.tnd"),
    }
    tensors = make_inputs(layer, "cpu")
    rows = []
    for op in ops:
        with torch.no_grad():
            results = _fresh(modules, op, tensors)
            scale = results["fixed"].abs().max().clamp_min(1e-30)
            same = bool((results["open"] - results["fixed"]).abs().max() / scale <= TOLERANCE)
            kernels = {kind: compute_ops(thunk) for kind, thunk in _thunks(modules, op, tensors).items()}
            samples = time_interleaved(
                _thunks(modules, op, tensors), "cpu", args.repeat, args.warmup, args.block, args.clock
            )
        _, ratios = summarize({"open": samples["open"], "fixed": samples["fixed"]}, args.statistic)
        rows.append((layer.name, op.name, ratios["fixed"], same, kernels["open"] == kernels["fixed"]))
        if args.verbose or not same or kernels["open"] != kernels["fixed"]:
            note = "" if kernels["open"] == kernels["fixed"] else f"  kernels {kernels['open']} vs {kernels['fixed']}"
            print(f"  {layer.name:24} {op.name:18} {ratios['fixed']:.3f}{'' if same else '  MISMATCH'}{note}")
    return rows


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = timing_parser("bench.open_sizes", __doc__ or "", (9, 3), ((0.05, 0.02), (0.02, 0.01)))
    parser.add_argument("--ops", nargs="*", help="only these ops")
    parser.add_argument("--channels", action="store_true", help="leave the channel sizes open too")
    parser.add_argument("--verbose", "-v", action="store_true")
    args = timing_arguments(parser, argv)
    args.open = "channels" if args.channels else "spatial"
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    layers = [layer for layer in (QUICK if args.quick else LAYERS) if not args.layers or layer.name in args.layers]
    ops = [op for op in OPS if not args.ops or op.name in args.ops]
    what = f"open {args.open} sizes vs fixed"
    print(f"{what}: {len(layers)} layers x {len(ops)} ops, {torch.get_num_threads()} threads", flush=True)
    rows = [row for layer in layers for row in compare(layer, ops, args)]
    print(f"\n{'op':18} {'median open/fixed':>18} {'worst':>8}  same results  same kernels")
    for op in ops:
        mine = [row for row in rows if row[1] == op.name]
        ratios = [row[2] for row in mine]
        print(
            f"{op.name:18} {statistics.median(ratios):18.3f} {max(ratios):8.3f}  "
            f"{sum(r[3] for r in mine)}/{len(mine):<11} {sum(r[4] for r in mine)}/{len(mine)}"
        )
    overall = statistics.median(row[2] for row in rows)
    print(f"\nall ops: median {overall:.3f} (target <= {TARGET})")
    return 0 if all(row[3] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

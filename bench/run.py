"""Benchmark tnc's generated code against PyTorch, einconv and the unfold-based KFAC: `python -m bench.run`.

Every layer of the suite (bench/layers.py) gets one `.tnd` file with every op (bench/ops.py), compiled once before
any timing. Each op is checked against each of its references (1e-4 relative, float32), then tnc and the references
are timed interleaved in this one process (medians of `--repeat` rounds) and their peak extra memory is measured
(bench/measure.py). Prints the table, the per-op medians and the targets; writes DIR/results.csv and DIR/ratios.png.
Exit status 1 when a result disagrees with its reference.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Sequence
from pathlib import Path

import torch

import tncompiler
from bench.layers import LAYERS, QUICK, Layer
from bench.measure import peak_memory, summarize, time_interleaved
from bench.ops import OPS, Op, Tensors, Thunk, make_inputs, references, sampled_reference, tnc_thunk, tnd_source
from bench.report import Row, plot, print_summary, print_table, write_csv

__all__ = ["bench_layer", "check_errors", "compile_times", "main"]

TOLERANCE = 1e-4
COMPILE_LAYER = "resnet18.layer2.down"  # the conv2d file whose compile time is reported
MIB = 2.0**20
SEED = 1234  # of the generator in the check of sampled ops


def _error(result: torch.Tensor, expected: torch.Tensor) -> float:
    if result.numel() != expected.numel():
        return float("inf")
    scale = expected.abs().max().clamp_min(1e-30)
    return float((result.reshape(expected.shape) - expected).abs().max() / scale)


def check_errors(
    layer: Layer, module: types.ModuleType, op: Op, tensors: Tensors, refs: dict[str, Thunk]
) -> dict[str, float]:
    """Reference name -> relative error of tnc's result. A sampled op is run with a seeded generator and compared
    with the dense estimate that keeps the same entries (the same error for each of its references)."""
    with torch.no_grad():
        if op.index:
            generator = torch.Generator().manual_seed(SEED)  # on the host, where tnc then draws
            error = _error(tnc_thunk(module, op, tensors, generator)(), sampled_reference(layer, op, tensors, SEED))
            return dict.fromkeys(refs, error)
        result = tnc_thunk(module, op, tensors)()
        return {name: _error(result, ref()) for name, ref in refs.items()}


def _ratio(a: float, b: float) -> float:
    return a / b if b else (1.0 if not a else math.inf)


def bench_op(layer: Layer, module: types.ModuleType, op: Op, tensors: Tensors, args: argparse.Namespace) -> list[Row]:
    generator = torch.Generator().manual_seed(0)  # draws on the host: a device generator would make tnc wait for it
    tnc = tnc_thunk(module, op, tensors, generator)
    refs = references(layer, op, tensors, exact=tnc_thunk(module, OPS[2], tensors))
    errors = check_errors(layer, module, op, tensors, refs)
    for name, error in errors.items():
        if not error <= TOLERANCE:
            print(f"!!! MISMATCH {layer.name} {op.name}: tnc vs {name}: relative error {error:.2e}", flush=True)
    samples = time_interleaved({"tnc": tnc, **refs}, args.device, args.repeat, args.warmup, args.block, args.clock)
    times, ratios = summarize(samples, args.statistic)
    memory = {name: peak_memory(thunk, args.device) for name, thunk in {"tnc": tnc, **refs}.items()}
    rows = []
    for name in refs:
        tnc_memory, reference_memory = memory["tnc"], memory[name]
        rows.append(
            Row(
                layer.name, op.name, name, times["tnc"] * 1e3, times[name] * 1e3, ratios[name],
                tnc_memory.peak / MIB, reference_memory.peak / MIB, _ratio(tnc_memory.peak, reference_memory.peak),
                tnc_memory.temporary / MIB, reference_memory.temporary / MIB,
                _ratio(tnc_memory.temporary, reference_memory.temporary),
                errors[name] <= TOLERANCE, errors[name],
            )
        )  # fmt: skip
    return rows


def bench_layer(layer: Layer, ops: Sequence[Op], args: argparse.Namespace) -> list[Row]:
    module = tncompiler.load_source(tnd_source(layer), f"{layer.name}.tnd")
    tensors = make_inputs(layer, args.device)
    rows = []
    for op in ops:
        start = time.perf_counter()
        op_rows = bench_op(layer, module, op, tensors, args)
        rows += op_rows
        if args.verbose:
            print_table(op_rows)
            print(f"  ({time.perf_counter() - start:.1f} s)", flush=True)
    return rows


def compile_times(layer: Layer) -> dict[str, float]:
    """Compile times of the conv2d file with every transform (forward, VJPs, both KFAC factors of both kinds,
    sampled VJPs): `tnc compile` in a fresh process (imports included), and compile_source in this one."""
    source = tnd_source(layer, kfac_grad=True)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "conv2d_all.tnd"
        path.write_text(source)
        command = [sys.executable, "-m", "tncompiler", "compile", str(path), "-o", str(path.with_suffix(".py"))]
        cli = []
        for _ in range(3):
            start = time.perf_counter()
            subprocess.run(command, check=True, capture_output=True)
            cli.append(time.perf_counter() - start)
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import tncompiler"], check=True, capture_output=True)
        imports = time.perf_counter() - start
    in_process = []
    for _ in range(3):
        start = time.perf_counter()
        tncompiler.compile_source(source, "conv2d_all.tnd")
        in_process.append(time.perf_counter() - start)
    return {
        f"tnc compile {layer.name} (fresh process, median of 3)": statistics.median(cli),
        "of which: python -c 'import tncompiler' (fresh process)": imports,
        "compile_source in process, first call": in_process[0],
        "compile_source in process, median of 3": statistics.median(in_process),
    }


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--repeat", type=int, default=None, help="timed rounds per op (default 15, quick 5)")
    parser.add_argument("--quick", action="store_true", help="4 layers, fewer rounds: a smoke run")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results", help="where to write")
    parser.add_argument("--layers", nargs="*", help="only these layers (names from bench/layers.py)")
    parser.add_argument("--ops", nargs="*", help="only these ops")
    parser.add_argument("--statistic", choices=("median", "min"), default="median", help="over the timed rounds")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall", help="cpu: process CPU time (see README)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--verbose", "-v", action="store_true", help="print each op's rows as it finishes")
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (5 if args.quick else 15)
    args.warmup, args.block = (0.03, 0.01) if args.quick else (0.1, 0.03)
    return args


def _setup(args: argparse.Namespace) -> str:
    """Apply the device and thread options; the run's description line."""
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here")
    if args.device.startswith("cuda") and args.clock == "cpu":
        raise SystemExit("--clock cpu measures host CPU time; use the wall clock on CUDA")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):  # full float32 everywhere, so that results agree to 1e-4 and timings compare
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{os.cpu_count()} CPU cores"
    return (
        f"{args.device} ({name}, torch {torch.__version__}, {torch.get_num_threads()} threads); "
        f"{args.statistic} of {args.repeat} rounds, {args.clock} clock"
    )


def _warn_if_busy(args: argparse.Namespace) -> None:
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if args.device == "cpu" and args.clock == "wall" and load > 0.5 * cores:
        print(
            f"!!! the machine is busy (load {load:.1f} on {cores} cores): wall-clock times are unreliable; "
            "consider --threads 1 --clock cpu (see bench/README.md)",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    setting = _setup(args)
    layers = [layer for layer in (QUICK if args.quick else LAYERS) if not args.layers or layer.name in args.layers]
    ops = [op for op in OPS if not args.ops or op.name in args.ops]
    print(f"tnc benchmark: {len(layers)} layers x {len(ops)} ops on {setting}", flush=True)
    _warn_if_busy(args)
    times = compile_times(next(layer for layer in LAYERS if layer.name == COMPILE_LAYER))
    start, rows = time.perf_counter(), []
    for layer in layers:
        print(f"{layer.name}: {layer.describe()}", flush=True)
        rows += bench_layer(layer, ops, args)
    print(f"\n(benchmark took {time.perf_counter() - start:.0f} s)\n")
    _warn_if_busy(args)
    print_table(rows)
    print_summary(rows, times)
    write_csv(rows, args.out / "results.csv")
    plot(rows, args.out / "ratios.png", f"tnc / reference time: {setting}")
    print(f"\nwrote {args.out / 'results.csv'} and {args.out / 'ratios.png'}")
    mismatches = [row for row in rows if not row.agrees]
    if mismatches:
        print(f"!!! {len(mismatches)} results disagree with their reference (see MISMATCH above)")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

"""The GPU check, for a machine with CUDA (a few minutes at most): `python -m bench.gpu_check`.

1. Correctness on CUDA: every generated function of every layer's file (bench/layers.py, bench/ops.py), called on CUDA
   tensors in float32 (without TF32) and float64, against each of its references (1e-4 relative); sampled ops (p= and
   count=) with a host generator against the dense estimate that keeps the same entries. Also checks that each result
   is on the GPU and that a second call synchronises nothing (torch.cuda.set_sync_debug_mode("error"): no .item(),
   .nonzero() or truth test of a device tensor).
2. Timing: `python -m bench.run --device cuda --quick` in this process (table, targets, CSV and chart in --out).
3. Sampled training on whole models: bench/sampled_model.py's `ratios` on the same device (the CIFAR-sized CNN at
   batch 64 and the digits CNN at batch 512; forward and backward of a training step with exact gradients and inside
   `tncompiler.sampled(model, p, over)` for each setting, CUDA generators, wall time between
   `torch.cuda.synchronize()` calls; --model-rounds rounds, a minute or less).
Prints a summary: per part ok or FAILED, and for the models each goal (backward ÷ exact: p = 1 ≤ 1.05, p = 0.5 ≤ 0.8,
p = 0.25 positions ≤ 0.65; forward ÷ exact at p = 1 ≤ 1.02) with its ratio, met or missed. Exit status 1 when a
result is wrong, the timing run fails or the model part raises; a missed goal is reported, not a failure.
`--no-timing` and `--no-models` leave parts 2 and 3 out, `--only-models` parts 1 and 2.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch

import tncompiler
from bench import run, sampled_model
from bench.layers import LAYERS, Layer
from bench.ops import OPS, Thunk, make_inputs, references, tnc_thunk, tnd_source

__all__ = ["check_all", "check_layer", "check_models", "main"]

DTYPES = (torch.float32, torch.float64)


def check_layer(layer: Layer, device: str, dtype: torch.dtype = torch.float32) -> list[str]:
    """Failures (as lines of text) of every op of `layer` on `device` in `dtype`; empty when all agree."""
    module = tncompiler.load_source(tnd_source(layer), f"{layer.name}.tnd")
    tensors = {name: t.to(dtype) for name, t in make_inputs(layer, device).items()}
    failures = []
    for op in OPS:
        tnc = tnc_thunk(module, op, tensors, torch.Generator().manual_seed(0))
        try:
            result = tnc()
            refs = references(layer, op, tensors, tnc_thunk(module, OPS[2], tensors))
            errors = run.check_errors(layer, module, op, tensors, refs)
            if device.startswith("cuda"):
                _no_sync(tnc)
        except Exception as error:  # report and go on: one broken op must not hide the others
            failures.append(f"{layer.name} {op.name} {dtype}: raised {type(error).__name__}: {error}")
            continue
        if result.device.type != torch.device(device).type or result.dtype != dtype:
            failures.append(
                f"{layer.name} {op.name}: result {result.dtype} on {result.device}, not {dtype} on {device}"
            )
        failures += [
            f"{layer.name} {op.name} {dtype}: vs {name}: relative error {error:.2e}"
            for name, error in errors.items()
            if not error <= run.TOLERANCE
        ]
    return failures


def _no_sync(thunk: Thunk) -> None:
    """Call `thunk` (already called once: its constants are built) with CUDA's sync debug mode raising on any
    synchronising call."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        thunk()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def check_models(device: str, rounds: int) -> tuple[list[str], bool]:
    """Times the models (printing their tables); returns the summary's lines, one per goal, and whether it ran."""
    try:
        tables = sampled_model.ratios(device, rounds)
    except Exception as error:  # report it in the summary, with the other parts' results
        return [f"  sampled training on {device}: FAILED, raised {type(error).__name__}: {error}"], False
    lines = [f"  sampled training on {device} ({rounds} rounds; ratio to the exact step, goal):"]
    met = total = 0
    for name, table in tables.items():
        for label, (_, _, forward, backward) in table.items():
            for ratio, bound in sampled_model.goals(label):
                value = forward if ratio == "fwd" else backward
                total, met = total + 1, met + (value <= bound)
                verdict = "met" if value <= bound else "MISSED"
                lines.append(f"    {name:<7} {label:<18} {ratio} {value:6.3f}  <= {bound:<5} {verdict}")
    lines.append(f"    {met} of {total} goals met")
    return lines, True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (cpu only to try the script out)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gpu")
    parser.add_argument("--no-timing", action="store_true", help="leave out the quick timing run")
    parser.add_argument("--no-models", action="store_true", help="leave out the sampled-training models")
    parser.add_argument("--only-models", action="store_true", help="only the sampled-training models")
    parser.add_argument("--model-rounds", type=int, default=10, help="rounds of the models' timing")
    args = parser.parse_args(argv)
    if args.only_models and args.no_models:
        parser.error("--only-models and --no-models exclude each other")
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print("no CUDA device: nothing to check")
            return 1
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        print(f"GPU: {torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    failures = [] if args.only_models else check_all(args.device)
    timing = not (args.no_timing or args.only_models)
    status = run.main(["--device", args.device, "--quick", "--out", str(args.out)]) if timing else 0
    models, models_ran = check_models(args.device, args.model_rounds) if not args.no_models else ([], True)
    print("\nSUMMARY")
    if not args.only_models:
        print(f"  correctness on {args.device}: {'all ok' if not failures else f'{len(failures)} FAILURES'}")
    if timing:
        print(f"  quick timing run: {'ok' if status == 0 else 'FAILED'}; table, targets and chart above, in {args.out}")
    for line in models:
        print(line)
    return 1 if failures or status or not models_ran else 0


def check_all(device: str) -> list[str]:
    """Part 1: `check_layer` for every layer in both dtypes, printed as it goes; the failures."""
    start, failures = time.perf_counter(), []
    for layer in LAYERS:
        layer_failures = [line for dtype in DTYPES for line in check_layer(layer, device, dtype)]
        print(f"  {layer.name:22} {'ok' if not layer_failures else f'{len(layer_failures)} FAILED'}", flush=True)
        failures += layer_failures
    checked = len(LAYERS) * len(OPS) * len(DTYPES)
    print(f"correctness: {checked} generated functions checked in {time.perf_counter() - start:.0f} s")
    for line in failures:
        print(f"  !!! {line}")
    return failures


if __name__ == "__main__":
    sys.exit(main())

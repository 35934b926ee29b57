"""Where the time of one tnc op goes: `python -m bench.profile_op LAYER OP [--device cuda]`.

Prints the generated function, then for tnc and each reference the fastest of `--calls` calls (the least disturbed
estimate on a busy machine) and torch.profiler's per-kernel table (self time, summed over `--calls` calls).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch.profiler import ProfilerActivity, profile

import tncompiler
from bench.layers import by_name
from bench.measure import CLOCKS, synchronize
from bench.ops import OPS, Thunk, make_inputs, references, tnc_thunk, tnd_source

__all__ = ["main"]


def function_source(code: str, name: str) -> str:
    """The text of top-level function `name` in generated code (without its argument checks)."""
    start = code.index(f"\ndef {name}(")
    ends = [code.find(marker, start + 1) for marker in ("\ndef ", "\nclass ")]
    text = code[start : min([end for end in ends if end > 0] or [len(code)])]
    return "\n".join(line for line in text.splitlines() if "_check_" not in line and not line.startswith("        ("))


def fastest(thunk: Thunk, device: str, calls: int, clock: str) -> float:
    best, timer = float("inf"), CLOCKS[clock]
    for _ in range(calls):
        synchronize(device)
        start = timer()
        thunk()
        synchronize(device)
        best = min(best, timer() - start)
    return best


def kernel_table(thunk: Thunk, device: str, calls: int, rows: int) -> str:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            thunk()
        synchronize(device)
    key = "self_cuda_time_total" if device.startswith("cuda") else "self_cpu_time_total"
    return str(prof.key_averages().table(sort_by=key, row_limit=rows))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile_op", description=__doc__.split("\n")[0])
    parser.add_argument("layer")
    parser.add_argument("op", choices=[op.name for op in OPS])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument("--rows", type=int, default=12)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--no-code", action="store_true", help="do not print the generated function")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layer, op = by_name(args.layer), next(op for op in OPS if op.name == args.op)
    source = tnd_source(layer)
    module = tncompiler.load_source(source, f"{layer.name}.tnd")
    if not args.no_code:
        print(function_source(tncompiler.compile_source(source, f"{layer.name}.tnd"), op.function))
    tensors = make_inputs(layer, args.device)
    tnc = tnc_thunk(module, op, tensors, torch.Generator().manual_seed(0))
    thunks = {"tnc": tnc, **references(layer, op, tensors, tnc_thunk(module, OPS[2], tensors))}
    for thunk in thunks.values():
        thunk()  # warm up: builds tnc's cached constants
    for name, thunk in thunks.items():
        best = fastest(thunk, args.device, args.calls, args.clock)
        print(f"== {name}: fastest of {args.calls} calls ({args.clock} clock) {best * 1e3:.3f} ms")
        print(kernel_table(thunk, args.device, args.calls, args.rows))


if __name__ == "__main__":
    main()

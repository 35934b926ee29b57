"""Timing and peak-memory measurement of zero-argument callables, on CPU or CUDA.

Time: each implementation is first called until it has run `warmup_s` seconds (at least twice), which also sets how
many calls make one timed block (enough for `block_s`); then `repeat` rounds time one block of each implementation
in turn (interleaved, so drift in clock speed or load hits all alike). Reported: the median per-call time of each,
and the median over rounds of the ratio tnc / reference within a round (paired). `statistic="min"` reports the
fastest round instead, for a machine that other work keeps busy. CUDA is synchronized before and after each block.

Peak extra memory: the most memory the call holds at once beyond what was allocated before it, its output included,
and the peak of its temporaries alone (what it allocates and frees again: the working memory, e.g. an unfolded input).
On CUDA that is `torch.cuda.max_memory_allocated()` minus the allocation before the call. Otherwise (and for the
temporaries on CUDA), the call runs once under `torch.profiler` with `profile_memory=True`; the allocator's allocation
and free events are replayed in order and the running totals' maxima are taken. Caches that persist across calls
(tnc's index patterns and fused constants, einconv's operands built in advance) exist before the call and are not
counted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import NamedTuple

import torch
from torch.profiler import ProfilerActivity, profile

__all__ = ["CLOCKS", "Memory", "peak_memory", "summarize", "synchronize", "time_interleaved"]

Thunk = Callable[[], object]


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# wall: elapsed time. cpu: CPU time of this process (all its threads), which other processes on a busy machine do
# not inflate; use it with one thread (torch.set_num_threads(1)), as idle worker threads may spin.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def _block(thunk: Thunk, number: int, device: str, clock: Callable[[], float]) -> float:
    synchronize(device)
    start = clock()
    for _ in range(number):
        thunk()
    synchronize(device)
    return (clock() - start) / number


def _calibrate(thunk: Thunk, device: str, warmup_s: float, clock: Callable[[], float]) -> float:
    """Warm up (at least two calls, at least `warmup_s`); the time of the last call."""
    calls, spent, last = 0, 0.0, 0.0
    while calls < 2 or spent < warmup_s:
        last = _block(thunk, 1, device, clock)
        spent += last
        calls += 1
    return max(last, 1e-7)


def time_interleaved(
    thunks: dict[str, Thunk],
    device: str,
    repeat: int,
    warmup_s: float = 0.05,
    block_s: float = 0.02,
    clock: str = "wall",
    budget_s: float = 3.0,
) -> dict[str, list[float]]:
    """Seconds per call of each thunk in each round; in a round, the thunks are timed one after another. A thunk so
    slow that `repeat` rounds would take more than `budget_s` is timed in fewer rounds (at least 3): the first ones."""
    timer = CLOCKS[clock]
    per_call = {name: _calibrate(thunk, device, warmup_s, timer) for name, thunk in thunks.items()}
    numbers = {name: max(1, min(1000, round(block_s / seconds))) for name, seconds in per_call.items()}
    rounds = {name: max(3, min(repeat, int(budget_s / seconds))) for name, seconds in per_call.items()}
    samples: dict[str, list[float]] = {name: [] for name in thunks}
    for round_ in range(repeat):
        for name, thunk in thunks.items():
            if round_ < rounds[name]:
                samples[name].append(_block(thunk, numbers[name], device, timer))
    return samples


def summarize(samples: dict[str, list[float]], statistic: str = "median") -> tuple[dict[str, float], dict[str, float]]:
    """(seconds per call, the first thunk's time divided by this one's) for each thunk.

    With "median": the median over rounds, and the median of the per-round ratios (paired within a round, so load
    that comes and goes between rounds cancels). With "min": the fastest round, and the ratio of the fastest rounds
    (the least disturbed estimate on a busy machine)."""
    first = next(iter(samples.values()))
    if statistic == "min":
        times = {name: min(values) for name, values in samples.items()}
        return times, {name: min(first) / times[name] for name in samples}
    times = {name: statistics.median(values) for name, values in samples.items()}
    ratios = {name: statistics.median(a / b for a, b in zip(first, values)) for name, values in samples.items()}
    return times, ratios


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """The profiler's native library prints start/stop lines on file descriptor 2; hide them."""
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Memory(NamedTuple):
    """Bytes allocated by one call beyond what existed before it: at the peak, and at the peak of its temporaries
    (the allocations it also frees again: padded copies, unfolded inputs, intermediate products)."""

    peak: int
    temporary: int


def _replay(deltas: Sequence[int]) -> Memory:
    """Peak of the running total of allocation (+) and free (-) sizes, and the same for the temporaries alone.

    Events carry sizes, not addresses: a free is matched with the latest live allocation of its size (the choice
    among equal sizes does not change the totals). Allocations never freed are the output (and anything cached)."""
    live: dict[int, list[int]] = {}
    matched = set()
    for position, delta in enumerate(deltas):
        if delta > 0:
            live.setdefault(delta, []).append(position)
        elif live.get(-delta):
            matched.add(live[-delta].pop())
            matched.add(position)
    total = peak = temporary = temporary_peak = 0
    for position, delta in enumerate(deltas):
        total += delta
        peak = max(peak, total)
        if position in matched:
            temporary += delta
            temporary_peak = max(temporary_peak, temporary)
    return Memory(peak, temporary_peak)


def _profiled_deltas(thunk: Thunk, device: str) -> list[int]:
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with _quiet_stderr(), profile(activities=activities, profile_memory=True) as prof:
        result = thunk()
        synchronize(device)
    del result
    kind = "CUDA" if device.startswith("cuda") else "CPU"
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events = sorted((e for e in events if str(e.device_type()).endswith(kind)), key=lambda e: e.start_ns())
    return [event.nbytes() for event in events]


def _cuda_peak(thunk: Thunk) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = thunk()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del result
    return peak


def peak_memory(thunk: Thunk, device: str) -> Memory:
    """The peak of the allocations made by one call beyond those before it, and the peak of its temporaries.
    On CUDA the peak comes from the caching allocator's statistics, the rest from the profiler's memory events."""
    replayed = _replay(_profiled_deltas(thunk, device))
    return replayed._replace(peak=_cuda_peak(thunk)) if device.startswith("cuda") else replayed


Times = tuple[float, float]  # warm-up and block, in seconds


def timing_parser(
    module: str, doc: str, rounds: tuple[int, int], times: tuple[Times, Times]
) -> argparse.ArgumentParser:
    """The options every suite-wide timing script takes (--quick, --repeat, --layers, --statistic, --clock,
    --threads); `rounds` and `times` (warm-up and block) are the defaults of a full run and of a quick one."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 layers, fewer rounds")
    parser.add_argument(
        "--repeat", type=int, default=None, help=f"timed rounds (default {rounds[0]}, quick {rounds[1]})"
    )
    parser.add_argument("--layers", nargs="*", help="only these layers")
    parser.add_argument("--statistic", choices=("median", "min"), default="median")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.set_defaults(rounds=rounds, times=times)
    return parser


def timing_arguments(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed options, with the rounds, warm-up and block of a full or a quick run; sets the threads."""
    args = parser.parse_args(argv)
    args.repeat = args.repeat or args.rounds[args.quick]
    args.warmup, args.block = args.times[args.quick]
    if args.threads:
        torch.set_num_threads(args.threads)
    return args

"""Sampled training steps: `python -m bench.sampled_model [--rounds 25] [--device cpu|cuda] [--tree DIR] [--routes
[--profile]]`.

Whole models (float32, CPU, one thread, the process's CPU time): the forward and the backward pass of a training step
(cross-entropy) with the exact gradients and inside `tncompiler.sampled(model, p, over)`, each divided by the exact
step's own in the same round (every setting's block of steps timed in turn, in an order that rotates from round to
round; medians of the per-round ratios, after a warm-up). `--device cuda`: the models and data on the GPU
(`sampled`'s draws on the host, as with generator=None), TF32 off, wall time with `torch.cuda.synchronize()` before
and after each forward and backward pass (what `ratios`, which bench/gpu_check.py calls, measures there). Two CNNs:

- cifar: bench.models.cnn (three Conv2d, one of them without an input gradient, average pooling, one Linear) on
  3x32x32 images, batch 64;
- digits: the CNN of examples/train_kfac_digits.py and examples/train_sampled_digits.py (two Conv2d, one Linear) on
  1x8x8 images, batch 512.

Also the cost of entering and leaving a `sampled` block (microseconds, median of 200). `--tree DIR` imports tncompiler
from another checkout (e.g. a `git worktree` of an older commit) to time its `sampled` the same way. Set
`MALLOC_MMAP_THRESHOLD_=1073741824 MALLOC_TRIM_THRESHOLD_=4294967296` for steadier ratios (bench/README.md,
"Allocation and page faults").

`--routes` instead times, per layer type (dense, strided, grouped, depthwise, 1x1, transposed, 1-d, linear, and the
two models' convolutions), the alternatives for each part of a layer's backward pass: the input and bias gradients
(PyTorch's convolution_backward with output_mask (True, False, True), the input alone and a sum, the input gradient
per phase) and the weight gradient at p = 0.5 and 0.25 over the batch and over positions (the route `sampled` takes,
the compiled `sample(vjp(y, w), ...)` of `tncompiler.model.layers.sampled_source`, and the other candidates), each as
a ratio to PyTorch's call; `--profile` adds torch.profiler's kernel table of each route. bench/README.md ("Sampled
training") has the results and what they decided.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["cifar_cnn", "digits_cnn", "goals", "main", "ratios"]

Tensor = torch.Tensor
Thunk = Callable[[], object]
SETTINGS: list[tuple[str, float, str]] = [
    ("exact", 1.0, ""),
    ("p=1 positions", 1.0, "positions"),
    ("p=0.5 positions", 0.5, "positions"),
    ("p=0.5 batch", 0.5, "batch"),
    ("p=0.25 positions", 0.25, "positions"),
    ("p=0.25 batch", 0.25, "batch"),
    ("p=0.5 block", 0.5, "block"),
    ("p=0.25 block", 0.25, "block"),
    ("p->0 batch (floor)", 1e-9, "batch"),  # nothing kept: what the backward pass costs without weight gradients
]
WARMUP = 20  # steps per setting before timing
GOALS = {"p=1": 1.05, "p=0.5": 0.8, "p=0.25 positions": 0.65, "forward": 1.02}
Table = dict[str, tuple[float, float, float, float]]  # setting -> (fwd ms, bwd ms, fwd / exact, bwd / exact)


def cifar_cnn() -> nn.Module:
    """bench.models.cnn: the CIFAR-sized CNN of the KFAC benchmark (a copy: importing bench.models imports tncompiler
    before `--tree` can point it at another checkout)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(64, 128, 3, stride=2, padding=1), nn.ReLU(), nn.AvgPool2d(8), nn.Flatten(),
        nn.Linear(128, 10),
    )  # fmt: skip


def digits_cnn() -> nn.Module:
    """The CNN of examples/train_kfac_digits.py and examples/train_sampled_digits.py (a copy, for the same reason:
    that script imports tncompiler)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(16 * 3 * 3, 10),
    )  # fmt: skip


# the model, its input's shape, and how many steps make one timed block (about 0.1 s on one core)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], int]] = {
    "cifar": (cifar_cnn, (64, 3, 32, 32), 2),
    "digits": (digits_cnn, (512, 1, 8, 8), 20),
}
CUDA_STEPS = 20  # a GPU step takes a millisecond or two: blocks of at least this many steps there


def _steps(name: str, device: torch.device) -> int:
    return MODELS[name][2] if device.type == "cpu" else max(MODELS[name][2], CUDA_STEPS)


def _clock(device: torch.device) -> Callable[[], float]:
    """The process's CPU time on the CPU; on a GPU, wall time once the device has finished the work queued so far
    (the kernels run asynchronously: the CPU time of the host thread would only count their launches)."""
    if device.type == "cpu":
        return time.process_time

    def clock() -> float:
        torch.cuda.synchronize(device)
        return time.perf_counter()

    return clock


# --- whole models --------------------------------------------------------------------------------------------------


def _block(model: nn.Module, x: Tensor, labels: Tensor, steps: int) -> tuple[float, float]:
    """Seconds (`_clock`'s) of the forward passes and of the backward passes of `steps` training steps."""
    clock = _clock(x.device)
    forward = backward = 0.0
    for _ in range(steps):
        start = clock()
        loss = F.cross_entropy(model(x), labels)
        middle = clock()
        loss.backward()
        end = clock()
        model.zero_grad(set_to_none=True)
        del loss  # the step's graph is freed here, not in the next forward's time
        forward += middle - start
        backward += end - middle
    return forward, backward


def _setting_block(
    tncompiler: object, model: nn.Module, x: Tensor, labels: Tensor, steps: int, p: float, over: str
) -> tuple[float, float]:
    if not over:
        return _block(model, x, labels, steps)
    generator = torch.Generator().manual_seed(0)  # host draws, as with generator=None: a device one would sync
    with tncompiler.sampled(model, p=p, over=over, generator=generator):  # type: ignore[attr-defined]
        return _block(model, x, labels, steps)


def time_model(tncompiler: object, name: str, rounds: int, device: str = "cpu") -> Table:
    """Per setting: (forward ms, backward ms, forward / exact forward, backward / exact backward), medians."""
    build, shape, _ = MODELS[name]
    where = torch.device(device)
    steps = _steps(name, where)
    model = build().to(where)
    generator = torch.Generator().manual_seed(1)  # the same data on every device
    x = torch.randn(shape, generator=generator).to(where)
    labels = torch.randint(0, 10, (shape[0],), generator=generator).to(where)
    settings = []
    for setting in SETTINGS:  # warm up: the kernels' primitives for the shapes the draws give, plans
        try:
            _setting_block(tncompiler, model, x, labels, WARMUP, *setting[1:])
        except ValueError:  # an older `sampled` (--tree) without this `over`
            continue
        settings.append(setting)
    samples: dict[str, list[tuple[float, float]]] = {label: [] for label, _, _ in settings}
    for round_ in range(rounds):  # each round in another order: no setting always follows the same one
        order = settings[round_ % len(settings) :] + settings[: round_ % len(settings)]
        for label, p, over in order:
            samples[label].append(_setting_block(tncompiler, model, x, labels, steps, p, over))
    exact = samples["exact"]
    table = {}
    for label, values in samples.items():
        forward = statistics.median(f for f, _ in values) / steps * 1e3
        backward = statistics.median(b for _, b in values) / steps * 1e3
        forward_ratio = statistics.median(f / e for (f, _), (e, _) in zip(values, exact))
        backward_ratio = statistics.median(b / e for (_, b), (_, e) in zip(values, exact))
        table[label] = (forward, backward, forward_ratio, backward_ratio)
    return table


def entry_cost(tncompiler: object, name: str, calls: int = 200, device: str = "cpu") -> float:
    """Microseconds to enter and leave `sampled(model, p=0.5)` (median of `calls`)."""
    model = MODELS[name][0]().to(device)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        with tncompiler.sampled(model, p=0.5):  # type: ignore[attr-defined]
            pass
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def _load() -> tuple[float, float]:
    return os.getloadavg()[0], float(os.cpu_count() or 1)


def print_models(tncompiler: object, rounds: int, device: str = "cpu") -> dict[str, Table]:
    """Times and prints both models' tables (`time_model`) on `device`; returns them by model."""
    load, cores = _load()
    print(f"tncompiler from {tncompiler.__file__}")  # type: ignore[attr-defined]
    if device == "cpu":
        threads = f"{torch.get_num_threads()} thread(s)"
    else:
        threads = f"{torch.cuda.get_device_name(device)}, wall time, TF32 {_tf32()}"
    print(f"torch {torch.__version__}, {threads}, load average {load:.1f}, {cores:.0f} cores")
    tables = {}
    for name in MODELS:
        start = time.perf_counter()
        tables[name] = table = time_model(tncompiler, name, rounds, device)
        shape, steps = MODELS[name][1], _steps(name, torch.device(device))
        print(f"\n{name} (batch {shape[0]}), {rounds} rounds x {steps} steps, {time.perf_counter() - start:.0f} s")
        print(f"{'setting':<18} {'fwd ms':>8} {'bwd ms':>8} {'fwd/exact':>10} {'bwd/exact':>10}  goal")
        for label, (forward, backward, forward_ratio, backward_ratio) in table.items():
            row = f"{label:<18} {forward:8.2f} {backward:8.2f} {forward_ratio:10.2f} {backward_ratio:10.2f}"
            print(f"{row}  {_goal(label)}")
        print(f"entering and leaving sampled(): {entry_cost(tncompiler, name, device=device):.1f} us")
    load, _ = _load()
    print(f"\nload average at the end: {load:.1f}")
    return tables


def _tf32() -> str:
    on = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    return "on" if on else "off"


def ratios(device: str = "cpu", rounds: int = 25) -> dict[str, Table]:
    """The models' tables on `device` (printed as they come; TF32 turned off on a GPU), by model: per setting
    (fwd ms, bwd ms, fwd / exact, bwd / exact). Check them against their goals with `goals`."""
    import tncompiler

    if device != "cpu":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return print_models(tncompiler, rounds, device)


def goals(label: str) -> list[tuple[str, float]]:
    """The goals of a setting: (which ratio, "bwd" or "fwd", and the bound it should not exceed)."""
    if label == "exact" or label.startswith("p->0"):
        return []
    if label.startswith("p=1 "):
        return [("bwd", GOALS["p=1"]), ("fwd", GOALS["forward"])]
    if label.startswith("p=0.5"):
        return [("bwd", GOALS["p=0.5"])]
    return [("bwd", GOALS["p=0.25 positions"])] if "positions" in label else []


def _goal(label: str) -> str:
    return ", ".join(f"{ratio} <= {bound}" for ratio, bound in goals(label))


# --- routes per layer type -------------------------------------------------------------------------------------------

# name -> (layer, input shape): the layer types, at CPU-friendly sizes, and the two models' convolutions
ROUTE_LAYERS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "dense 3x3": (lambda: nn.Conv2d(32, 32, 3, padding=1), (32, 32, 32, 32)),
    "strided 3x3/2": (lambda: nn.Conv2d(64, 128, 3, stride=2, padding=1), (16, 64, 28, 28)),
    "grouped 3x3 g4": (lambda: nn.Conv2d(64, 64, 3, padding=1, groups=4), (32, 64, 16, 16)),
    "depthwise 3x3": (lambda: nn.Conv2d(64, 64, 3, padding=1, groups=64), (32, 64, 32, 32)),
    "1x1": (lambda: nn.Conv2d(64, 128, 1), (32, 64, 16, 16)),
    "1x1/2": (lambda: nn.Conv2d(64, 128, 1, stride=2), (16, 64, 28, 28)),
    "transposed 4x4/2": (lambda: nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), (32, 64, 16, 16)),
    "conv1d 5": (lambda: nn.Conv1d(32, 64, 5, padding=2), (32, 32, 256)),
    "linear": (lambda: nn.Linear(512, 256), (256, 512)),
    "cifar conv1": (lambda: nn.Conv2d(3, 32, 3, padding=1), (64, 3, 32, 32)),
    "cifar conv2": (lambda: nn.Conv2d(32, 64, 3, stride=2, padding=1), (64, 32, 32, 32)),
    "cifar conv3": (lambda: nn.Conv2d(64, 128, 3, stride=2, padding=1), (64, 64, 16, 16)),
    "digits conv1": (lambda: nn.Conv2d(1, 8, 3, padding=1), (512, 1, 8, 8)),
    "digits conv2": (lambda: nn.Conv2d(8, 16, 3, stride=2), (512, 8, 8, 8)),
}
_MASKS = {"input+bias": [True, False, True], "input": [True, False, False], "weight": [False, True, False]}
_BACKWARD = torch.ops.aten.convolution_backward.default


def _runs(kept: list[int]) -> list[tuple[int, int]]:
    """The kept entries as runs [start, stop) of consecutive ones."""
    runs: list[tuple[int, int]] = []
    for entry in kept:
        if runs and runs[-1][1] == entry:
            runs[-1] = (runs[-1][0], entry + 1)
        else:
            runs.append((entry, entry + 1))
    return runs


def _route_thunks(layer: nn.Module, x: Tensor, gy: Tensor, p: float, over: str) -> dict[str, Thunk]:
    """The alternatives for a sampled weight gradient at keep-probability p (each draws anew per call)."""
    from tncompiler.model import layers, sampling

    generator = torch.Generator().manual_seed(0)
    weight = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        rows = (gy.reshape(-1, gy.shape[-1]), x.reshape(-1, x.shape[-1]))
        return {"sampled: rows gathered, mm": lambda: sampling._linear_weight(*rows, weight, (p, generator))}
    plan = sampling._plan(layer, "layer", over)  # type: ignore[arg-type]
    assert isinstance(plan, sampling._ConvPlan)
    settings = plan.settings
    compiled = layers.compile_sampled(layer, over)  # type: ignore[arg-type]
    keywords = layers.size_keywords(compiled.vjp_w_sampled, layers.spec_of(layer).sizes(x))
    thunks: dict[str, Thunk] = {
        "sampled (kernel on gathered)": lambda: plan.weight_gradient(gy, x, weight, settings, (p, generator)),
        "compiled sample(vjp(y, w))": lambda: compiled.vjp_w_sampled(x, gy, p=p, generator=generator, **keywords),
    }
    if over == "batch":

        def runs() -> Tensor:  # views of runs of consecutive examples: no copies, a kernel call per run
            kept = sampling._keep(x.shape[0], p, generator).tolist()
            parts = [_BACKWARD(gy[a:b], x[a:b], weight, None, *settings, _MASKS["weight"])[1] for a, b in _runs(kept)]
            return torch.stack(parts).sum(0).mul_(1 / p) if parts else torch.zeros_like(weight)

        thunks["kernel per run of kept examples"] = runs
    elif not settings[3]:

        def masked() -> Tensor:  # the dropped rows of the output gradient zeroed: the full kernel
            kept = sampling._keep(gy.shape[2], p, generator)
            zeroed = torch.zeros_like(gy).index_copy_(2, kept, gy.index_select(2, kept))
            result: Tensor = _BACKWARD(zeroed, x, weight, None, *settings, _MASKS["weight"])[1]
            return result.mul_(1 / p)

        thunks["kernel on zeroed rows"] = masked
    return thunks


def _input_thunks(layer: nn.Module, x: Tensor, gy: Tensor) -> dict[str, Thunk]:
    """The input and bias gradients: PyTorch's call with output_mask (True, False, True), the input alone and a sum,
    and, for a strided convolution, the input gradient per phase and a sum, and what `sampled` chooses."""
    from tncompiler.model import sampling

    if isinstance(layer, nn.Linear):
        return {}
    plan = sampling._plan(layer, "layer", "batch")
    assert isinstance(plan, sampling._ConvPlan)
    weight, settings, sums = layer.weight.detach(), plan.settings, plan.sums
    bias = [weight.shape[1] if settings[3] else weight.shape[0]]
    thunks: dict[str, Thunk] = {
        "convolution_backward (T, F, T)": lambda: _BACKWARD(gy, x, weight, bias, *settings, _MASKS["input+bias"]),
        "(T, F, F) + sum": lambda: (_BACKWARD(gy, x, weight, None, *settings, _MASKS["input"]), gy.sum(sums)),
    }
    if plan.phased:
        thunks["phases + sum"] = lambda: (sampling._phases(gy, weight, settings, x), gy.sum(sums))
        thunks["sampled's choice + sum"] = lambda: (plan.input_gradient(gy, x, weight, settings), gy.sum(sums))
    return thunks


def _exact_weight(layer: nn.Module, x: Tensor, gy: Tensor) -> Thunk:
    if isinstance(layer, nn.Linear):
        rows = (gy.reshape(-1, gy.shape[-1]), x.reshape(-1, x.shape[-1]))
        return lambda: rows[0].t().mm(rows[1])
    from tncompiler.model import sampling

    plan = sampling._plan(layer, "layer", "batch")
    assert isinstance(plan, sampling._ConvPlan)
    weight = layer.weight.detach()
    return lambda: _BACKWARD(gy, x, weight, None, *plan.settings, _MASKS["weight"])


def _timed(thunks: dict[str, Thunk], rounds: int) -> dict[str, tuple[float, float]]:
    """(ms per call, ratio to the first thunk): medians over interleaved rounds of CPU time, after a warm-up long
    enough for the kernels to have built their primitives for the shapes the draws give."""
    from bench.measure import summarize, time_interleaved

    for thunk in thunks.values():
        for _ in range(30):
            thunk()
    samples = time_interleaved(thunks, "cpu", rounds, warmup_s=0.05, block_s=0.05, clock="cpu")
    times, ratios = summarize(samples)
    return {name: (times[name] * 1e3, 1 / ratios[name]) for name in thunks}


def _profile(thunk: Thunk) -> str:
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(10):
            thunk()
    return str(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=6))


def print_routes(rounds: int, show_profile: bool) -> None:
    """Per layer: the input-and-bias alternatives against PyTorch's call without the weight, and the weight-gradient
    alternatives at p = 0.5 and 0.25 against the exact weight gradient (time ratios, < 1 is faster)."""
    load, cores = _load()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average {load:.1f}, {cores:.0f} cores")
    for name, (build, shape) in ROUTE_LAYERS.items():
        torch.manual_seed(0)
        layer = build()
        x = torch.randn(shape)
        gy = torch.randn_like(layer(x)).detach()
        print(f"\n{name}: {layer}, input {tuple(shape)}")
        inputs = _input_thunks(layer, x, gy)
        if inputs:
            for route, (ms, ratio) in _timed(inputs, rounds).items():
                print(f"  input+bias       {route:<36} {ms:8.3f} ms  {ratio:5.2f}")
        for over in ("batch", "positions"):
            if isinstance(layer, nn.Linear) and over == "positions":
                continue
            for p in (0.5, 0.25):
                thunks = {"exact weight gradient": _exact_weight(layer, x, gy), **_route_thunks(layer, x, gy, p, over)}
                for route, (ms, ratio) in _timed(thunks, rounds).items():
                    print(f"  {over:<9} p={p:<4} {route:<36} {ms:8.3f} ms  {ratio:5.2f}")
                    if show_profile and route != "exact weight gradient":
                        print(_profile(thunks[route]))
    load, _ = _load()
    print(f"\nload average at the end: {load:.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.sampled_model", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--tree", help="import tncompiler from this checkout instead")
    parser.add_argument("--routes", action="store_true", help="time the routes per layer type instead")
    parser.add_argument("--profile", action="store_true", help="with --routes: torch.profiler's table per route")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the models run (not --routes)")
    args = parser.parse_args(argv)
    if args.tree:
        sys.path.insert(0, os.path.abspath(args.tree))
    if args.device == "cuda" and (args.routes or not torch.cuda.is_available()):
        parser.error("--device cuda needs a CUDA device, and --routes runs on the CPU only")
    torch.set_num_threads(1)
    if args.routes:
        print_routes(args.rounds, args.profile)
    else:
        ratios(args.device, args.rounds)


if __name__ == "__main__":
    main()

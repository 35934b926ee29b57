"""tnc's Opacus samplers against Opacus' own: `python -m bench.opacus_step [--quick] [--threads 1] [--clock cpu]`.

Float32, on the CPU. Two parts, each timed interleaved (`bench/measure.py`: medians over rounds, and the median of
the paired per-round ratios), each with its peak memory (the most the call holds at once beyond what existed before
it, its output included; `measure.peak_memory`, from the profiler's allocation events):

- per layer, batch 64: the grad sampler (`tncompiler.integrations.opacus.compute_grad_sample` against Opacus'
  unfold-based conv sampler, or torch.func for a transpose convolution, which is what Opacus runs for one) and the
  norm sampler (`compute_norm_sample` against what Opacus' fast gradient clipping does without it: its grad samples'
  norms, or its own Linear norm sampler). For nn.Linear the "grad" row times tnc's compiled `batch_grad_w` against
  Opacus' Linear sampler: the measurement behind leaving Opacus' in place.
- a whole DP-SGD step of a CIFAR-sized CNN (`bench.curvature_model.cifar_cnn`: three 3x3 convolutions with ReLU and
  max-pooling, two Linears) through `PrivacyEngine.make_private` (noise multiplier 1, max_grad_norm 1, cross-entropy
  mean), at batch 64 and 256: zero_grad, forward, backward, optimizer step, the gradient samples freed after; with
  `grad_sample_mode` "hooks" (standard clipping) and "ghost" (fast gradient clipping), with and without `register()`
  (toggled around each call of a tnc thunk), all four and a plain step without privacy timed in one interleaved
  group, each on its own copy of the model. Rows: each mode against Opacus' own in the same mode, and tnc's ghost
  step against Opacus' hooks step (its default), which clips the same way. `--bound` adds each mode with the
  convolutions' samplers replaced by free ones (zeros; wrong clipping, timing only): the most any conv sampler can
  save in the step.

Goals: tnc / Opacus ≤ 0.7 in time and ≤ 0.5 in peak memory. Before timing, every sampler's result is checked against
Opacus' (1e-4 relative), and each pair of steps' clipped gradients (noise off, same data) against each other; exit
status 1 on a mismatch. The machine these ran on is shared with other work: use `--clock cpu --threads 1`.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from opacus import PrivacyEngine
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.grad_sample.functorch import ft_compute_per_sample_gradient
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from opacus.grad_sample.linear import compute_linear_grad_sample, compute_linear_norm_sample
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bench.curvature_model import cifar_cnn
from bench.measure import peak_memory, summarize, time_interleaved, timing_arguments, timing_parser
from tncompiler.integrations import opacus as tnc_opacus
from tncompiler.model.curvature_text import curvature_functions, curvature_layout, norm_form
from tncompiler.model.layers import spec_of

__all__ = ["main"]

BATCH = 64
STEP_BATCHES = (64, 256)
GOALS = {"time": 0.7, "memory": 0.5}
TOLERANCE = 1e-4
MODES = ("hooks", "ghost")
Samples = dict[nn.Parameter, Tensor]
Times = dict[str, list[float]]
Sampler = Callable[[nn.Module, list[Tensor], Tensor], Samples]


@dataclass(frozen=True)
class Layer:
    name: str
    make: Callable[[], nn.Module]
    shape: tuple[int, ...]  # the input's, after the batch


LAYERS = (
    Layer("cifar.conv1", lambda: nn.Conv2d(3, 32, 3, padding=1), (3, 32, 32)),
    Layer("cifar.conv2", lambda: nn.Conv2d(32, 64, 3, padding=1), (32, 16, 16)),
    Layer("cifar.conv3", lambda: nn.Conv2d(64, 64, 3, padding=1), (64, 8, 8)),
    Layer("grouped", lambda: nn.Conv2d(64, 64, 3, padding=1, groups=4), (64, 16, 16)),
    Layer("depthwise", lambda: nn.Conv2d(64, 64, 3, padding=1, groups=64), (64, 16, 16)),
    Layer("tcn.conv1d", lambda: nn.Conv1d(64, 64, 5, padding=4, dilation=2), (64, 256)),
    Layer("video.conv3d", lambda: nn.Conv3d(8, 16, 3, padding=1), (8, 8, 16, 16)),
    Layer("dcgan.transpose2d", lambda: nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), (64, 8, 8)),
    Layer("cifar.fc1", lambda: nn.Linear(1024, 128), (1024,)),
    Layer("seq.linear", lambda: nn.Linear(64, 64), (512, 64)),
)
QUICK = ("cifar.conv2", "dcgan.transpose2d", "cifar.fc1", "seq.linear")


# --- per layer -------------------------------------------------------------------------------------------------------


def opacus_grads(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> Samples:
    """What Opacus runs for the layer without tnc."""
    if isinstance(layer, nn.Linear):
        return compute_linear_grad_sample(layer, activations, backprops)  # type: ignore[no-any-return]
    if isinstance(layer, nn.modules.conv._ConvTransposeNd):
        return ft_compute_per_sample_gradient(layer, activations, backprops)  # type: ignore[no-any-return]
    return compute_conv_grad_sample(layer, activations, backprops)  # type: ignore[no-any-return]


def opacus_norms(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> Samples:
    """What Opacus' fast gradient clipping does without tnc: its Linear norm sampler, else its grad samples' norms."""
    if isinstance(layer, nn.Linear):
        return compute_linear_norm_sample(layer, activations, backprops)  # type: ignore[no-any-return]
    return {p: g.flatten(1).norm(2, dim=-1) for p, g in opacus_grads(layer, activations, backprops).items()}


def tnc_linear_grads(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> Samples:
    """tnc's compiled per-example Linear gradients (not registered: Opacus keeps its own)."""
    x = activations[0]
    functions = curvature_functions(curvature_layout(spec_of(layer), x.shape, backprops.shape))
    result = {layer.weight: functions.batch_grad_w(x, backprops)}
    return result | ({layer.bias: functions.batch_grad_b(backprops)} if layer.bias is not None else {})


def _mismatch(ours: Samples, theirs: Samples) -> float:
    if list(ours) != list(theirs):
        return float("inf")
    return max(float((ours[p] - theirs[p]).abs().max() / theirs[p].abs().max()) for p in theirs)


def _layer_rows(layer: Layer, args: argparse.Namespace) -> tuple[list[str], bool]:
    torch.manual_seed(0)
    module = layer.make()
    x = torch.randn(BATCH, *layer.shape)
    with torch.no_grad():
        backprops = torch.randn(module(x).shape)
    linear = isinstance(module, nn.Linear)
    pairs: dict[str, tuple[Sampler, Sampler]] = {
        "grad": (tnc_linear_grads if linear else tnc_opacus.compute_grad_sample, opacus_grads),
        "norm": (tnc_opacus.compute_norm_sample, opacus_norms),
    }
    form = norm_form(curvature_layout(spec_of(module), x.shape, backprops.shape))
    rows, bad = [], False
    for op, (ours, theirs) in pairs.items():
        error = _mismatch(ours(module, [x], backprops), theirs(module, [x], backprops))
        bad |= error > TOLERANCE
        thunks = {"tnc": lambda f=ours: f(module, [x], backprops), "opacus": lambda f=theirs: f(module, [x], backprops)}
        label = f"{layer.name} {op}" + (f" ({form})" if op == "norm" else "")
        rows.append(_line(label, _measure(thunks, args), ("tnc", "opacus"), error, args.statistic))
    return rows, bad


def _measure(thunks: dict[str, Callable[[], object]], args: argparse.Namespace) -> tuple[Times, dict[str, int]]:
    """Seconds per call in each interleaved round, and the peak memory of one call, of each thunk."""
    samples = time_interleaved(thunks, "cpu", args.repeat, args.warmup, args.block, args.clock, budget_s=60.0)
    return samples, {name: peak_memory(thunk, "cpu").peak for name, thunk in thunks.items()}


def _line(
    label: str, measured: tuple[Times, dict[str, int]], pair: tuple[str, str], error: float, statistic: str
) -> str:
    """tnc's and Opacus' time, their paired ratio (`summarize`), peak memories and their ratio (none where Opacus'
    peak is under 64 KiB: the ratio of two outputs of a few hundred bytes says nothing)."""
    samples, peaks = measured
    ours, theirs = pair
    times, ratios = summarize({ours: samples[ours], theirs: samples[theirs]}, statistic)
    ratio = ratios[theirs]  # the first's time over the second's: tnc / Opacus
    memory = peaks[ours] / peaks[theirs] if peaks[theirs] >= 2**16 else None
    met = "met" if ratio <= GOALS["time"] and (memory is None or memory <= GOALS["memory"]) else "missed"
    shown = f"{memory:7.2f}" if memory is not None else f"{'-':>7}"
    return (
        f"{label:44} {times[ours] * 1e3:9.2f} {times[theirs] * 1e3:9.2f} {ratio:7.2f} "
        f"{peaks[ours] / 2**20:9.1f} {peaks[theirs] / 2**20:9.1f} {shown} {error:9.1e}  {met}"
    )


# --- a whole step ----------------------------------------------------------------------------------------------------


@dataclass
class Step:
    """One copy of the CNN made private in a mode; `__call__` runs one DP-SGD step and frees its samples."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    criterion: Callable[[Tensor, Tensor], Tensor]
    x: Tensor
    y: Tensor

    def __call__(self) -> None:
        self.criterion(self.model(self.x), self.y).backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)  # frees the gradient samples inside the timed call

    def gradients(self) -> list[Tensor]:
        """The gradients one step applies (call with noise off)."""
        self.criterion(self.model(self.x), self.y).backward()  # type: ignore[no-untyped-call]
        self.optimizer.step()
        found = [p.grad.detach().clone() for p in self.model.parameters() if p.grad is not None]
        self.optimizer.zero_grad(set_to_none=True)
        return found


def make_step(mode: str, batch: int, noise: float = 1.0) -> Step:
    generator = torch.Generator().manual_seed(batch)
    x, y = torch.randn(batch, 3, 32, 32, generator=generator), torch.randint(0, 10, (batch,), generator=generator)
    model = cifar_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    criterion: Callable[[Tensor, Tensor], Tensor] = nn.CrossEntropyLoss()
    if mode == "plain":
        return Step(model, optimizer, criterion, x, y)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    made = PrivacyEngine().make_private(
        module=model, optimizer=optimizer, criterion=criterion, data_loader=loader, noise_multiplier=noise,
        max_grad_norm=1.0, poisson_sampling=False, grad_sample_mode=mode, noise_generator=generator,
    )  # fmt: skip
    return Step(made[0], made[1], made[2] if mode == "ghost" else criterion, x, y)


def with_tnc(step: Callable[[], object]) -> Callable[[], object]:
    def run() -> object:
        tnc_opacus.register()
        try:
            return step()
        finally:
            tnc_opacus.unregister()

    return run


def free_convolutions(step: Callable[[], object]) -> Callable[[], object]:
    """The step with Opacus' samplers for nn.Conv2d replaced by ones that cost nothing (zeros of the right shapes):
    not a sampler (its clipping is wrong), a bound on what any conv sampler can save in the step (`--bound`)."""

    def grads(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> Samples:
        return {p: backprops.new_zeros(len(backprops), *p.shape) for p in layer.parameters()}

    def norms(layer: nn.Module, activations: list[Tensor], backprops: Tensor) -> Samples:
        return {p: backprops.new_zeros(len(backprops)) for p in layer.parameters()}

    registries = ((GradSampleModule.GRAD_SAMPLERS, grads), (GradSampleModuleFastGradientClipping.NORM_SAMPLERS, norms))

    def run() -> object:
        saved = [registry.get(nn.Conv2d) for registry, _ in registries]
        for registry, free in registries:
            registry[nn.Conv2d] = free
        try:
            return step()
        finally:
            for (registry, _), before in zip(registries, saved):
                registry.pop(nn.Conv2d) if before is None else registry.__setitem__(nn.Conv2d, before)

    return run


def _gradient_error(ours: Callable[[], object], theirs: Callable[[], object]) -> float:
    found, expected = ours(), theirs()
    assert isinstance(found, list) and isinstance(expected, list)
    return max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(found, expected, strict=True))


def _step_rows(batch: int, args: argparse.Namespace) -> tuple[list[str], bool]:
    """Both modes with and without tnc, and a plain step, timed in one interleaved group; the clipped gradients
    (noise off) checked first: each mode against Opacus' own, and tnc's ghost against Opacus' hooks (the same
    clipping, so the same gradients)."""
    checks = {f"{who} {mode}": make_step(mode, batch, noise=0.0) for who in ("tnc", "opacus") for mode in MODES}
    gradients = {name: (with_tnc(step.gradients) if name.startswith("tnc") else step.gradients)
                 for name, step in checks.items()}  # fmt: skip
    pairs = [(f"tnc {mode}", f"opacus {mode}") for mode in MODES] + [("tnc ghost", "opacus hooks")]
    errors = {pair: _gradient_error(gradients[pair[0]], gradients[pair[1]]) for pair in pairs}
    thunks: dict[str, Callable[[], object]] = {}
    for mode in MODES:
        thunks[f"tnc {mode}"], thunks[f"opacus {mode}"] = with_tnc(make_step(mode, batch)), make_step(mode, batch)
    thunks["plain"] = make_step("plain", batch)
    if args.bound:
        thunks |= {f"free {mode}": free_convolutions(make_step(mode, batch)) for mode in MODES}
    measured = _measure(thunks, args)
    rows = [
        _line(f"step {ours.split()[1]} batch {batch}" if ours.split()[1] == theirs.split()[1]
              else f"step tnc ghost / Opacus hooks batch {batch}", measured, (ours, theirs), errors[ours, theirs],
              args.statistic)
        for ours, theirs in pairs
    ]  # fmt: skip
    if args.bound:
        rows += [_line(f"bound {mode}: free convs / Opacus", measured, (f"free {mode}", f"opacus {mode}"), 0.0,
                       args.statistic) for mode in MODES]  # fmt: skip
    plain = summarize({"plain": measured[0]["plain"]}, args.statistic)[0]["plain"]
    rows.append(f"{'':44} plain step {plain * 1e3:.2f} ms, {measured[1]['plain'] / 2**20:.1f} MiB")
    return rows, max(errors.values()) > TOLERANCE


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = timing_parser("bench.opacus_step", __doc__ or "", (9, 3), ((0.3, 0.1), (0.1, 0.05)))
    parser.add_argument("--no-steps", action="store_true", help="the per-layer rows only")
    parser.add_argument("--bound", action="store_true", help="also time the steps with free conv samplers")
    return timing_arguments(parser, argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    warnings.filterwarnings("ignore", message="Full backward hook")  # the first layer's input needs no grad
    warnings.filterwarnings("ignore", message="Secure RNG turned off")
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    print(f"Opacus samplers, float32, {torch.get_num_threads()} threads, {args.repeat} rounds ({args.clock}), "
          f"{args.statistic}s; goals: time ≤ {GOALS['time']}, peak memory ≤ {GOALS['memory']} of Opacus'")  # fmt: skip
    print(
        f"{'':44} {'tnc ms':>9} {'Opacus ms':>9} {'time':>7} {'tnc MiB':>9} {'Opac. MiB':>9} {'memory':>7} {'error':>9}"
    )
    chosen = [layer for layer in LAYERS if (not args.layers or layer.name in args.layers)]
    chosen = [layer for layer in chosen if not args.quick or layer.name in QUICK]
    bad = False
    for layer in chosen:
        rows, wrong = _layer_rows(layer, args)
        bad |= wrong
        print("\n".join(rows), flush=True)
    for batch in () if args.no_steps else (STEP_BATCHES[:1] if args.quick else STEP_BATCHES):
        rows, wrong = _step_rows(batch, args)
        bad |= wrong
        print("\n".join(rows), flush=True)
    if bad:
        print("MISMATCH against Opacus")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

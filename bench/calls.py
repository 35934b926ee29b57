"""The cost of a call: `python -m bench.calls [--quick] [--threads 1]`.

Two measurements of the generated forward pass with a bias, `y = x * Π.. * w + b`, against PyTorch's own call
`F.conv{N}d(x, w, b, ...)`, timed interleaved in this process (float32, CPU):

- the tiny call: batch 1, 3 -> 8 channels, 8x8, 3x3 kernel, where the Python cost of a call (argument checks, size
  bindings, the kernel's arguments) is all there is to time; once with every size in the file, once with the batch
  bound at call time, once with a group index g = 1 written out (`x[n, (g c), ..]`, `b[(g d)]`: the bias still goes
  to the kernel) (target: at most 1.3x F.conv2d);
- every layer of the suite with a bias added, where the kernel's time dominates (target: median at most 1.02x).

Results are checked against PyTorch first (1e-5 relative); exit status 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

import tncompiler
from bench.layers import LAYERS, QUICK, Layer
from bench.measure import summarize, time_interleaved, timing_arguments, timing_parser
from bench.ops import legs, make_inputs, tnd_source

__all__ = ["bias_source", "main"]

TOLERANCE = 1e-5
TINY_TARGET, LAYER_TARGET = 1.3, 1.02
TINY = """index {n}, c = 3, d = 8, i1 = 8, i2 = 8, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
input w[d, c, k1, k2]
input b[d]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]
"""

# The same call written with a group index of one group: the compiler drops size-1 legs, and the bias must still be
# passed to the kernel rather than added after it.
TINY_GROUP = """index n, g = 1, c = 3, d = 8, i1 = 8, i2 = 8, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, (g c), i1, i2]
input w[(g d), c, k1, k2]
input b[(g d)]
y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2] + b[(g d)]
"""


def bias_source(layer: Layer) -> str:
    """The suite's file for `layer` with a bias `b` and the forward pass with it, `yb`."""
    cout = "(g d)" if layer.groups > 1 else "d"
    o = ", ".join(legs("o", layer.dims))
    return tnd_source(layer) + f"input b[{cout}]\nyb[n, {cout}, {o}] = y[n, {cout}, {o}] + b[{cout}]\n"


def _native(layer: Layer) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    conv = getattr(F, f"conv{layer.dims}d")
    options = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}
    return lambda x, w, b: conv(x, w, b, **options)


def _ratio(ours: Callable[[], Tensor], theirs: Callable[[], Tensor], args: argparse.Namespace) -> tuple[float, float]:
    """(tnc / PyTorch, the relative error of tnc's result)."""
    with torch.no_grad():
        expected = theirs()
        error = float((ours() - expected).abs().max() / expected.abs().max().clamp_min(1e-30))
        samples = time_interleaved({"tnc": ours, "torch": theirs}, "cpu", args.repeat, args.warmup, args.block,
                                   args.clock)  # fmt: skip
    _, ratios = summarize(samples, args.statistic)
    return ratios["torch"], error


def tiny(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    generator = torch.Generator().manual_seed(0)
    x, w, b = (torch.randn(shape, generator=generator) for shape in ((1, 3, 8, 8), (8, 3, 3, 3), (8,)))
    results = {}
    sources = (("tiny, sizes fixed", TINY.format(n="n = 1")), ("tiny, batch open", TINY.format(n="n")),
               ("tiny, g = 1 written", TINY_GROUP))  # fmt: skip
    for label, text in sources:
        module = tncompiler.load_source(text, "tiny.tnd")
        results[label] = _ratio(lambda m=module: m.y(x, w, b), lambda: F.conv2d(x, w, b, padding=1), args)
    return results


def with_bias(layer: Layer, args: argparse.Namespace) -> tuple[float, float]:
    module = tncompiler.load_source(bias_source(layer), f"{layer.name}.bias.tnd")
    tensors = make_inputs(layer, "cpu")
    x, w = tensors["x"], tensors["w"]
    b = torch.randn(layer.c_out, generator=torch.Generator().manual_seed(1))
    native = _native(layer)
    return _ratio(lambda: module.yb(x, w, b), lambda: native(x, w, b), args)


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    return timing_arguments(timing_parser("bench.calls", __doc__ or "", (15, 5), ((0.1, 0.05), (0.05, 0.02))), argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    print(f"tnc / PyTorch per call, {torch.get_num_threads()} threads")
    errors: list[float] = []
    for label, (ratio, error) in tiny(args).items():
        print(f"{label:34} {ratio:6.3f}  (target <= {TINY_TARGET})")
        errors.append(error)
    layers = [layer for layer in (QUICK if args.quick else LAYERS) if not args.layers or layer.name in args.layers]
    ratios = []
    for layer in layers:
        ratio, error = with_bias(layer, args)
        print(f"{layer.name + ' + bias':34} {ratio:6.3f}", flush=True)
        ratios.append(ratio)
        errors.append(error)
    if ratios:
        median = statistics.median(ratios)
        verdict = "met" if median <= LAYER_TARGET else "missed"
        target = f"target <= {LAYER_TARGET}: {verdict}"
        print(f"forward with bias, median over {len(ratios)} layers: {median:.3f} ({target})")
    if max(errors) > TOLERANCE:
        print(f"MISMATCH against PyTorch: worst relative error {max(errors):.1e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

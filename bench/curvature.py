"""Curvature from repeated sub-networks against BackPACK: `python -m bench.curvature [--quick] [--threads 1]`.

For each layer of the suite, one `.tnd` file defines the per-sample weight Jacobian contracted with V columns of the
loss Hessian's square root (`J[v, n, d, c, k..] = s[v, n, d, o..] * x[n, c, i..] * Π..`, what BackPACK backpropagates
for DiagGGNExact), the GGN diagonal `diag = J ⊙ J` summed over v and n, the per-sample gradients `gn` and their Gram
matrix `G[n, m] = gn[n] · gn[m]`. Timed interleaved, in float32, against BackPACK 1.7's own routines for the same
quantities, given the same backpropagated tensors (so neither side pays for the rest of the backward pass):

- diag: `backpack.utils.conv.extract_weight_diagonal(module, unfold_input(module, x), S)` (DiagGGNExact's weight
  diagonal);
- G: `Conv{N}DDerivatives().param_mjp("weight", ..., sum_batch=False)` (BatchGrad's per-sample gradients), then the
  matrix product of their rows.

Reported per layer: tnc diag / tnc J (target: at most 1.3; both read two copies of J's network), and tnc / BackPACK
for diag and G. Results are checked against BackPACK first (1e-4 relative); exit status 1 on a mismatch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import types
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

import tncompiler
from bench.layers import LAYERS, QUICK, Layer
from bench.measure import summarize, time_interleaved, timing_arguments, timing_parser
from bench.ops import header, legs

__all__ = ["curvature_source", "main"]

CLASSES = 10  # V: the columns of the loss Hessian's square root (cross-entropy over 10 classes)
TOLERANCE = 1e-4
TARGET = 1.3  # diag / J


def curvature_source(layer: Layer) -> str:
    """J, its GGN diagonal, the per-sample gradients and their Gram matrix for `layer`."""
    i, o, k = (", ".join(legs(prefix, layer.dims)) for prefix in "iok")
    cin, cout = ("(g c)", "(g d)") if layer.groups > 1 else ("c", "d")
    grouped = "g, d" if layer.groups > 1 else "d"
    patterns = " * ".join(f"p{a}(i{a}, o{a}, k{a})" for a in range(1, layer.dims + 1))
    lines = header(layer) + [
        f"index v = {CLASSES}",
        "index m = n",
        f"input x[n, {cin}, {i}]",
        f"input s[v, n, {cout}, {o}]",
        f"input grad_y[n, {cout}, {o}]",
        f"J[v, n, {grouped}, c, {k}] = s[v, n, {cout}, {o}] * x[n, {cin}, {i}] * {patterns}",
        f"diag[{cout}, c, {k}] = J[v, n, {grouped}, c, {k}] * J[v, n, {grouped}, c, {k}]",
        f"gn[n, {grouped}, c, {k}] = grad_y[n, {cout}, {o}] * x[n, {cin}, {i}] * {patterns}",
        f"G[n, m] = gn[n, {grouped}, c, {k}] * gn[m, {grouped}, c, {k}]",
    ]
    return "\n".join(lines) + "\n"


def _module(layer: Layer) -> torch.nn.Module:
    conv = getattr(torch.nn, f"Conv{layer.dims}d")
    return conv(
        layer.c_in, layer.c_out, layer.kernel, layer.stride, layer.padding, layer.dilation, layer.groups, bias=False
    )


def _inputs(layer: Layer, seed: int = 0) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "x": (layer.batch, layer.c_in, *layer.size),
        "s": (CLASSES, layer.batch, layer.c_out, *layer.output),
        "grad_y": (layer.batch, layer.c_out, *layer.output),
    }
    return {name: torch.randn(shape, generator=generator) for name, shape in shapes.items()}


def _backpack(layer: Layer, tensors: dict[str, Tensor]) -> dict[str, Callable[[], Tensor]]:
    """BackPACK's routines for the GGN diagonal and the per-sample gradients (then their Gram matrix)."""
    from backpack.core.derivatives import conv1d, conv2d, conv3d
    from backpack.utils.conv import extract_weight_diagonal, unfold_input

    module = _module(layer)
    x, s, grad_y = tensors["x"], tensors["s"], tensors["grad_y"]
    module.input0, module.output = x, torch.empty(grad_y.shape)  # what BackPACK's forward hook stores
    derivatives = {1: conv1d.Conv1DDerivatives, 2: conv2d.Conv2DDerivatives, 3: conv3d.Conv3DDerivatives}[layer.dims]()

    def diag() -> Tensor:
        return extract_weight_diagonal(module, unfold_input(module, x), s)

    def gram() -> Tensor:
        rows = derivatives.param_mjp("weight", module, None, (grad_y,), grad_y, sum_batch=False).flatten(1)
        return rows @ rows.T

    return {"diag": diag, "G": gram}


def _tnc(module: types.ModuleType, tensors: dict[str, Tensor]) -> dict[str, Callable[[], Tensor]]:
    x, s, grad_y = tensors["x"], tensors["s"], tensors["grad_y"]
    return {"J": lambda: module.J(x, s), "diag": lambda: module.diag(x, s), "G": lambda: module.G(x, grad_y)}


def _error(result: Tensor, expected: Tensor) -> float:
    return float((result.reshape(expected.shape) - expected).abs().max() / expected.abs().max().clamp_min(1e-30))


def bench_layer(layer: Layer, args: argparse.Namespace) -> dict[str, float]:
    """diag/J, diag vs BackPACK and G vs BackPACK (median ratios over rounds), and the worst error."""
    module = tncompiler.load_source(curvature_source(layer), f"{layer.name}.curvature.tnd")
    tensors = _inputs(layer)
    ours, theirs = _tnc(module, tensors), _backpack(layer, tensors)
    with torch.no_grad():
        error = max(_error(ours[name](), theirs[name]()) for name in ("diag", "G"))
        timed = {"J": ours["J"], "diag": ours["diag"], "backpack diag": theirs["diag"]}
        samples = time_interleaved(timed, "cpu", args.repeat, args.warmup, args.block, args.clock)
        gram = time_interleaved(
            {"G": ours["G"], "backpack G": theirs["G"]}, "cpu", args.repeat, args.warmup, args.block, args.clock
        )
    # summarize's ratios are the first thunk's time over each one's: diag over J, tnc over BackPACK
    _, over_j = summarize({"diag": samples["diag"], "J": samples["J"]}, args.statistic)
    _, diag = summarize({"diag": samples["diag"], "backpack": samples["backpack diag"]}, args.statistic)
    _, g = summarize({"G": gram["G"], "backpack": gram["backpack G"]}, args.statistic)
    return {"diag/J": over_j["J"], "diag": diag["backpack"], "G": g["backpack"], "error": error}


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    return timing_arguments(timing_parser("bench.curvature", __doc__ or "", (9, 3), ((0.05, 0.02), (0.02, 0.01))), argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    layers = [layer for layer in (QUICK if args.quick else LAYERS) if not args.layers or layer.name in args.layers]
    print(f"GGN diagonal and Gram matrix, V = {CLASSES}: {len(layers)} layers, {torch.get_num_threads()} threads")
    print(f"{'layer':24} {'diag/J':>8} {'diag tnc/BackPACK':>18} {'G tnc/BackPACK':>15} {'error':>9}", flush=True)
    rows = {}
    for layer in layers:
        rows[layer.name] = row = bench_layer(layer, args)
        print(f"{layer.name:24} {row['diag/J']:8.2f} {row['diag']:18.2f} {row['G']:15.2f} {row['error']:9.1e}")
    for key, label in (("diag/J", "diag / J"), ("diag", "diag tnc / BackPACK"), ("G", "G tnc / BackPACK")):
        values = [row[key] for row in rows.values()]
        print(f"median {label}: {statistics.median(values):.2f} (worst {max(values):.2f})")
    worst = max(row["diag/J"] for row in rows.values())
    print(f"target diag / J <= {TARGET}: {'met' if worst <= TARGET else 'missed'} (worst {worst:.2f})")
    bad = [name for name, row in rows.items() if row["error"] > TOLERANCE]
    if bad:
        print(f"MISMATCH against BackPACK: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

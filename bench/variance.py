"""Variance of the two tensor-dropout estimators: `python -m bench.variance [--quick] [--draws D]`.

For each layer of the suite and each sampled index (o1, the first spatial output axis, and n, the batch), the sampled
weight VJP with Bernoulli keeps at p = 0.5 (`sample(..., p=0.5)`) and with a fixed budget of K = round(|c| / 2)
entries (`sample(..., count=K)`), drawn D times each (float64). Reported: each estimator's total variance (the sum
over the weight's entries of the variance over draws), as a fraction of the exact VJP's squared norm, and the ratio
count / Bernoulli; next to them, the same quantities from the formulas of docs/language.md ("Variance: count=
against Bernoulli"), computed from the per-entry terms z_j (the weight VJP of the rows of grad_y at entry j alone):

    Var T_p = (1/p − 1) Σ_j |z_j|²          Var T_K = N (N − K) / K · 1/(N − 1) Σ_j |z_j − z̄|²

With random inputs (the default) the terms z_j are nearly orthogonal with a mean near zero, and the two estimators
tie; `--positive` takes |x| and |grad_y| (activations after a ReLU, a loss pushing every output one way), where the
terms share a direction and the fixed budget removes most of the variance.

A measured variance more than 20 % from its formula (D = 400: a few standard errors) is reported as a mismatch, exit
status 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import types
from collections.abc import Sequence

import torch
from torch import Tensor

import tncompiler
from bench.layers import LAYERS, QUICK, Layer
from bench.ops import make_inputs, native_weight_vjp, tnd_source

__all__ = ["formulas", "main", "measured"]

P = 0.5
TOLERANCE = 0.2  # relative, measured variance against its formula


def _source(layer: Layer, count: dict[str, int]) -> str:
    lines = [tnd_source(layer).rstrip("\n")]
    for index, k in count.items():
        lines.append(f"bernoulli_{index} = sample(vjp(y, w), index={index}, p={P})")
        lines.append(f"fixed_{index} = sample(vjp(y, w), index={index}, count={k})")
    return "\n".join(lines) + "\n"


def _axis(index: str) -> int:
    return 0 if index == "n" else 2


def terms(layer: Layer, tensors: dict[str, Tensor], index: str) -> Tensor:
    """z_j, one row per entry j of `index`: the weight VJP of grad_y restricted to that entry (flattened)."""
    grad_y, axis = tensors["grad_y"], _axis(index)
    rows = []
    for j in range(grad_y.shape[axis]):
        alone = torch.zeros_like(grad_y)
        alone.narrow(axis, j, 1).copy_(grad_y.narrow(axis, j, 1))
        rows.append(native_weight_vjp(layer, tensors["x"], tensors["w"].shape, alone).flatten())
    return torch.stack(rows)


def formulas(z: Tensor, k: int) -> tuple[float, float]:
    """(Var T_p at p = P, Var T_K) summed over the weight's entries, from the per-entry terms z [N, entries]."""
    n = z.shape[0]
    bernoulli = (1 / P - 1) * float((z**2).sum())
    fixed = n * (n - k) / k * float(((z - z.mean(0)) ** 2).sum()) / (n - 1)
    return bernoulli, fixed


def measured(module: types.ModuleType, function: str, tensors: dict[str, Tensor], draws: int) -> float:
    """The total variance over `draws` calls of the sampled function."""
    generator = torch.Generator().manual_seed(0)
    f = getattr(module, function)
    samples = torch.stack([f(tensors["x"], tensors["grad_y"], generator=generator).flatten() for _ in range(draws)])
    return float(samples.var(0).sum())


def _arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.variance", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="4 layers")
    parser.add_argument("--draws", type=int, default=400, help="calls per estimator")
    parser.add_argument("--layers", nargs="*", help="only these layers")
    parser.add_argument("--positive", action="store_true", help="|x| and |grad_y|: terms that share a direction")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments(argv)
    layers = [layer for layer in (QUICK if args.quick else LAYERS) if not args.layers or layer.name in args.layers]
    data = "|x|, |grad_y|" if args.positive else "random x, grad_y"
    print(f"variance / |exact|², p = {P} against count = round(N/2), {args.draws} draws each (float64, {data})")
    print(f"{'layer':22} {'index':5} {'N':>4} {'K':>4} {'Bernoulli':>10} {'count':>10} {'ratio':>7}   formula ratio")
    ratios, mismatches = [], 0
    for layer in layers:
        tensors = {name: t.double() for name, t in make_inputs(layer, "cpu").items()}
        if args.positive:
            tensors = {name: t.abs() for name, t in tensors.items()}
        sizes = {"o1": layer.output[0], "n": layer.batch}
        count = {index: max(1, round(size * P)) for index, size in sizes.items()}
        module = tncompiler.load_source(_source(layer, count), f"{layer.name}.tnd")
        exact = float((native_weight_vjp(layer, tensors["x"], tensors["w"].shape, tensors["grad_y"]) ** 2).sum())
        for index, k in count.items():
            expected = formulas(terms(layer, tensors, index), k)
            got = (
                measured(module, f"bernoulli_{index}", tensors, args.draws),
                measured(module, f"fixed_{index}", tensors, args.draws),
            )
            off = [abs(g / e - 1) for g, e in zip(got, expected) if e > 0]
            flag = "" if all(o <= TOLERANCE for o in off) else "  MISMATCH"
            mismatches += bool(flag)
            ratio = got[1] / got[0]
            ratios.append(ratio)
            print(
                f"{layer.name:22} {index:5} {sizes[index]:4} {k:4} {got[0] / exact:10.4f} {got[1] / exact:10.4f} "
                f"{ratio:7.3f}   {expected[1] / expected[0]:7.3f}{flag}",
                flush=True,
            )
    print(
        f"count / Bernoulli variance: median {statistics.median(ratios):.3f}, range {min(ratios):.3f}–{max(ratios):.3f}"
    )
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())

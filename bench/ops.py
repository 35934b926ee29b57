"""The benchmarked operations: the `.tnd` text tnc compiles for a layer, and the reference implementations.

For a layer, `tnd_source` writes one file with every operation as a definition or derived diagram:

    y  = the convolution (no bias)          gx = vjp(y, x)          gw = vjp(y, w)
    u  = the unfolded input (im2col)        A  = kfac(y, w)         Ar = kfac(y, w, approx=reduce)
    gw_o1_p50, gw_o1_p25 = sample(vjp(y, w), index=o1, p=...)   tensor dropout on the first spatial output axis
    gw_n_p50,  gw_n_p25  = sample(vjp(y, w), index=n,  p=...)   tensor dropout on the batch

Sampling o1 is the paper's spatial tensor dropout (Dangel 2024, sec. 5: sampling a summed spatial axis of the weight
VJP); sampling n is the batch variant of the same estimator. `references` builds, for each operation, the callables
it is timed against: "native" (PyTorch's kernels), "einconv" (einconv's einsum expressions, evaluated with
torch.einsum, operands built once like tnc's cached patterns), "unfold" (im2col with F.unfold or unfoldNd, then a
matrix product; scaled like tnc: KFC 1/N, reduce 1/(N P^2) on position sums) and "exact" (tnc's exact weight VJP,
for the sampled ones).
"""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torch.nn.grad as torch_grad
import unfoldNd
from einconv.expressions import (
    convNd_forward,
    convNd_input_vjp,
    convNd_kfac_reduce,
    convNd_kfc,
    convNd_unfold,
    convNd_weight_vjp,
)

from bench.layers import Layer

__all__ = [
    "OPS",
    "Op",
    "Thunk",
    "header",
    "legs",
    "make_inputs",
    "references",
    "sampled_reference",
    "tnc_thunk",
    "tnd_source",
]

Thunk = Callable[[], torch.Tensor]
Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Op:
    """A benchmarked operation: the tnc function, and the reference its target is measured against."""

    name: str
    function: str  # the generated function's name
    target: str  # the reference for the ratio target
    p: float = 1.0  # keep-probability of a sampled op (for count=, the expected fraction kept)
    index: str = ""  # the sampled index
    count: bool = False  # sample(..., count=K) with K = round(p |index|): exactly K entries, not each with p

    def budget(self, layer: Layer) -> int:
        """K of a count= op on `layer`: p of the sampled index's entries, at least one."""
        size = layer.batch if self.index == "n" else layer.output[0]
        return max(1, round(self.p * size))

    def sample_text(self, layer: Layer) -> str:
        """The keyword of the sample() call."""
        return f"count={self.budget(layer)}" if self.count else f"p={self.p}"


OPS: tuple[Op, ...] = (
    Op("forward", "y", "native"),
    Op("input_vjp", "gx", "native"),
    Op("weight_vjp", "gw", "native"),
    Op("unfold", "u", "unfold"),
    Op("kfc", "A", "unfold"),
    Op("kfac_reduce", "Ar", "unfold"),
    Op("sampled_o1_p0.5", "gw_o1_p50", "exact", 0.5, "o1"),
    Op("sampled_o1_p0.25", "gw_o1_p25", "exact", 0.25, "o1"),
    Op("sampled_n_p0.5", "gw_n_p50", "exact", 0.5, "n"),
    Op("sampled_n_p0.25", "gw_n_p25", "exact", 0.25, "n"),
    Op("sampled_o1_count0.5", "gw_o1_c50", "exact", 0.5, "o1", count=True),
    Op("sampled_n_count0.5", "gw_n_c50", "exact", 0.5, "n", count=True),
)


# --- the .tnd text ---------------------------------------------------------------------------------------------------


def legs(prefix: str, dims: int) -> list[str]:
    return [f"{prefix}{axis + 1}" for axis in range(dims)]


def header(layer: Layer, open_sizes: str = "") -> list[str]:
    """Index and pattern declarations; `open_sizes` "spatial" leaves the spatial sizes open too (bound from the
    arguments at call time), "channels" the channel and spatial sizes: only groups and kernel sizes stay."""
    lines = [f"# {layer.name}: {layer.origin}", "index n"]
    c_in, c_out = layer.c_in // layer.groups, layer.c_out // layer.groups
    c, d = ("c", "d") if open_sizes == "channels" else (f"c = {c_in}", f"d = {c_out}")
    lines.append(f"index g = {layer.groups}, {c}, {d}" if layer.groups > 1 else f"index {c}, {d}")
    sizes = [i if open_sizes else f"{i} = {size}" for i, size in zip(legs("i", layer.dims), layer.size)]
    sizes += [f"{k} = {size}" for k, size in zip(legs("k", layer.dims), layer.kernel)]
    lines.append("index " + ", ".join(sizes))
    for axis in range(layer.dims):
        hyper = f"stride={layer.stride[axis]}, padding={layer.padding[axis]}, dilation={layer.dilation[axis]}"
        lines.append(f"pattern p{axis + 1}(i{axis + 1}, o{axis + 1}, k{axis + 1}) = conv({hyper})")
    return lines


def tnd_source(layer: Layer, kfac_grad: bool = False, open_sizes: str = "") -> str:
    """The `.tnd` file with every benchmarked operation for `layer` (and the output-gradient factors if asked);
    `open_sizes` ("spatial" or "channels") leaves more sizes open, as a file written for every input size would."""
    i, o, k = (", ".join(legs(prefix, layer.dims)) for prefix in "iok")
    cin, cout = ("(g c)", "(g d)") if layer.groups > 1 else ("c", "d")
    x, w = f"x[n, {cin}, {i}]", f"w[{cout}, c, {k}]"
    patterns = " * ".join(f"p{a}(i{a}, o{a}, k{a})" for a in range(1, layer.dims + 1))
    rows = ("(g c " if layer.groups > 1 else "(c ") + " ".join(legs("k", layer.dims)) + ")"
    lines = header(layer, open_sizes) + [
        f"input {x}",
        f"input {w}",
        f"y[n, {cout}, {o}] = {x} * {patterns} * {w}",
        "gx = vjp(y, x)",
        "gw = vjp(y, w)",
        f"u[n, {rows}, ({' '.join(legs('o', layer.dims))})] = {x} * {patterns}",
        "A = kfac(y, w, batch=n)",
        "Ar = kfac(y, w, batch=n, approx=reduce)",
    ]
    lines += [f"{op.function} = sample(vjp(y, w), index={op.index}, {op.sample_text(layer)})" for op in OPS if op.index]
    if kfac_grad:
        lines += ["B = kfac_grad(y, w, batch=n)", "Br = kfac_grad(y, w, batch=n, approx=reduce)"]
    return "\n".join(lines) + "\n"


# --- inputs and tnc calls --------------------------------------------------------------------------------------------


def make_inputs(layer: Layer, device: str, seed: int = 0) -> Tensors:
    """x, w and grad_y in float32 on `device`, from a fixed seed."""
    generator = torch.Generator().manual_seed(seed)
    shapes = {
        "x": (layer.batch, layer.c_in, *layer.size),
        "w": (layer.c_out, layer.c_in // layer.groups, *layer.kernel),
        "grad_y": (layer.batch, layer.c_out, *layer.output),
    }
    return {name: torch.randn(shape, generator=generator).to(device) for name, shape in shapes.items()}


def tnc_thunk(module: types.ModuleType, op: Op, tensors: Tensors, generator: torch.Generator | None = None) -> Thunk:
    """The generated function of `op`, with its arguments bound by name (and a generator for sampled ops)."""
    function = getattr(module, op.function)
    parameters = inspect.signature(function).parameters
    kwargs: dict[str, object] = {name: tensors[name] for name in parameters if name in tensors}
    if any(p.kind is p.KEYWORD_ONLY and p.name.startswith("i") for p in parameters.values()):
        # an input VJP with open spatial sizes takes them as keywords, as conv2d_input takes input_size
        spatial = tensors["x"].shape[2:]
        kwargs |= {f"i{axis + 1}": size for axis, size in enumerate(spatial) if f"i{axis + 1}" in parameters}
    if op.index:
        kwargs["generator"] = generator
    return functools.partial(function, **kwargs)


# --- references ------------------------------------------------------------------------------------------------------


def _hyper(layer: Layer) -> dict[str, object]:
    return {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation, "groups": layer.groups}


def _conv(layer: Layer) -> Callable[..., torch.Tensor]:
    return {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[layer.dims]


def _grad(layer: Layer, which: str) -> Callable[..., torch.Tensor]:
    return getattr(torch_grad, f"conv{layer.dims}d_{which}")  # type: ignore[no-any-return]


def native_weight_vjp(layer: Layer, x: torch.Tensor, w_shape: torch.Size, grad_y: torch.Tensor) -> torch.Tensor:
    return _grad(layer, "weight")(x, w_shape, grad_y, layer.stride, layer.padding, layer.dilation, layer.groups)


def _native(layer: Layer, op: Op, t: Tensors) -> Thunk | None:
    x, w, grad_y, h = t["x"], t["w"], t["grad_y"], _hyper(layer)
    if op.name == "forward":
        return lambda: _conv(layer)(x, w, None, **h)
    if op.name == "input_vjp":
        conv_input = _grad(layer, "input")
        return lambda: conv_input(x.shape, w, grad_y, layer.stride, layer.padding, layer.dilation, layer.groups)
    if op.name == "weight_vjp" or op.index:
        return lambda: native_weight_vjp(layer, x, w.shape, grad_y)
    return None


def unfold_input(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """im2col: [n, c_in * prod(kernel), positions]; F.unfold for 2-d, unfoldNd (one-hot convolution) otherwise."""
    h = {"dilation": layer.dilation, "padding": layer.padding, "stride": layer.stride}
    if layer.dims == 2:
        return F.unfold(x, layer.kernel, **h)
    return unfoldNd.unfoldNd(x, layer.kernel, **h)  # type: ignore[no-any-return]


def unfold_kfc(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """KFC (KFAC-expand) the standard way: unfold, then [g, in_features, (n P)] @ its transpose, / N."""
    n, g, f = x.shape[0], layer.groups, layer.in_features
    u = unfold_input(layer, x).reshape(n, g, f, -1).permute(1, 2, 0, 3).reshape(g, f, -1)
    return torch.bmm(u, u.transpose(1, 2)).div_(n)


def unfold_kfac_reduce(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """KFAC-reduce the standard way: unfold, average over positions, [g, in_features, n] @ its transpose, / N."""
    n, g, f = x.shape[0], layer.groups, layer.in_features
    mean = unfold_input(layer, x).reshape(n, g, f, -1).mean(-1).permute(1, 2, 0)
    return torch.bmm(mean, mean.transpose(1, 2)).div_(n)


def _unfold_based(layer: Layer, op: Op, t: Tensors) -> Thunk | None:
    x = t["x"]
    thunks = {
        "unfold": lambda: unfold_input(layer, x),
        "kfc": lambda: unfold_kfc(layer, x),
        "kfac_reduce": lambda: unfold_kfac_reduce(layer, x),
    }
    return thunks.get(op.name)


def _einconv_expression(layer: Layer, op: Op, t: Tensors) -> tuple[str, list[torch.Tensor], tuple[int, ...]] | None:
    x, w, v, g = t["x"], t["w"], t["grad_y"], layer.groups
    h = {"stride": layer.stride, "padding": layer.padding, "dilation": layer.dilation}
    if op.name == "forward":
        return convNd_forward.einsum_expression(x, w, groups=g, **h)  # type: ignore[no-any-return]
    if op.name == "input_vjp":
        return convNd_input_vjp.einsum_expression(w, v, layer.size, groups=g, **h)  # type: ignore[no-any-return]
    if op.name == "weight_vjp":
        return convNd_weight_vjp.einsum_expression(x, v, layer.kernel, groups=g, **h)  # type: ignore[no-any-return]
    if op.name == "unfold":
        return convNd_unfold.einsum_expression(x, layer.kernel, **h)  # type: ignore[no-any-return]
    if op.name in ("kfc", "kfac_reduce"):
        module = convNd_kfc if op.name == "kfc" else convNd_kfac_reduce
        return module.einsum_expression(x, layer.kernel, groups=g, **h)  # type: ignore[no-any-return]
    return None


def _einconv(layer: Layer, op: Op, t: Tensors) -> Thunk | None:
    expression = _einconv_expression(layer, op, t)
    if expression is None:
        return None
    equation, operands, shape = expression
    return lambda: torch.einsum(equation, *operands).reshape(shape)


def references(layer: Layer, op: Op, tensors: Tensors, exact: Thunk) -> dict[str, Thunk]:
    """Reference name -> callable for `op` on `layer`; `exact` is tnc's exact weight VJP (for sampled ops)."""
    found = {
        "native": _native(layer, op, tensors),
        "einconv": _einconv(layer, op, tensors),
        "unfold": _unfold_based(layer, op, tensors),
        "exact": exact if op.index else None,
    }
    return {name: thunk for name, thunk in found.items() if thunk is not None}


def sampled_reference(layer: Layer, op: Op, tensors: Tensors, seed: int) -> torch.Tensor:
    """The sampled weight VJP recomputed densely: grad_y masked along the sampled axis with the entries that a host
    generator seeded with `seed` keeps (drawn as tnc draws them: rand(size) < p, or the first K of randperm(size)),
    scaled by 1/p or size/K."""
    grad_y = tensors["grad_y"]
    axis = 0 if op.index == "n" else 2
    size = grad_y.shape[axis]
    generator = torch.Generator().manual_seed(seed)
    if op.count:
        keep = torch.zeros(size, dtype=torch.bool)
        keep[torch.randperm(size, generator=generator)[: op.budget(layer)]] = True
        scale = size / op.budget(layer)
    else:
        keep, scale = torch.rand(size, generator=generator) < op.p, 1 / op.p
    shape = [1] * grad_y.dim()
    shape[axis] = size
    masked = grad_y * keep.to(grad_y.device).view(shape).to(grad_y.dtype) * scale
    return native_weight_vjp(layer, tensors["x"], tensors["w"].shape, masked)

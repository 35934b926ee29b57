"""The `.tnd` text of a layer's curvature quantities (BackPACK's first- and second-order extensions), compiled.

For a layer y = x * Π * w (+ b), with the loss's gradient ĝ at its output and V columns s of the loss Hessian's square
root backpropagated to that output, every quantity is a network of x, the patterns and ĝ or s:

    batch_grad_w[n, w's legs]   = x[n, ..] · Π · ĝ[n, ..]                     (the weight VJP, n not summed)
    batch_l2_w_per_example[n]   = Σ batch_grad_w[n, ..]²                     (two copies of it)
    batch_l2_w_gram[n]          = Σ window_gram[n, P, Q] · grad_gram[n, P, Q]  (P, Q: pairs of output positions)
    sum_grad_squared_w[..]      = Σ_n batch_grad_w[n, ..]²
    grad_w[..]                  = Σ_n batch_grad_w[n, ..]                    (for the variance)
    columns_w[v, n, ..]         = x[n, ..] · Π · s[v, n, ..]                  (the GGN's rows, per example)
    diag_ggn_w[..]              = Σ_{v,n} columns_w[v, n, ..]²

and the bias's the same with x · Π left out (the output's positions summed). A squared norm Σ (x · Π · ĝ)² has two
forms: the per-example gradients squared, or the Gram matrices of the inputs' windows and of the output gradients
over pairs of output positions, Σ_{o,o'} (x_o · x_o')(ĝ_o · ĝ_o') (cheaper where there are few positions and many
channels). The compiler does not choose between them by itself: its share pass, which computes a repeated
sub-network once, compares costs before the fuse pass makes the Gram form's pattern pairs one constant, so it takes
the per-example gradients where the fused Gram form costs less than half (Conv2d(64, 64, 3) on 8x8 positions: 2.40M
against 1.05M multiply-adds per example). So the text writes both, `batch_l2_w_per_example` and the Gram form as
three diagrams (`window_gram`, `grad_gram`, and `batch_l2_w_gram` of their results; written as one definition it would
be the per-example form's network again), with the positions' sizes fixed (those of the recorded call; only the batch
n and the columns v stay open). `norm_costs` reads each form's multiply-adds from the compiler (what `tnc explain`
totals), `norm_form` picks the cheaper, and the text's last line names the choice and its counts.

The text is kept apart from `layer_source` (its sizes are fixed, the layer text's are open), so neither text nor
cache entry of the layer functions changes.
"""

from __future__ import annotations

import functools
import math
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import sympy

from tncompiler.api import build_program
from tncompiler.cost import evaluate
from tncompiler.driver import Compilation
from tncompiler.explain import costed_ops
from tncompiler.model.cache import load_compiled
from tncompiler.model.layers import LayerSpec, _comment, transpose_padding

__all__ = [
    "CurvatureLayout",
    "NormForm",
    "curvature_functions",
    "curvature_layout",
    "curvature_source",
    "norm_costs",
    "norm_form",
]

NormForm = Literal["per-example", "gram", "outer"]


@dataclass(frozen=True)
class CurvatureLayout:
    """What a layer's curvature text depends on: its spec and the sizes of one call's positions. `inputs` are the
    spatial sizes of the layer's input (a linear layer: the number of positions its extra axes hold, or none),
    `outputs` those of its output; `padding` the patterns' paddings as written (a transpose convolution's output
    padding depends on the call)."""

    spec: LayerSpec
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    padding: tuple[str, ...]

    def __post_init__(self) -> None:
        for size in (*self.inputs, *self.outputs):
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"tncompiler: layer {self.spec.title!r}: position size {size!r} is not positive")
        if self.spec.kind == "linear" and (len(self.inputs) > 1 or self.inputs != self.outputs):
            raise ValueError(f"tncompiler: layer {self.spec.title!r}: a linear layer has at most one positions size")


def curvature_layout(spec: LayerSpec, input_shape: Sequence[int], output_shape: Sequence[int]) -> CurvatureLayout:
    """The layout of a call with these input and output shapes (the batch axis first). A linear layer's extra axes
    (between the batch and the features) are one positions axis; a transpose convolution's output padding is read
    from its output's size, so that a call with `output_size=` gets the patterns of that size."""
    if spec.kind == "linear":
        positions = math.prod(input_shape[1:-1])
        sizes = (positions,) if len(input_shape) > 2 else ()
        return CurvatureLayout(spec, sizes, sizes, ())
    inputs, outputs = tuple(int(s) for s in input_shape[2:]), tuple(int(s) for s in output_shape[2:])
    if spec.kind == "conv":
        return CurvatureLayout(spec, inputs, outputs, spec.padding)
    plain = spec.output_shape((0, 0, *inputs))  # the output sizes with no output padding beyond the module's own
    extras = tuple(o - p + e for o, p, e in zip(outputs, plain, spec.output_padding))
    padding = tuple(transpose_padding(spec, j, extra) for j, extra in enumerate(extras))
    return CurvatureLayout(spec, inputs, outputs, padding)


def _legs(prefix: str, dims: int) -> list[str]:
    return [f"{prefix}{j + 1}" for j in range(dims)]


@dataclass(frozen=True)
class _Legs:
    """The factors of a layer's networks as the text writes them."""

    x: str  # the input, with its positions
    windows: str  # x times the patterns ("" legs left for a linear layer)
    out: str  # the output's legs after the batch: channels and positions
    weight: str  # the weight's legs
    bias: str  # the bias's legs
    positions: tuple[str, ...]  # the output's position legs, summed for the bias


def _factors(layout: CurvatureLayout) -> _Legs:
    spec = layout.spec
    c, d = ("(g c)", "(g d)") if spec.groups > 1 else ("c", "d")
    if spec.kind == "linear":
        position = ", l" if layout.inputs else ""
        out = "l, d" if layout.inputs else "d"
        return _Legs(f"x[n{position}, c]", f"x[n{position}, c]", out, "d, c", "d", ("l",) if layout.inputs else ())
    dims = spec.dims
    ks = ", ".join(_legs("k", dims))
    patterns = " * ".join(f"p{j}(i{j}, o{j}, k{j})" for j in range(1, dims + 1))
    if spec.kind == "transpose":  # the input sits on the patterns' o legs, the output on the i legs
        x = f"x[n, {c}, {', '.join(_legs('o', dims))}]"
        outs = _legs("i", dims)
        return _Legs(x, f"{x} * {patterns}", f"{d}, {', '.join(outs)}", f"{c}, d, {ks}", d, tuple(outs))
    x = f"x[n, {c}, {', '.join(_legs('i', dims))}]"
    outs = _legs("o", dims)
    return _Legs(x, f"{x} * {patterns}", f"{d}, {', '.join(outs)}", f"{d}, c, {ks}", d, tuple(outs))


def _header(layout: CurvatureLayout) -> list[str]:
    spec = layout.spec
    sizes = " x ".join(map(str, layout.inputs)) or "none"
    lines = [
        _comment(spec.title),
        f"# written by tncompiler.curvature for input positions {sizes}; the batch n and the columns v are bound at "
        "call time",
        "index n".ljust(36) + "# the batch",
        "index v".ljust(36) + "# the columns of the loss Hessian's square root, backpropagated",
    ]
    group = [f"g = {spec.groups}"] if spec.groups > 1 else []
    lines.append(f"index {', '.join(group + [f'c = {spec.in_channels}', f'd = {spec.out_channels}'])}")
    if spec.kind == "linear":
        return lines + ([f"index l = {layout.inputs[0]}".ljust(36) + "# positions"] if layout.inputs else [])
    dims = spec.dims
    fixed = layout.inputs if spec.kind == "conv" else layout.outputs  # the patterns' i legs
    declared = [f"i{j + 1} = {size}" for j, size in enumerate(fixed)]
    if spec.kind == "transpose":  # its input's sizes sit on the o legs, which the patterns then check
        declared += [f"o{j + 1} = {size}" for j, size in enumerate(layout.inputs)]
    lines.append(f"index {', '.join(declared)}")
    lines.append("index " + ", ".join(f"k{j + 1} = {k}" for j, k in enumerate(spec.kernel)))
    for j in range(dims):
        settings = f"stride={spec.stride[j]}, padding={layout.padding[j]}, dilation={spec.dilation[j]}"
        lines.append(f"pattern p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1}) = conv({settings})")
    return lines


def _quantities(layout: CurvatureLayout) -> list[str]:
    f = _factors(layout)
    weight = f"[n, {f.weight}]"
    lines = [
        "",
        f"input {f.x}",
        f"input grad_y[n, {f.out}]".ljust(36) + "# the loss's gradient at the layer's output",
        f"input s[v, n, {f.out}]".ljust(36) + "# the columns, at the layer's output",
        "",
        "# per-example gradients (BackPACK's BatchGrad): the weight's VJP without the sum over the batch",
        f"batch_grad_w{weight} = {f.windows} * grad_y[n, {f.out}]",
        "# their squared norms (BatchL2Grad): the per-example gradients squared (computed once where that is cheaper)",
        f"batch_l2_w_per_example[n] = batch_grad_w{weight} * batch_grad_w{weight}",
        *_gram_lines(layout),
        f"sum_grad_squared_w[{f.weight}] = batch_grad_w{weight} * batch_grad_w{weight}",
        "# the gradient of the batch, for the variance: sum_grad_squared / N - (grad / N)^2, as BackPACK's Variance",
        f"grad_w[{f.weight}] = {f.windows} * grad_y[n, {f.out}]",
        "# the GGN's rows: the columns backpropagated to the weight, per example; the diagonal sums their squares",
        f"columns_w[v, n, {f.weight}] = {f.windows} * s[v, n, {f.out}]",
        f"diag_ggn_w[{f.weight}] = columns_w[v, n, {f.weight}] * columns_w[v, n, {f.weight}]",
    ]
    if layout.spec.bias:
        bias = f"[n, {f.bias}]"
        summed = "".join(f" * delta({leg})" for leg in f.positions)  # the output's positions, summed
        lines += [
            "",
            "# the bias's: the same with the output's positions summed in place of x and the patterns",
            f"batch_grad_b{bias} = grad_y[n, {f.out}]{summed}",
            f"batch_l2_b[n] = batch_grad_b{bias} * batch_grad_b{bias}",
            f"sum_grad_squared_b[{f.bias}] = batch_grad_b{bias} * batch_grad_b{bias}",
            f"grad_b[{f.bias}] = grad_y[n, {f.out}] * delta(n){summed}",
            f"columns_b[v, n, {f.bias}] = s[v, n, {f.out}]{summed}",
            f"diag_ggn_b[{f.bias}] = columns_b[v, n, {f.bias}] * columns_b[v, n, {f.bias}]",
        ]
    return lines


def _gram_lines(layout: CurvatureLayout) -> list[str]:
    """The squared norm's Gram form, Σ_{P,Q} window_gram[n, P, Q] · grad_gram[n, P, Q] over pairs of output
    positions P, Q (a linear layer: of its positions), as three diagrams: the two Gram matrices, and their product
    from them as inputs (written as one definition, the network would be the per-example form's own, which the
    share pass turns into per-example gradients, blind to the fused patterns that make the Gram form cheap)."""
    spec = layout.spec
    if spec.kind == "linear" and not layout.inputs:
        return []  # no positions: the norm of an outer product, which the per-example form already computes
    c, d, g = ("(g c)", "(g d)", "g, ") if spec.groups > 1 else ("c", "d", "")
    if spec.kind == "linear":
        pairs = "l, m"
        declared, windows = "index m = l", "x[n, l, c] * x[n, m, c]"
        grads = "grad_y[n, l, d] * grad_y[n, m, d]"
    else:
        dims = range(1, spec.dims + 1)
        # P: the output's positions (the patterns' o legs, a transpose convolution's i legs), Q a copy of them
        outer, inner = ("o", "i") if spec.kind == "conv" else ("i", "o")
        copy = {"o": "q", "i": "j"}
        ps, qs = [f"{outer}{j}" for j in dims], [f"{copy[outer]}{j}" for j in dims]
        xs, ys = [f"{inner}{j}" for j in dims], [f"{copy[inner]}{j}" for j in dims]
        pairs = ", ".join(ps + qs)
        declared = "index " + ", ".join(f"{copy[a]}{j} = {a}{j}" for a in ("i", "o") for j in dims)
        legs = {"o": ps, "i": xs} if spec.kind == "conv" else {"o": xs, "i": ps}
        copies = {"o": qs, "i": ys} if spec.kind == "conv" else {"o": ys, "i": qs}

        def window(names: dict[str, list[str]]) -> str:
            patterns = " * ".join(f"p{j}({names['i'][j - 1]}, {names['o'][j - 1]}, k{j})" for j in dims)
            return f"x[n, {c}, {', '.join(names[inner])}] * {patterns}"

        windows = f"{window(legs)} * {window(copies)}"
        grads = f"grad_y[n, {d}, {', '.join(ps)}] * grad_y[n, {d}, {', '.join(qs)}]"
    return [
        "# or through Gram matrices of the inputs' windows and of the output gradients over pairs of output positions",
        declared,
        f"window_gram[n, {g}{pairs}] = {windows}",
        f"grad_gram[n, {g}{pairs}] = {grads}",
        f"input wg[n, {g}{pairs}]".ljust(36) + "# window_gram's result",
        f"input gg[n, {g}{pairs}]".ljust(36) + "# grad_gram's result",
        f"batch_l2_w_gram[n] = wg[n, {g}{pairs}] * gg[n, {g}{pairs}]",
    ]


def _base_source(layout: CurvatureLayout) -> str:
    return "\n".join(_header(layout) + _quantities(layout)) + "\n"


def curvature_source(layout: CurvatureLayout) -> str:
    """The `.tnd` text of a layer call's curvature quantities: the positions fixed, the batch and columns open; its
    last line says which form of the weight's squared norm `curvature` calls (`norm_form`), and why."""
    return _base_source(layout) + _choice_comment(layout)


def _module_name(spec: LayerSpec) -> str:
    if spec.kind == "linear":
        return "linear_curvature"
    return f"conv{'transpose' if spec.kind == 'transpose' else ''}{spec.dims}d_curvature"


def curvature_functions(layout: CurvatureLayout) -> types.ModuleType:
    """The compiled module of `curvature_source(layout)`, cached in memory and on disk as the layers' are."""
    return load_compiled(curvature_source(layout), _module_name(layout.spec))


_GRAM_PARTS = ("window_gram", "grad_gram", "batch_l2_w_gram")


@functools.lru_cache(maxsize=1024)
def norm_costs(layout: CurvatureLayout) -> dict[str, int]:
    """Multiply-adds per example of each form of the weight's squared norm, as the compiler counts them (what
    `tnc explain` totals): "per-example" (`batch_l2_w_per_example`) and, with positions, "gram" (`window_gram`,
    `grad_gram` and `batch_l2_w_gram`). Computed once per layout in a process (a compile up to the schedule)."""
    source = _base_source(layout)
    compilation = Compilation(build_program(source, "curvature.tnd"), source)
    names = compilation.names.functions
    functions = {f.name: f for f in compilation.functions}

    def cost(diagram: str) -> int:
        total = sympy.Add(*[op.cost for op in costed_ops(functions[names[diagram]].body) if op.cost is not None])
        return evaluate(total, {})  # every open size counts 1: the batch n, the columns v

    costs = {"per-example": cost("batch_l2_w_per_example")}
    if "window_gram" in names:
        costs["gram"] = sum(cost(name) for name in _GRAM_PARTS)
    return costs


def norm_form(layout: CurvatureLayout) -> NormForm:
    """The form of the weight's squared norm that `curvature` calls for this layout: "gram" where the compiler counts
    fewer multiply-adds for it than for the per-example gradients, else "per-example"; "outer" for a linear layer
    without positions (one form: |x|²·|ĝ|², which the compiler finds in the per-example definition)."""
    costs = norm_costs(layout)
    if "gram" not in costs:
        return "outer"
    return "gram" if costs["gram"] < costs["per-example"] else "per-example"


def _choice_comment(layout: CurvatureLayout) -> str:
    costs, form = norm_costs(layout), norm_form(layout)
    if form == "outer":
        return "\n# batch_l2_w: batch_l2_w_per_example, the one form without positions (|x|^2 |grad_y|^2)\n"
    chosen = "window_gram, grad_gram, batch_l2_w_gram" if form == "gram" else "batch_l2_w_per_example"
    return (
        f"\n# batch_l2_w: {chosen}, chosen from these sizes: {costs['gram']} multiply-adds per example for the Gram "
        f"form against {costs['per-example']} for the per-example gradients\n"
    )

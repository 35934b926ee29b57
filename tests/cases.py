"""The test suite's case builder: one (transpose) convolution as a `.tnd` file with any of its sizes left open, every
operation the language derives from it, and an independent PyTorch reference for each.

One convention for transpose convolutions, PyTorch's: `spatial` is always the spatial shape of the argument x, and a
transpose convolution's output size follows from `output_padding`. References use only torch: F.conv*d and
F.conv_transpose*d, torch.autograd / torch.func for derivatives, im2col from F.pad and Tensor.unfold for unfold and
the KFAC factors, and for what PyTorch lacks (4-d and 5-d convolutions) one dense einsum over index patterns written
out entry by entry from their definition (`pattern_tensor`).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

import tncompiler

__all__ = [
    "GROUPED_CONV",
    "GROUPED_LAYER",
    "Conv",
    "NOTHING_OPEN",
    "OPEN_LEVELS",
    "OPS",
    "Padding",
    "Reference",
    "TOLERANCE",
    "all_arguments",
    "argument_list",
    "arguments",
    "assert_close",
    "call",
    "conv",
    "forward",
    "im2col",
    "keyword_sizes",
    "kfac",
    "linear_source",
    "load",
    "operations",
    "pad_pair",
    "pattern_reference",
    "pattern_tensor",
    "pattern_unfold",
    "random_tensors",
    "reference",
    "relative_error",
    "source",
    "statements",
    "unfold_source",
    "unfold_statement",
]

Padding = int | tuple[int, int] | str
Tensor = torch.Tensor
# Which sizes a file leaves open, from the batch alone to every index but the kernel's.
OPEN_LEVELS: dict[str, frozenset[str]] = {
    "batch": frozenset({"batch"}),
    "spatial": frozenset({"batch", "spatial"}),
    "channels": frozenset({"batch", "spatial", "channels"}),
}
NOTHING_OPEN: frozenset[str] = frozenset()  # every size declared, the batch too
# What a setting left out of a pattern line means (`conv()`).
DEFAULTS: dict[str, int] = {"stride": 1, "padding": 0, "dilation": 1}


@dataclass(frozen=True)
class Conv:
    """x [batch, groups·c_in, *spatial] -> y [batch, groups·c_out, *output]; a transpose convolution's weight is
    [groups·c_in, c_out, *kernel] as in PyTorch, else [groups·c_out, c_in, *kernel].

    The file writes the group index g only for more than one group, unless `group_index` asks for it (`(g c)` with
    g = 1); the settings named in `unwritten` are left out of its pattern lines, so that their defaults apply."""

    spatial: tuple[int, ...]
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[Padding, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    c_in: int = 2
    c_out: int = 2
    bias: bool = False
    transpose: bool = False
    output_padding: tuple[int, ...] = ()
    batch: int = 2
    group_index: bool = False
    unwritten: frozenset[str] = frozenset()

    @property
    def dims(self) -> int:
        return len(self.spatial)

    @property
    def grouped(self) -> bool:
        """Whether the file writes the group index g."""
        return self.groups > 1 or self.group_index

    def pads(self) -> tuple[tuple[int, int], ...]:
        """(left, right) per dimension; `same` puts the odd one on the right, as PyTorch does."""
        return tuple(pad_pair(p, d, k) for p, d, k in zip(self.padding, self.dilation, self.kernel))

    def pattern_in(self) -> tuple[int, ...]:
        """The sizes of the patterns' i legs (a transpose convolution's output)."""
        if not self.transpose:
            return self.spatial
        extra = self.output_padding or (0,) * self.dims
        return tuple(
            (o - 1) * s + d * (k - 1) + 1 - left - right + e
            for o, s, d, k, (left, right), e in zip(
                self.spatial, self.stride, self.dilation, self.kernel, self.pads(), extra
            )
        )

    def pattern_out(self) -> tuple[int, ...]:
        """The sizes of the patterns' o legs: O = floor((I + P_left + P_right − D(K − 1) − 1) / S) + 1."""
        if self.transpose:
            return self.spatial
        return tuple(
            (i + left + right - d * (k - 1) - 1) // s + 1
            for i, k, s, d, (left, right) in zip(self.spatial, self.kernel, self.stride, self.dilation, self.pads())
        )

    def output(self) -> tuple[int, ...]:
        return self.pattern_in() if self.transpose else self.pattern_out()

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """PyTorch's shapes of x, w (and b)."""
        g, n = self.groups, self.batch
        w = (g * self.c_in, self.c_out) if self.transpose else (g * self.c_out, self.c_in)
        shapes = {"x": (n, g * self.c_in, *self.spatial), "w": (*w, *self.kernel)}
        return shapes | ({"b": (g * self.c_out,)} if self.bias else {})

    def resized(self, batch: int, grow: int, channels: int = 0) -> Conv:
        """The same layer called with another batch, `grow` more entries on each spatial axis and `channels` more
        channels per group (a depthwise layer keeps one input channel per group)."""
        spatial = tuple(size + grow for size in self.spatial)
        c_in = self.c_in if self.c_in == 1 else self.c_in + channels
        return replace(self, batch=batch, spatial=spatial, c_in=c_in, c_out=self.c_out + channels)



# The sampling tests' layer: a grouped 2-d convolution with bias and its two VJPs; o1 = (10 + 2 - 3) // 2 + 1 = 5,
# o2 = 7 - 2 = 5 (dilation 2). GROUPED_CONV: its settings, as F.conv2d takes them.
GROUPED_LAYER = """
index n
index g = 2, c = 2, d = 3
index i1 = 10, i2 = 7, k1 = 3, k2 = 2
pattern p1(i1, o1, k1) = conv(stride=2, padding=1)
pattern p2(i2, o2, k2) = conv(dilation=2)
input x[n, (g c), i1, i2]
input w[(g d), c, k1, k2]
input b[(g d)]
y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2] + b[(g d)]
gw = vjp(y, w)
gx = vjp(y, x)
"""
GROUPED_CONV = {"stride": (2, 1), "padding": (1, 0), "dilation": (1, 2), "groups": 2}

def conv(
    spatial: Sequence[int],
    kernel: Sequence[int],
    *,
    stride: int | list[int] | None = 1,
    padding: Padding | list[Padding] | None = 0,
    dilation: int | list[int] | None = 1,
    output_padding: int | list[int] = 0,
    **options: int | bool,
) -> Conv:
    """A `Conv` whose per-dimension settings are one value for every dimension or a list; a setting given as None is
    left out of the file (the pattern's default applies)."""
    dims = len(spatial)
    assert len(kernel) == dims, f"{kernel} needs {dims} entries"
    given = {"stride": stride, "padding": padding, "dilation": dilation}
    unwritten = frozenset(name for name, value in given.items() if value is None)

    def each(value: object) -> tuple:  # type: ignore[type-arg]
        if isinstance(value, list):
            assert len(value) == dims, f"{value} needs {dims} entries"
            return tuple(value)
        return (value,) * dims

    settings = {name: each(DEFAULTS[name] if value is None else value) for name, value in given.items()}
    return Conv(
        tuple(spatial),
        tuple(kernel),
        **settings,
        output_padding=each(output_padding),
        unwritten=unwritten,
        **options,  # type: ignore[arg-type]
    )


def pad_pair(padding: Padding, dilation: int, kernel: int) -> tuple[int, int]:
    """(left, right) for one dimension's padding."""
    if padding == "valid":
        return 0, 0
    if padding == "same":
        total = dilation * (kernel - 1)
        return total // 2, total - total // 2
    return padding if isinstance(padding, tuple) else (int(padding), int(padding))


# --- the .tnd text -----------------------------------------------------------------------------------------------


def _legs(prefix: str, dims: int, separator: str = ", ") -> str:
    return separator.join(f"{prefix}{j + 1}" for j in range(dims))


def _sized(name: str, size: int, is_open: bool) -> str:
    return name if is_open else f"{name} = {size}"


def _declarations(case: Conv, open_: frozenset[str]) -> list[str]:
    spatial, channels = "spatial" in open_, "channels" in open_
    lines = [f"index {_sized('n', case.batch, 'batch' in open_)}"]
    group = [f"g = {case.groups}"] if case.grouped else []
    lines.append("index " + ", ".join(group + [_sized("c", case.c_in, channels), _sized("d", case.c_out, channels)]))
    sizes = [_sized(f"i{j + 1}", i, spatial) for j, i in enumerate(case.pattern_in())]
    if case.transpose:  # a transpose convolution declares its output (i) and input (o) sizes
        sizes += [_sized(f"o{j + 1}", o, spatial) for j, o in enumerate(case.pattern_out())]
    lines.append("index " + ", ".join(sizes + [f"k{j + 1} = {k}" for j, k in enumerate(case.kernel)]))
    return lines + [_pattern_line(case, j) for j in range(case.dims)]


def _pattern_line(case: Conv, j: int) -> str:
    pad = case.padding[j]
    padding = f"({pad[0]}, {pad[1]})" if isinstance(pad, tuple) else str(pad)
    values = {"stride": case.stride[j], "padding": padding, "dilation": case.dilation[j]}
    settings = ", ".join(f"{name}={value}" for name, value in values.items() if name not in case.unwritten)
    return f"pattern p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1}) = conv({settings})"


def _channels(case: Conv, name: str) -> str:
    return f"(g {name})" if case.grouped else name


def source(case: Conv, open_: frozenset[str] = OPEN_LEVELS["batch"], transforms: Sequence[str] = ()) -> str:
    """`y(x, w[, b])` of the case, then `transforms`, one statement each; `open_` says which sizes are left open."""
    c, d, dims = _channels(case, "c"), _channels(case, "d"), case.dims
    patterns = " * ".join(f"p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1})" for j in range(dims))
    ins, outs, ks = _legs("i", dims), _legs("o", dims), _legs("k", dims)
    if case.transpose:
        x, w, y = f"x[n, {c}, {outs}]", f"w[{c}, d, {ks}]", f"y[n, {d}, {ins}]"
    else:
        x, w, y = f"x[n, {c}, {ins}]", f"w[{d}, c, {ks}]", f"y[n, {d}, {outs}]"
    bias = f"b[{d}]"
    lines = _declarations(case, open_) + [f"input {x}", f"input {w}"] + ([f"input {bias}"] if case.bias else [])
    lines.append(f"{y} = {x} * {patterns} * {w}" + (f" + {bias}" if case.bias else ""))
    return "\n".join(lines + list(transforms)) + "\n"


def unfold_statement(case: Conv) -> str:
    """`u[n, (g c k...), (o...)] = x * patterns`: im2col, laid out as F.unfold lays it out."""
    dims = case.dims
    group = "g " if case.grouped else ""
    patterns = " * ".join(f"p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1})" for j in range(dims))
    return (
        f"u[n, ({group}c {_legs('k', dims, ' ')}), ({_legs('o', dims, ' ')})] = "
        f"x[n, {_channels(case, 'c')}, {_legs('i', dims)}] * {patterns}"
    )


def unfold_source(case: Conv, open_: frozenset[str] = OPEN_LEVELS["batch"]) -> str:
    """The unfold of the case's input alone: its declarations, `input x`, then `unfold_statement`."""
    assert not case.transpose
    x = f"x[n, {_channels(case, 'c')}, {_legs('i', case.dims)}]"
    return "\n".join([*_declarations(case, open_), f"input {x}", unfold_statement(case)]) + "\n"


def linear_source(transforms: Sequence[str] = (), batch: int | None = None, c: int = 4, d: int = 3) -> str:
    """A dense layer `y[n, d] = x[n, c] * w[d, c] + b[d]` (no index patterns), then the transforms; `batch` None
    leaves n open."""
    lines = ["index n" + (f" = {batch}" if batch else ""), f"index c = {c}, d = {d}",
             "input x[n, c]", "input w[d, c]", "input b[d]", "y[n, d] = x[n, c] * w[d, c] + b[d]"]  # fmt: skip
    return "\n".join(lines + list(transforms)) + "\n"


@functools.cache
def load(text: str) -> types.ModuleType:
    """Compile each `.tnd` text once per test session."""
    return tncompiler.load_source(text, "case.tnd")


def call(function: object, case: Conv, takes: tuple[str, ...], args: dict[str, Tensor]) -> Tensor:
    """`function` on the arguments it takes, with the keyword-only sizes its signature asks for, from `case`."""
    signature = inspect.signature(function)  # type: ignore[arg-type]
    sizes = keyword_sizes(case)
    keywords = {
        name: sizes[name] for name, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY and name in sizes
    }
    positional = [args[name] for name in takes if name in args]
    return function(*positional, **keywords)  # type: ignore[operator,no-any-return]


# --- references ----------------------------------------------------------------------------------------------------


def random_tensors(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> list[Tensor]:
    """Standard normal tensors of these shapes, in float64, the same for the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]


def arguments(case: Conv, seed: int = 0, dtype: torch.dtype = torch.float64) -> dict[str, Tensor]:
    """Random x, w (and b) in PyTorch's layouts, drawn in float64 and then converted to `dtype`."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
        for name, shape in case.shapes().items()
    }


def argument_list(
    case: Conv, batch: int | None = None, dtype: torch.dtype = torch.float64, seed: int = 0
) -> list[Tensor]:
    """x, w (and b), in the order the case's function takes them, for a call with this batch (else the case's)."""
    call = case if batch is None else replace(case, batch=batch)
    return list(arguments(call, seed, dtype).values())


def forward(case: Conv, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """The layer with torch.nn.functional (asymmetric padding by F.pad, or by cropping a transpose's result)."""
    with warnings.catch_warnings():  # PyTorch warns that padding="same" with an even kernel copies the input
        warnings.simplefilter("ignore", UserWarning)
        return _transpose(case, x, w, b) if case.transpose else _convolve(case, x, w, b)


def _convolve(case: Conv, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    function: Callable[..., Tensor] = getattr(F, f"conv{case.dims}d")
    pairs = case.pads()
    padding: str | tuple[int, ...]
    if len(set(case.padding)) == 1 and case.padding[0] in ("same", "valid"):
        padding = str(case.padding[0])  # PyTorch's own split of `same`
    elif all(left == right for left, right in pairs):
        padding = tuple(left for left, _ in pairs)
    else:  # F.pad lists the last dimension first
        x, padding = F.pad(x, [p for pair in reversed(pairs) for p in pair]), (0,) * case.dims
    return function(x, w, b, stride=case.stride, padding=padding, dilation=case.dilation, groups=case.groups)


def _transpose(case: Conv, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    function: Callable[..., Tensor] = getattr(F, f"conv_transpose{case.dims}d")
    pairs = case.pads()
    if all(left == right for left, right in pairs):
        padding = tuple(left for left, _ in pairs)
        extra = case.output_padding or (0,) * case.dims
        return function(
            x, w, b, stride=case.stride, padding=padding, output_padding=extra, dilation=case.dilation,
            groups=case.groups,
        )  # fmt: skip
    full = function(x, w, None, stride=case.stride, dilation=case.dilation, groups=case.groups)
    for axis, ((left, _), size) in enumerate(zip(pairs, case.pattern_in()), start=2):
        full = F.pad(full.movedim(axis, -1), [0, max(0, left + size - full.shape[axis])]).movedim(-1, axis)
        full = full.narrow(axis, left, size)
    return full if b is None else full + b.view(-1, *(1,) * case.dims)


def im2col(case: Conv, x: Tensor) -> Tensor:
    """[n, (g c k...), (o...)]: each output position's window of x, zero outside, from F.pad and Tensor.unfold."""
    padded = F.pad(x, [p for pair in reversed(case.pads()) for p in pair])
    windows = padded
    for j in range(case.dims):
        extent = case.dilation[j] * (case.kernel[j] - 1) + 1
        windows = windows.unfold(2 + j, extent, case.stride[j])[..., :: case.dilation[j]]
    # windows: [n, C, o1.., k1..] -> [n, C, k1.., o1..]
    dims = case.dims
    order = [0, 1, *range(2 + dims, 2 + 2 * dims), *range(2, 2 + dims)]
    windows = windows[(slice(None), slice(None), *(slice(0, o) for o in case.pattern_out()))]
    features = x.shape[1] * math.prod(case.kernel)
    return windows.permute(order).reshape(x.shape[0], features, math.prod(case.pattern_out()))


def _per_group(rows: Tensor, groups: int) -> Tensor:
    """[n, (g f), positions] -> [n, g, f, positions]."""
    return rows.reshape(rows.shape[0], groups, -1, rows.shape[-1])


def kfac(case: Conv, rows: Tensor, reduce: bool, input_side: bool) -> Tensor:
    """KFAC's factor from per-position feature rows [n, (g f), positions], scaled as tnc scales it (einconv)."""
    grouped = _per_group(rows, case.groups)
    n, positions = rows.shape[0], rows.shape[-1]
    if reduce:
        summed = grouped.sum(-1)
        factor = torch.einsum("ngf,ngh->gfh", summed, summed) / n
        factor = factor / positions**2 if input_side else factor
    else:
        factor = torch.einsum("ngfp,nghp->gfh", grouped, grouped) / n
    return factor if case.grouped else factor[0]


def pattern_tensor(
    in_size: int, out_size: int, kernel: int, stride: int, pad_left: int, dilation: int,
    dtype: torch.dtype = torch.float64,
) -> Tensor:  # fmt: skip
    """Π[i, o, k] = 1 iff i = o·S + k·D − P_left, written out entry by entry from the definition."""
    pattern = torch.zeros(in_size, out_size, kernel, dtype=dtype)
    for o, k in itertools.product(range(out_size), range(kernel)):
        i = o * stride + k * dilation - pad_left
        if 0 <= i < in_size:
            pattern[i, o, k] = 1
    return pattern


def _patterns(case: Conv, dtype: torch.dtype) -> list[Tensor]:
    """The case's index patterns, one per spatial dimension, from `pattern_tensor`."""
    sizes = zip(case.pattern_in(), case.pattern_out(), case.kernel, case.stride, case.pads(), case.dilation)
    return [pattern_tensor(i, o, k, s, left, d, dtype=dtype) for i, o, k, s, (left, _), d in sizes]


def pattern_reference(case: Conv, x: Tensor, w: Tensor, b: Tensor | None = None) -> Tensor:
    """The (transpose) convolution as one dense einsum over explicit index patterns, for any number of dims."""
    assert case.dims <= 7
    i, o, k = "ABCDEFG"[: case.dims], "HIJKLMN"[: case.dims], "OPQRSTU"[: case.dims]
    xs = x.reshape(x.shape[0], case.groups, case.c_in, *x.shape[2:])
    if case.transpose:  # x on the o legs, y on the i legs, w laid out [(g c), d, k...]
        ws = w.reshape(case.groups, case.c_in, case.c_out, *w.shape[2:])
        operands, result, sizes = f"ngc{o},gcd{k}", f"ngd{i}", case.pattern_in()
    else:
        ws = w.reshape(case.groups, case.c_out, case.c_in, *w.shape[2:])
        operands, result, sizes = f"ngc{i},gdc{k}", f"ngd{o}", case.pattern_out()
    equation = operands + "," + ",".join("".join(legs) for legs in zip(i, o, k)) + "->" + result
    y = torch.einsum(equation, xs, ws, *_patterns(case, x.dtype))
    y = y.reshape(x.shape[0], case.groups * case.c_out, *sizes)
    return y if b is None else y + b.view(-1, *(1,) * case.dims)


def pattern_unfold(case: Conv, x: Tensor) -> Tensor:
    """im2col from explicit index patterns, any number of dimensions: [n, channels, (k...), (o...)]."""
    letters_i, letters_o, letters_k = "ABCDE"[: case.dims], "FGHIJ"[: case.dims], "KLMNO"[: case.dims]
    operands = ",".join(["nc" + letters_i] + ["".join(legs) for legs in zip(letters_i, letters_o, letters_k)])
    unfolded = torch.einsum(f"{operands}->nc{letters_k}{letters_o}", x, *_patterns(case, x.dtype))
    return unfolded.flatten(2 + case.dims).flatten(2, 1 + case.dims)


@dataclass(frozen=True)
class Reference:
    """An operation: the statement that derives it, the arguments its function takes, and its reference."""

    name: str
    statement: str
    takes: tuple[str, ...]
    compute: Callable[[Conv, dict[str, Tensor]], Tensor]
    plain_only: bool = False  # unfold and KFAC: only for convolutions, not transpose ones


def _y(case: Conv, args: dict[str, Tensor]) -> Tensor:
    return forward(case, args["x"], args["w"], args.get("b"))


def _vjp(wrt: str) -> Callable[[Conv, dict[str, Tensor]], Tensor]:
    def compute(case: Conv, args: dict[str, Tensor]) -> Tensor:
        leaf = {**args, wrt: args[wrt].detach().requires_grad_()}
        (gradient,) = torch.autograd.grad(_y(case, leaf), leaf[wrt], args["grad_y"])
        return gradient

    return compute


def _jvp(wrt: str) -> Callable[[Conv, dict[str, Tensor]], Tensor]:
    def compute(case: Conv, args: dict[str, Tensor]) -> Tensor:
        def layer(value: Tensor) -> Tensor:
            return _y(case, {**args, wrt: value})

        return torch.func.jvp(layer, (args[wrt],), (args[f"tangent_{wrt}"],))[1]

    return compute


def _sliced_weight_vjp(case: Conv, args: dict[str, Tensor]) -> Tensor:
    return _vjp("w")(case, args)[:, :, -1:]


def _grad_rows(case: Conv, args: dict[str, Tensor]) -> Tensor:
    return args["grad_y"].flatten(2)


OPS: tuple[Reference, ...] = (
    Reference("y", "", ("x", "w", "b"), _y),
    Reference("gx", "gx = vjp(y, x)", ("w", "grad_y"), _vjp("x")),
    Reference("gw", "gw = vjp(y, w)", ("x", "grad_y"), _vjp("w")),
    Reference("jx", "jx = jvp(y, x)", ("w", "tangent_x"), _jvp("x")),
    Reference("jw", "jw = jvp(y, w)", ("x", "tangent_w"), _jvp("w")),
    Reference("gw_k", "gw_k = slice(gw, k1=-1:)", ("x", "grad_y"), _sliced_weight_vjp),
    Reference("gw_o", "gw_o = sample(gw, index=o1, p=1)", ("x", "grad_y"), _vjp("w")),
    Reference("gw_n", "gw_n = sample(gw, index=n, p=1)", ("x", "grad_y"), _vjp("w")),
    Reference("u", "", ("x",), lambda case, args: im2col(case, args["x"]), plain_only=True),
    Reference("A", "A = kfac(y, w, batch=n)", ("x",), lambda c, a: kfac(c, im2col(c, a["x"]), False, True), True),
    Reference(
        "Ar",
        "Ar = kfac(y, w, batch=n, approx=reduce)",
        ("x",),
        lambda c, a: kfac(c, im2col(c, a["x"]), True, True),
        True,
    ),
    Reference(
        "B", "B = kfac_grad(y, w, batch=n)", ("grad_y",), lambda c, a: kfac(c, _grad_rows(c, a), False, False), True
    ),
    Reference(
        "Br",
        "Br = kfac_grad(y, w, batch=n, approx=reduce)",
        ("grad_y",),
        lambda c, a: kfac(c, _grad_rows(c, a), True, False),
        True,
    ),
)


def statements(case: Conv) -> list[str]:
    """Every operation's statement for this case (the unfold as a definition of its own)."""
    ops = [op for op in OPS if op.statement and not (op.plain_only and case.transpose)]
    return [op.statement for op in ops] + ([] if case.transpose else [unfold_statement(case)])


def operations(case: Conv) -> list[Reference]:
    return [op for op in OPS if not (op.plain_only and case.transpose)]


def all_arguments(case: Conv, seed: int = 0) -> dict[str, Tensor]:
    """x, w (b) and the cotangent and tangents, in float64."""
    args = arguments(case, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    y_shape = (case.batch, case.groups * case.c_out, *case.output())
    args["grad_y"] = torch.randn(y_shape, generator=generator, dtype=torch.float64)
    for name in ("x", "w"):
        args[f"tangent_{name}"] = torch.randn(args[name].shape, generator=generator, dtype=torch.float64)
    return args


def keyword_sizes(case: Conv) -> dict[str, int]:
    """The value of every index a keyword-only size argument may name, for this case's call."""
    sizes = {"n": case.batch, "c": case.c_in, "d": case.c_out}
    sizes |= {f"i{j + 1}": size for j, size in enumerate(case.pattern_in())}
    sizes |= {f"o{j + 1}": size for j, size in enumerate(case.pattern_out())}
    return sizes


def reference(op: Reference, case: Conv, args: dict[str, Tensor]) -> Tensor:
    return op.compute(case, args)


# --- comparisons ---------------------------------------------------------------------------------------------------

# Max abs error / max abs reference, per dtype.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}


def relative_error(actual: Tensor, expected: Tensor) -> float:
    """max |actual - expected| / max |expected|, after checking shape and dtype."""
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert actual.dtype == expected.dtype, f"dtype {actual.dtype} != {expected.dtype}"
    scale = expected.abs().max().item() or 1.0
    return (actual - expected).abs().max().item() / scale


def assert_close(actual: Tensor, expected: Tensor) -> None:
    """Same shape and dtype, and a relative error within the dtype's tolerance."""
    error = relative_error(actual, expected)
    assert error <= TOLERANCE[expected.dtype], f"relative error {error:.3g} > {TOLERANCE[expected.dtype]:g}"

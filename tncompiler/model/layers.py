"""PyTorch layers as `.tnd` text: nn.Linear, nn.Conv1d/2d/3d and nn.ConvTranspose1d/2d/3d, written and compiled.

The text leaves the batch and the spatial sizes open, so one compiled module serves every input size; it is a
function of the layer's hyper-parameters alone, which is what the caches key on. Nothing the user controls reaches its
code lines as text: the hyper-parameters are checked integers and padding words, and the one line that describes the
layer is a comment written from them (never the module's repr, which a parametrized layer spreads over many lines).

A layer's weight or bias may be parametrized (`torch.nn.utils.parametrizations.weight_norm`, `spectral_norm`, or
`torch.nn.utils.parametrize`): the text is the same as the plain layer's, and the model code reads the tensor the
parametrization computes, `module.weight`, as the layer's own forward does.
"""

from __future__ import annotations

import functools
import inspect
import operator
import re
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn.utils import parametrize

from tncompiler.model.cache import load_compiled

__all__ = [
    "LayerSpec",
    "bias_of",
    "weight_of",
    "SUPPORTED",
    "compile_sampled",
    "describe",
    "layer_functions",
    "layer_source",
    "parametrization_of",
    "sampled_source",
    "size_keywords",
    "spec_of",
    "stored_tensor",
    "supported_layers",
    "trainable",
    "transpose_padding",
    "with_sizes",
]

Kind = Literal["linear", "conv", "transpose"]
Over = Literal["positions", "batch"]

_CONVS: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSES: tuple[type[nn.Module], ...] = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
SUPPORTED: tuple[type[nn.Module], ...] = (nn.Linear, *_CONVS, *_TRANSPOSES)
_KINDS = ("linear", "conv", "transpose")
_INTEGERS = ("in_channels", "out_channels", "groups")
_TUPLES = ("kernel", "stride", "dilation", "output_padding", "symmetric_padding")
_PADDING = re.compile(r"same|valid|\d+|\(\d+, \d+\)")  # what `_pad_text` writes, and nothing else


@dataclass(frozen=True)
class LayerSpec:
    """What the `.tnd` text of a layer depends on. `padding` holds each pattern's padding as the file writes it
    (`1`, `(1, 0)`, `same`, `valid`); a transpose convolution's output padding is folded into it (see `_pad_text`)."""

    kind: Kind
    in_channels: int  # per group
    out_channels: int  # per group
    groups: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[str, ...]
    dilation: tuple[int, ...]
    output_padding: tuple[int, ...]
    symmetric_padding: tuple[int, ...]  # a transpose convolution's PyTorch padding, for its output size
    bias: bool
    title: str  # free text: written as one escaped comment line (`_comment`), never as code

    def __post_init__(self) -> None:
        """Every field that reaches a code line of the text is checked here: integers (numpy's too, made Python
        ints) and padding words, so that a spec made by hand, or of a module whose attributes were overwritten, can
        never write anything else into the file."""
        if self.kind not in _KINDS:
            raise ValueError(f"tncompiler: LayerSpec kind {self.kind!r} is not one of {', '.join(_KINDS)}")
        for name in _INTEGERS:
            object.__setattr__(self, name, _natural(getattr(self, name), name, self.title))
        for name in _TUPLES:
            values = getattr(self, name)
            if not isinstance(values, tuple) or len(values) != len(self.kernel):
                raise ValueError(f"tncompiler: layer {self.title!r}: {name}={values!r} needs one entry per kernel axis")
            object.__setattr__(self, name, tuple(_natural(v, name, self.title) for v in values))
        if not isinstance(self.padding, tuple) or len(self.padding) != len(self.kernel):
            raise ValueError(f"tncompiler: layer {self.title!r}: padding={self.padding!r} needs one entry per axis")
        for text in self.padding:
            if not isinstance(text, str) or not _PADDING.fullmatch(text):
                raise ValueError(
                    f"tncompiler: layer {self.title!r}: padding {text!r} is not an integer, a pair (left, right), "
                    "'same' or 'valid'"
                )

    @property
    def dims(self) -> int:
        return len(self.kernel)

    def output_shape(self, input_shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        """The spatial sizes of the layer's output for an input of this shape (PyTorch's formulas)."""
        spatial = tuple(input_shape[2:])
        if self.kind == "transpose":
            return tuple(
                (o - 1) * s - 2 * p + d * (k - 1) + e + 1
                for o, s, p, d, k, e in zip(
                    spatial, self.stride, self.symmetric_padding, self.dilation, self.kernel, self.output_padding
                )
            )
        return spatial  # only used for a transpose convolution's keyword sizes

    def sizes(self, x: torch.Tensor) -> dict[str, int]:
        """The pattern-input sizes i1.. of a call on x: x's own spatial sizes, or a transpose convolution's output
        sizes, which the text cannot derive from x (PyTorch's `output_padding`) and its functions take as keywords."""
        if self.kind == "linear":
            return {}
        shape = self.output_shape(x.shape) if self.kind == "transpose" else tuple(x.shape[2:])
        return {f"i{j + 1}": size for j, size in enumerate(shape)}


def _natural(value: object, name: str, title: str) -> int:
    """A non-negative Python int, or a `ValueError` naming the field (a bool is refused: it is no size)."""
    try:
        number = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        number = -1
    if isinstance(value, bool) or number < 0:
        raise ValueError(f"tncompiler: layer {title!r}: {name} must be a non-negative integer, got {value!r}")
    return number


def describe(module: nn.Module) -> str:
    """A supported layer as one line: its PyTorch class (before any parametrization, before any subclass) and the
    hyper-parameters that class's own `extra_repr` lists, e.g. `Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))`.
    It is a function of what the text depends on, so the text stays the same for a plain and a parametrized layer."""
    base = next(cls for cls in SUPPORTED if isinstance(module, cls))
    return f"{base.__name__}({base.extra_repr(module)})"


def _comment(text: str) -> str:
    """`text` as one comment line: every character that is not printable (a line break, a tab, a control or a
    separator character) escaped as Python writes it, so the text can neither end the comment nor break the line."""
    escaped = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return f"# {escaped}"


def spec_of(module: nn.Module, name: str | None = None) -> LayerSpec:
    """The spec of a supported layer; a `TypeError` or `ValueError` that names the module for anything else."""
    label = f"{name!r} ({module!r})" if name else repr(module)
    if not isinstance(module, SUPPORTED):
        supported = ", ".join(f"nn.{cls.__name__}" for cls in SUPPORTED)
        raise TypeError(f"tncompiler: module {label} is not a layer tnc can write; supported: {supported}")
    if type(module).forward is not _base_forward(module):
        base = next(cls for cls in SUPPORTED if isinstance(module, cls)).__name__
        raise TypeError(
            f"tncompiler: module {label} is a {type(module).__name__}, a subclass of nn.{base} that overrides "
            f"forward, so tnc cannot know what it computes; give it nn.{base}'s own forward, or freeze its "
            "parameters (requires_grad_(False)) to leave it out"
        )
    if isinstance(module, nn.Linear):
        return LayerSpec(
            "linear", module.in_features, module.out_features, 1, (), (), (), (), (), (), module.bias is not None,
            describe(module),
        )  # fmt: skip
    assert isinstance(module, nn.modules.conv._ConvNd)
    if module.padding_mode != "zeros":
        raise ValueError(
            f"tncompiler: module {label} has padding_mode={module.padding_mode!r}; only 'zeros' is supported "
            "(pad the input with F.pad before the layer instead)"
        )
    return _conv_spec(module, label)


def _base_forward(module: nn.Module) -> Callable[..., torch.Tensor]:
    """The forward of the supported class the module is an instance of: a subclass that overrides it is refused."""
    base = next(cls for cls in SUPPORTED if isinstance(module, cls))
    return base.forward


def _conv_spec(module: nn.modules.conv._ConvNd, label: str) -> LayerSpec:
    transpose = isinstance(module, _TRANSPOSES)
    groups = module.groups
    dims = len(module.kernel_size)
    padding = module.padding
    symmetric = (0,) * dims if isinstance(padding, str) else tuple(int(p) for p in padding)
    extra = tuple(module.output_padding) if transpose else (0,) * dims
    texts = tuple(_pad_text(module, j, label) for j in range(dims))
    return LayerSpec(
        "transpose" if transpose else "conv",
        module.in_channels // groups,
        module.out_channels // groups,
        groups,
        tuple(module.kernel_size),
        tuple(module.stride),
        texts,
        tuple(module.dilation),
        extra,
        symmetric,
        module.bias is not None,
        describe(module),
    )


def _pad_text(module: nn.modules.conv._ConvNd, j: int, label: str) -> str:
    """The padding of dimension j as the pattern writes it. A transpose convolution's `output_padding` e adds e rows
    at the end of its output; the pattern then has O = floor((I + P_l + P_r - D(K-1) - 1) / S) + 1 windows, which must
    stay the input's size, so its right padding becomes some P_r in [P - e, P - e + S - 1] (P where e < S)."""
    padding = module.padding
    if isinstance(padding, str):
        if padding not in ("same", "valid"):
            raise ValueError(f"tncompiler: module {label} has padding={padding!r}; PyTorch's words are 'same', 'valid'")
        return padding
    left = int(padding[j])
    if not isinstance(module, _TRANSPOSES):
        return str(left)
    return _transpose_text(left, int(module.output_padding[j]), int(module.stride[j]), j, label)


def _transpose_text(left: int, extra: int, stride: int, j: int, label: str) -> str:
    right = min(left, left - extra + stride - 1)
    if right < 0:
        raise ValueError(
            f"tncompiler: module {label} has output_padding={extra} with padding={left} and stride={stride} in "
            f"dimension {j + 1}: no zero padding of a convolution's windows gives that output size"
        )
    return str(left) if right == left else f"({left}, {right})"


def transpose_padding(spec: LayerSpec, j: int, extra: int) -> str:
    """The padding text of a transpose convolution's dimension j for output padding `extra` (see `_pad_text`)."""
    if spec.padding[j] in ("same", "valid"):
        return spec.padding[j]
    return _transpose_text(spec.symmetric_padding[j], extra, spec.stride[j], j, spec.title)


# --- the text ------------------------------------------------------------------------------------------------------


def _legs(prefix: str, dims: int, separator: str = ", ") -> str:
    return separator.join(f"{prefix}{j + 1}" for j in range(dims))


def _channels(spec: LayerSpec, name: str) -> str:
    return f"(g {name})" if spec.groups > 1 else name


def _header(spec: LayerSpec) -> list[str]:
    lines = [_comment(spec.title), "# written by tncompiler.layer_source; sizes without a value are bound at call time"]
    lines.append("index n".ljust(36) + "# the batch")
    group = [f"g = {spec.groups}"] if spec.groups > 1 else []
    channels = group + [f"c = {spec.in_channels}", f"d = {spec.out_channels}"]
    what = "in- and out-features" if spec.kind == "linear" else "in- and out-channels"
    comment = f"# groups, {what} per group" if group else f"# {what}"
    lines.append(f"index {', '.join(channels)}".ljust(36) + comment)
    if spec.kind == "linear":
        return lines
    dims = spec.dims
    if spec.kind == "transpose":  # its output sits on the patterns' i legs, which its input does not fix
        lines.append(f"index {_legs('i', dims)}, {_legs('o', dims)}".ljust(36) + "# output and input positions")
    else:
        lines.append(f"index {_legs('i', dims)}".ljust(36) + "# input positions")
    lines.append("index " + ", ".join(f"k{j + 1} = {k}" for j, k in enumerate(spec.kernel)))
    for j in range(dims):
        settings = f"stride={spec.stride[j]}, padding={spec.padding[j]}, dilation={spec.dilation[j]}"
        lines.append(f"pattern p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1}) = conv({settings})")
    return lines


@dataclass(frozen=True)
class _Terms:
    """The factors of y's term: x, the patterns and w, as written, and y's and the unfolded input's legs."""

    x: str
    w: str
    y: str
    patterns: str
    positions: str  # y's legs that w lacks, besides the batch
    features: str  # the in-features of the weight, as one grouped leg's contents


def _terms(spec: LayerSpec) -> _Terms:
    if spec.kind == "linear":
        return _Terms("x[n, c]", "w[d, c]", "y[n, d]", "", "", "c")
    dims = spec.dims
    c, d, ks = _channels(spec, "c"), _channels(spec, "d"), _legs("k", dims)
    patterns = " * ".join(f"p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1})" for j in range(dims))
    features = f"c {_legs('k', dims, ' ')}"
    if spec.kind == "transpose":  # its input sits on the patterns' o legs, its output on the i legs
        ins, outs = _legs("o", dims), _legs("i", dims)
        return _Terms(f"x[n, {c}, {ins}]", f"w[{c}, d, {ks}]", f"y[n, {d}, {outs}]", patterns, outs, features)
    ins, outs = _legs("i", dims), _legs("o", dims)
    return _Terms(f"x[n, {c}, {ins}]", f"w[{d}, c, {ks}]", f"y[n, {d}, {outs}]", patterns, outs, features)


def _body(spec: LayerSpec) -> list[str]:
    terms = _terms(spec)
    bias = f"b[{_channels(spec, 'd')}]"
    product = " * ".join(part for part in (terms.x, terms.patterns, terms.w) if part)
    lines = [f"input {terms.x}", f"input {terms.w}"] + ([f"input {bias}"] if spec.bias else [])
    lines += ["", f"{terms.y} = {product}" + (f" + {bias}" if spec.bias else "")]
    return lines


def _derived(spec: LayerSpec) -> list[str]:
    terms = _terms(spec)
    group = "g " if spec.groups > 1 else ""
    windows = " * ".join(part for part in (terms.x, terms.patterns) if part)
    legs = terms.positions.replace(",", "")
    positions = f", ({legs})" if " " in legs else (f", {legs}" if legs else "")
    sums = " * ".join(f"delta({leg})" for leg in ["n", *filter(None, terms.positions.split(", "))])
    features = f"({terms.features})" if " " in terms.features else terms.features
    grouped = f"g, {features}" if spec.groups > 1 else features
    window_note = (
        "# a linear layer has no windows: its unfolded input is x"
        if spec.kind == "linear"
        else "# im2col: each output position's window of x, laid out as F.unfold lays it out"
    )
    lines = [
        "",
        "vjp_x = vjp(y, x)",
        "vjp_w = vjp(y, w)",
        *(["vjp_b = vjp(y, b)"] if spec.bias else []),
        "jvp_x = jvp(y, x)",
        "jvp_w = jvp(y, w)",
        "",
        window_note,
        f"unfold[n, {f'({group}{terms.features})' if group else features}{positions}] = {windows}",
        "# the unfolded input summed over the batch and the positions: a bias's row in KFAC's input factor",
        f"unfold_sum[{grouped}] = {windows} * {sums}",
        "",
        "kfac_expand = kfac(y, w, batch=n, approx=expand)",
        "kfac_reduce = kfac(y, w, batch=n, approx=reduce)",
        "kfac_grad_expand = kfac_grad(y, w, batch=n, approx=expand)",
        "kfac_grad_reduce = kfac_grad(y, w, batch=n, approx=reduce)",
    ]
    return lines


def _spec(module: nn.Module | LayerSpec) -> LayerSpec:
    return module if isinstance(module, LayerSpec) else spec_of(module)


def layer_source(module: nn.Module | LayerSpec) -> str:
    """The `.tnd` text of a layer with every function tnc derives for it; batch and spatial sizes are open."""
    spec = _spec(module)
    return "\n".join(_header(spec) + [""] + _body(spec) + _derived(spec)) + "\n"


def sampled_source(module: nn.Module | LayerSpec, over: Over) -> str:
    """The layer's y and a tensor-dropout estimate of its weight VJP, over the first spatial output axis (the
    patterns' o1, which is a transpose convolution's input) or over the batch; a linear layer's positions are none,
    so it keeps its exact gradient there. The module then holds `y_sampled_autograd`, whose `p=` is given per call
    (the 0.5 written here is only its default), so one compiled module serves every p.

    This is what `tncompiler.sampled` computes for the layer: its own route (model/sampling.py: the layer's kernels
    on what is kept, nothing compiled per block) gives this `vjp_w_sampled` draw for draw for the same generator
    state, which tests/model/test_sampled_speed.py checks for every layer type."""
    spec = _spec(module)
    lines = _header(spec) + [""] + _body(spec) + [""]
    index = "n" if over == "batch" else ("o1" if spec.kind != "linear" else "")
    if index:
        lines.append(f"vjp_w_sampled = sample(vjp(y, w), index={index}, p=0.5)")
    return "\n".join(lines) + "\n"


def _module_name(spec: LayerSpec) -> str:
    """The compiled module's name, from the kind alone: it names a cache file and enters the module's docstring."""
    if spec.kind == "linear":
        return "linear"
    return f"conv{'transpose' if spec.kind == 'transpose' else ''}{spec.dims}d"


def layer_functions(module: nn.Module | LayerSpec) -> types.ModuleType:
    """The generated module of `layer_source(module)`, cached in memory and on disk (`tncompiler.model.cache`); the
    public `compile_layer` (model/calls.py) adds a `y` called as the module is."""
    spec = _spec(module)
    return load_compiled(layer_source(spec), _module_name(spec))


def compile_sampled(module: nn.Module | LayerSpec, over: Over) -> types.ModuleType:
    """The compiled module of `sampled_source(module, over)`, cached as layer_functions' is: the reference for
    `tncompiler.sampled`'s estimates (and one of the routes bench/sampled_model.py --routes times)."""
    spec = _spec(module)
    return load_compiled(sampled_source(spec, over), _module_name(spec) + "_sampled")


_KEYWORDS: dict[Callable[..., object], frozenset[str]] = {}  # a plain dict: torch.compile warns of functools caches


def _keywords(function: Callable[..., object]) -> frozenset[str]:
    """The keyword-only size arguments a generated function takes."""
    found = _KEYWORDS.get(function)
    if found is None:
        parameters = inspect.signature(function).parameters.values()
        kinds = (p for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY)
        found = _KEYWORDS[function] = frozenset(p.name for p in kinds if p.name != "generator")
    return found


def size_keywords(function: Callable[..., object], sizes: dict[str, int]) -> dict[str, int]:
    """Those of `sizes` that `function` takes as keyword-only arguments."""
    wanted = _keywords(function)
    return {name: size for name, size in sizes.items() if name in wanted}


def with_sizes(function: Callable[..., torch.Tensor], sizes: dict[str, int]) -> Callable[..., torch.Tensor]:
    """`function` called with those of `sizes` it takes as keyword-only arguments."""
    chosen = size_keywords(function, sizes)
    return functools.partial(function, **chosen) if chosen else function


def weight_of(module: nn.Module) -> torch.Tensor:
    """A supported layer's weight, typed: for a parametrized weight, the tensor its parametrization computes now
    (each read evaluates it, and spectral norm's then advances its power iteration: read it where the layer's own
    forward would)."""
    weight = module.weight
    assert isinstance(weight, torch.Tensor)
    return weight


def bias_of(module: nn.Module) -> torch.Tensor | None:
    bias = module.bias
    assert bias is None or isinstance(bias, torch.Tensor)
    return bias


def parametrization_of(module: nn.Module, name: str) -> nn.Module | None:
    """The `ParametrizationList` that computes a layer's `weight` or `bias`, or None for a plain tensor."""
    if not parametrize.is_parametrized(module, name):
        return None
    parametrizations = module.parametrizations
    assert isinstance(parametrizations, nn.ModuleDict)
    return parametrizations[name]


def stored_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    """The tensor a layer stores for its `weight` or `bias`, read without evaluating a parametrization: the
    parameter itself, or a parametrized tensor's (first) original, for its dtype and device."""
    parametrization = parametrization_of(module, name)
    if parametrization is None:
        stored = getattr(module, name)
    elif hasattr(parametrization, "original"):
        stored = parametrization.original
    else:  # a parametrization whose right_inverse gives several tensors: original0, original1, ...
        stored = parametrization.original0
    assert stored is None or isinstance(stored, torch.Tensor)
    return stored


def trainable(module: nn.Module, name: str) -> bool:
    """Whether a layer's `weight` or `bias` is trained: a parameter that requires grad or, for a parametrized
    tensor, a parametrization with any parameter that does (its originals, or a parametrization's own)."""
    parametrization = parametrization_of(module, name)
    if parametrization is not None:
        return any(p.requires_grad for p in parametrization.parameters())
    tensor = getattr(module, name)
    return isinstance(tensor, torch.Tensor) and tensor.requires_grad


def supported_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """The model's layers that tnc writes, by name; a supported class with unsupported settings raises, naming it."""
    for name, module in model.named_modules():
        if isinstance(module, SUPPORTED):
            spec_of(module, name)  # raises for padding_mode and overridden forwards
            yield name, module

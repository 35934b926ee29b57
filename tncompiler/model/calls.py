"""`compile_layer(module)`: a layer's compiled functions, with `y` called as the module itself is called.

The generated `y` of a transpose convolution takes its output sizes as keywords (the text cannot derive them from
the input: PyTorch's `output_padding` decides), needs a bias argument exactly where the text has one, and takes a
batch axis. The `y` here takes what the module's forward takes, for every supported module:
`y(x, w, b=None, *, output_size=None)`. A transpose convolution's sizes follow from its `output_padding`, or from
`output_size=` as in `m(x, output_size=...)`; `b=None` computes without a bias; an unbatched input (and any number of
leading axes for a linear layer) is accepted where the module accepts it. Every other function is the generated one.
"""

from __future__ import annotations

import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from tncompiler.generated import GeneratedModule
from tncompiler.model.layers import LayerSpec, layer_functions, size_keywords, spec_of, transpose_padding

__all__ = ["CompiledLayer", "compile_layer"]

Size = Sequence[int] | torch.Size


class CompiledLayer(GeneratedModule):
    """A layer's compiled functions (those of `layer_source(module)`), with `y` called as the module is."""

    spec: LayerSpec
    functions: types.ModuleType  # the generated module it wraps


_layers: dict[LayerSpec, CompiledLayer] = {}
_lock = threading.Lock()


def compile_layer(module: nn.Module | LayerSpec) -> types.ModuleType:
    """The compiled functions of a layer (cached per hyper-parameters, in memory and on disk); `y(x, w, b=None, *,
    output_size=None)` equals the module's forward for the same weight and bias."""
    spec = module if isinstance(module, LayerSpec) else spec_of(module)
    functions = layer_functions(spec)  # from the module caches, which decide when to compile again
    with _lock:
        layer = _layers.get(spec)
        if layer is None or layer.functions is not functions:
            layer = _layers[spec] = _layer(spec, functions)
    return layer


def _layer(spec: LayerSpec, functions: types.ModuleType) -> CompiledLayer:
    layer = CompiledLayer("tnc_layer_" + functions.__name__.removeprefix("tnc_"))  # the generated module's hash
    sys.modules[layer.__name__] = layer  # importable by its name, as every generated module is
    layer.__dict__.update({k: v for k, v in vars(functions).items() if not k.startswith("__")})
    layer.__doc__ = functions.__doc__
    layer.spec, layer.functions = spec, functions
    layer.__tnc_recipe__ = (compile_layer, (spec,))
    layer.y = _forward(spec, _y(functions))  # type: ignore[attr-defined]
    return layer


def _forward(spec: LayerSpec, compiled: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """The module's forward on given tensors, through the compiled `y` (of the layer without its bias where b is
    None). A plain closure: torch.compile traces it."""
    unbiased: list[Callable[..., Tensor]] = []  # compiled on first use: most layers are always called with a bias
    title = spec.title

    def y(x: Tensor, w: Tensor, b: Tensor | None = None, *, output_size: Size | None = None) -> Tensor:
        if output_size is not None and spec.kind != "transpose":
            raise TypeError(f"y(): {title} takes no output_size= (only a transpose convolution does)")
        if b is not None and not spec.bias:
            raise TypeError(f"y(): {title} has no bias (bias=False), so b must be None")
        if not isinstance(x, Tensor):
            raise TypeError(f"y(): argument 'x' must be a torch.Tensor, got {type(x).__name__}")
        if b is not None:
            return _batched(spec, compiled, (x, w, b), output_size)
        if spec.bias and not unbiased:
            unbiased.append(_y(layer_functions(replace(spec, bias=False))))
        return _batched(spec, unbiased[0] if spec.bias else compiled, (x, w), output_size)

    y.__doc__ = f"{title} applied to x with weight w and bias b (None: no bias), as the module's forward.\n\n" + (
        compiled.__doc__ or ""
    )
    return y


def _batched(
    spec: LayerSpec, function: Callable[..., Tensor], arguments: tuple[Tensor, ...], output_size: Size | None
) -> Tensor:
    """The compiled function on a batched input: an unbatched one gets a batch axis of 1 (and loses it after), a
    linear layer's leading axes are one batch axis."""
    x = arguments[0]
    if spec.kind == "linear":
        if x.dim() == 2:
            return function(*arguments)
        flat = x.reshape(-1, x.shape[-1]) if x.dim() >= 1 else x
        out = function(flat, *arguments[1:])
        return out.reshape(*x.shape[:-1], out.shape[-1])
    if x.dim() == spec.dims + 1:  # unbatched, as PyTorch's conv modules accept
        out = _call(spec, function, (x.unsqueeze(0), *arguments[1:]), output_size)
        return out.squeeze(0)
    return _call(spec, function, arguments, output_size)


def _call(spec: LayerSpec, function: Callable[..., Tensor], arguments: tuple[Tensor, ...], size: Size | None) -> Tensor:
    if spec.kind != "transpose":
        return function(*arguments)
    x = arguments[0]
    if x.dim() != spec.dims + 2:
        return function(*arguments)  # the generated check names the argument and its axes
    shape = spec.output_shape(x.shape) if size is None else _output_size(spec, x.shape, size)
    if size is not None and tuple(shape) != spec.output_shape(x.shape):
        function = _with_output(spec, x.shape, shape, bool(len(arguments) == 3))
    # a stride-1 pattern derives its input size from its output: the text then takes no size keywords
    return function(*arguments, **size_keywords(function, {f"i{j + 1}": s for j, s in enumerate(shape)}))


def _output_size(spec: LayerSpec, input_shape: torch.Size, size: Size) -> tuple[int, ...]:
    """The spatial output sizes an `output_size=` asks for (PyTorch takes them with or without the batch and
    channel axes), checked against the range a transpose convolution can give, as PyTorch checks them."""
    sizes = [int(s) for s in size]
    if len(sizes) == spec.dims + 2:
        sizes = sizes[2:]
    if len(sizes) != spec.dims:
        raise ValueError(
            f"y(): output_size must have {spec.dims} or {spec.dims + 2} elements (got {len(sizes)}): {spec.title}"
        )
    for j, (wanted, low, stride) in enumerate(zip(sizes, _smallest(spec, input_shape), spec.stride)):
        high = low + stride - 1
        if not low <= wanted <= high:
            raise ValueError(
                f"y(): output_size[{j}] = {wanted} is not between {low} and {high} for input size "
                f"{input_shape[2 + j]}: {spec.title}"
            )
    return tuple(sizes)


def _smallest(spec: LayerSpec, input_shape: torch.Size) -> list[int]:
    """A transpose convolution's spatial output sizes with no output padding: `output_size=` may add up to S - 1."""
    return [size - extra for size, extra in zip(spec.output_shape(input_shape), spec.output_padding)]


def _with_output(spec: LayerSpec, input_shape: torch.Size, shape: Sequence[int], bias: bool) -> Callable[..., Tensor]:
    """The compiled y of the layer with the output padding that gives `shape` (the text folds it into the patterns'
    right padding, so another output padding may need another text)."""
    extra = tuple(wanted - low for wanted, low in zip(shape, _smallest(spec, input_shape)))
    padding = tuple(transpose_padding(spec, j, extra[j]) for j in range(spec.dims))
    other = replace(spec, output_padding=extra, padding=padding, bias=bias)
    return _y(layer_functions(other))


def _y(functions: types.ModuleType) -> Callable[..., Tensor]:
    y: Callable[..., Tensor] = functions.y
    return y

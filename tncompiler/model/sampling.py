"""`with sampled(model, p=...)`: the model's layers backpropagate tensor-dropout estimates of their weight gradients.

For the duration of the block, each supported layer's forward is replaced by one autograd function: the exact forward
pass (the kernel call the layer's own forward makes, bit for bit), exact gradients for the input and the bias, and for
the weight `sample(vjp(y, w), index=..., p=p)` as `layers.sampled_source` writes it, which keeps each output row (or
example) with probability p and rescales by 1/p: an unbiased estimate that does a fraction p of the work.
DistributedDataParallel sees ordinary gradients and averages them as usual.

What it costs (bench/README.md, "Sampled training", has the measurements behind each choice):

- p = 1 changes nothing: no layer is touched, so the backward pass is PyTorch's own.
- Entering and leaving a block sets and deletes one attribute per layer. What a layer needs (its kernel settings, its
  route) is worked out once per layer spec and `over` and kept in `_PLANS`; nothing is compiled per block or call.
- The backward pass makes one kernel call for the input gradient (`aten.convolution_backward` with
  output_mask=(True, False, False), or a linear layer's matrix product) and sums the output gradient for the bias:
  on PyTorch's CPU kernels, a bias gradient asked of convolution_backward without the weight's costs about what the
  weight's would (0.3 to 0.8 of the call), the sum next to nothing. On the CPU, a strided convolution with little
  work per example, or a 1x1 one, gets its input gradient per phase instead (`_phases`: stride-1 convolutions of the
  output gradient, half the time of PyTorch's kernel there).
- The weight gradient runs the same kernel on what is kept: the kept examples (over="batch"), or, over="positions",
  the kept output rows with the K input rows each one reads gathered next to each other, so that a convolution with
  stride K over them computes exactly the kept windows (the route tnc lowers `sample(vjp(y, w), index=o1)` to).
  The gathered copies keep the tensors' memory format, so a channels-last model stays on its channels-last kernels,
  and their count is padded to a bucket (`_padded_length`) so that the kernels meet a handful of shapes.
- over="block" keeps one random contiguous block of the batch instead of independent examples: round(p·N) examples
  from a random start (wrapping around; `_block`), scaled by N / their count. Every example is
  kept with probability count / N, so the estimate is unbiased; the kernel then runs on views of the batch, without
  a draw per example, index tensors or gathered copies (and the batch is assumed to come in a random order, as a
  shuffling loader gives it: neighbours are kept together).
- Mixed precision: under torch.autocast a layer casts its input, weight and bias as autocast would (to the autocast
  dtype of their device, float64 left alone), so its output and gradients have the dtypes PyTorch's layer gives.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, cast

import torch
import torch.nn.functional as F
from torch import nn

from tncompiler.model.layers import SUPPORTED, spec_of

__all__ = ["sampled"]

Mode = Literal["positions", "batch", "block"]  # `Over`, and the contiguous block of the batch

Tensor = torch.Tensor
Draw = tuple[float, "torch.Generator | None"]  # p and the generator of a block
_BACKWARD = torch.ops.aten.convolution_backward.default
_INPUT_ONLY = [True, False, False]
_SMALL_WORK = 100_000  # multiply-adds per example below which a strided input gradient is computed per phase
_WEIGHT_ONLY = [False, True, False]
_CASTABLE = (torch.float32, torch.float16, torch.bfloat16)  # what autocast casts; float64 it leaves alone


@contextlib.contextmanager
def sampled(
    model: nn.Module, p: float = 0.5, over: Mode = "positions", generator: torch.Generator | None = None
) -> Iterator[nn.Module]:
    """Within the block, weight gradients of the model's nn.Linear, nn.Conv*d and nn.ConvTranspose*d layers are
    tensor-dropout estimates: over="positions" keeps each row of the first spatial output axis with probability p
    (a linear layer has no positions and keeps its exact gradient), over="batch" each example (each row of a linear
    layer's input), over="block" a random contiguous block of round(p·N) of the N examples (or rows), scaled by
    N / its length: each is kept with probability about p, not independently (cheaper: no copies). The forward pass
    and the input gradients stay exact; p=1 gives the exact gradients (and leaves the model as it is: PyTorch's own
    backward pass, at its own cost)."""
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"tncompiler.sampled: p must be a number in (0, 1], got {type(p).__name__}")
    if not 0.0 < p <= 1.0:
        raise ValueError(f"tncompiler.sampled: p must be in (0, 1], got {p!r}")
    if over not in ("positions", "batch", "block"):
        raise ValueError(f"tncompiler.sampled: over must be 'positions', 'batch' or 'block', got {over!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        kind = type(generator).__name__
        raise TypeError(f"tncompiler.sampled: generator must be a torch.Generator or None, got {kind}")
    layers = [(module, _plan(module, name, over)) for name, module in model.named_modules() if _supported(module)]
    patched: list[nn.Module] = []
    try:
        if p < 1.0:
            draw: Draw = (float(p), generator)
            for module, plan in layers:
                if plan is None:  # a linear layer over positions: nothing to sample, its own forward stays
                    continue
                if "forward" in vars(module):
                    raise RuntimeError(
                        f"tncompiler.sampled: {module!r} already has its forward replaced (nested blocks?)"
                    )
                module.forward = plan.forward_of(module, draw)
                patched.append(module)
        yield model
    finally:
        for module in patched:
            del module.forward


def _supported(module: nn.Module) -> bool:
    return isinstance(module, SUPPORTED)


# --- plans: what a layer's calls need, worked out once per spec and `over` ------------------------------------------


class _Plan:
    """A kind of layer's replacement forward, bound to one module and one block's draw."""

    def forward_of(self, module: nn.Module, draw: Draw) -> Callable[..., Tensor]:
        raise NotImplementedError


_PLANS: dict[tuple[object, ...], _Plan | None] = {}


def _signature(module: nn.Module, over: Mode) -> tuple[object, ...]:
    """What a plan depends on, read without evaluating a parametrized weight: the class (spec_of refuses a subclass
    that overrides forward) and the hyper-parameters."""
    if not isinstance(module, nn.modules.conv._ConvNd):
        return (type(module), over)
    return (
        type(module), over, module.in_channels, module.out_channels, module.kernel_size, module.stride,
        module.padding, module.dilation, module.groups, module.output_padding, module.padding_mode,
    )  # fmt: skip


def _plan(module: nn.Module, name: str, over: Mode) -> _Plan | None:
    key = _signature(module, over)
    if key in _PLANS:
        return _PLANS[key]
    spec_of(module, name)  # raises, naming the module, for what tnc does not write (padding_mode, a new forward)
    plan: _Plan | None
    if isinstance(module, nn.modules.conv._ConvNd):
        plan = _ConvPlan.of(module, over)
    else:
        plan = None if over == "positions" else _LinearPlan(over == "block")
    _PLANS[key] = plan
    return plan


# --- shared parts --------------------------------------------------------------------------------------------------

Function = TypeVar("Function", bound=Callable[..., Any])


def _not_traced(function: Function) -> Function:
    """`function` run eagerly under torch.compile: a draw keeps a random number of entries, which TorchDynamo cannot
    trace into the backward graph (it fails on the kept count's shapes), so the layer's autograd function becomes a
    graph break instead, and the compiled model runs (0.3 µs a call outside torch.compile)."""
    disable = cast(Callable[[Function], Function], torch.compiler.disable)
    return disable(function)


def _autocast(x: Tensor, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
    """The tensors as autocast hands them to a convolution or a linear layer: the floating ones (float64 left alone)
    in the autocast dtype of their device. Called when autocast is on there."""
    dtype = torch.get_autocast_dtype(x.device.type)

    def cast(t: Tensor) -> Tensor:
        return t.to(dtype) if t.dtype in _CASTABLE else t

    return cast(x), cast(weight), None if bias is None else cast(bias)


def _keep(size: int, p: float, generator: torch.Generator | None) -> Tensor:
    """The indices kept, each independently with probability p, drawn on the host (or the generator's device) as the
    compiled `sample(...)` draws them: the same generator state keeps the same entries."""
    where = "cpu" if generator is None else generator.device
    return torch.nonzero(torch.rand(size, generator=generator, device=where) < p).flatten()


def _block(size: int, p: float, generator: torch.Generator | None) -> tuple[list[tuple[int, int]], float]:
    """over="block": round(p·size) entries (at least one) from a random start, wrapping around, as one or two
    [start, stop) ranges, and the scale size / count. The start is a multiple of step = gcd(size, count), drawn
    uniformly: each entry lies in a run of `step` that the block covers from count / step of the size / step starts,
    so it is kept with probability count / size exactly and the scaled sum is unbiased; the ranges then have at most
    2 · size / step lengths (one, without wrapping, where count divides size), so the kernels meet few shapes."""
    count = min(size, max(1, round(p * size)))
    step = math.gcd(size, count)
    where = "cpu" if generator is None else generator.device
    start = step * int(torch.randint(size // step, (1,), generator=generator, device=where))
    stop = start + count
    return [(start, min(stop, size))] + ([(0, stop - size)] if stop > size else []), size / count


def _block_sum(size: int, draw: Draw, part: Callable[[int, int], Tensor]) -> Tensor:
    """The scaled sum of `part(start, stop)` over the ranges of a `_block` of `size` entries."""
    ranges, scale = _block(size, *draw)
    parts = [part(a, b) for a, b in ranges]
    return (parts[0] if len(parts) == 1 else parts[0].add_(parts[1])).mul_(scale)


def _padded_length(count: int, size: int, p: float) -> int:
    """`count` rounded up to a multiple of a bucket, the largest power of two not above the count's standard
    deviation, and at most `size`: the kernels then see a handful of shapes instead of one per count, and PyTorch's
    CPU convolutions build a primitive for each new shape (about 0.2 ms, more than a small layer's whole weight
    gradient). At most bucket - 1 entries are added."""
    deviation = math.sqrt(size * p * (1.0 - p))
    bucket = 1 << int(math.log2(deviation)) if deviation >= 2.0 else 1
    return min(size, -(-count // bucket) * bucket)


def _padded(kept: list[int], size: int, p: float) -> list[int]:
    """`kept` and as many copies of its first entry (whose output gradient the caller zeroes) as `_padded_length`
    asks for."""
    return kept + kept[:1] * (_padded_length(len(kept), size, p) - len(kept))


def _padded_index(kept: Tensor, size: int, p: float) -> Tensor:
    """`_padded` of a tensor of indices (a batch's hundreds are cheaper kept as a tensor)."""
    extra = _padded_length(kept.numel(), size, p) - kept.numel()
    return torch.cat([kept, kept[:1].expand(extra)]) if extra else kept


def _channels_last(t: Tensor) -> torch.memory_format | None:
    """The channels-last format t is in, if it is not contiguous in the ordinary sense."""
    if t.is_contiguous():
        return None
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return None


def _gather(t: Tensor, dim: int, index: Tensor) -> Tensor:
    """t.index_select(dim, index) in t's memory format: index_select alone gives a contiguous tensor, which would
    send a channels-last layer's kernel through a reorder of every operand. Rows of a contiguous tensor are selected
    from its [N * C, rows, rest] view: on the CPU that is three times faster than index_select on axis 2."""
    memory_format = _channels_last(t)
    if memory_format is None:
        if dim == 2 and t.is_contiguous() and t.numel():
            n, c, rows = t.shape[:3]
            return t.view(n * c, rows, -1).index_select(1, index).view(n, c, index.numel(), *t.shape[3:])
        return t.index_select(dim, index)
    shape = list(t.shape)
    shape[dim] = index.numel()
    out = torch.empty(shape, dtype=t.dtype, device=t.device, memory_format=memory_format)
    return torch.index_select(t, dim, index, out=out)


# --- convolutions --------------------------------------------------------------------------------------------------

# torch.convolution's settings after (input, weight, bias): stride, padding, dilation, transposed, output padding,
# groups; convolution_backward takes the same ones after (grad_output, input, weight, bias sizes)
Settings = tuple[list[int], list[int], list[int], bool, list[int], int]


@dataclass(frozen=True, eq=False)
class _ConvPlan(_Plan):
    """A convolution's kernel settings, and those of its sampled weight gradient's kernel call."""

    settings: Settings
    kernel: tuple[int, ...]
    right: list[int] | None  # F.pad's list for the extra right padding of an asymmetric 'same', as PyTorch pads
    over: Mode
    sums: tuple[int, ...]  # the axes a bias gradient sums over
    phased: bool  # a strided convolution without dilation: its input gradient can be computed per phase
    one_tap: bool  # a kernel of one entry (1x1)
    windowed: bool  # over positions: the kept windows gathered (see `_window_settings` for the exception)

    @staticmethod
    def of(module: nn.modules.conv._ConvNd, over: Mode) -> _ConvPlan:
        dims = len(module.kernel_size)
        padding, right = _padding(module)
        settings: Settings = (
            list(module.stride), padding, list(module.dilation), bool(module.transposed),
            list(module.output_padding), module.groups,
        )  # fmt: skip
        phased = not module.transposed and max(module.stride) > 1 and max(module.dilation) == 1
        one_tap = math.prod(module.kernel_size) == 1
        sums = (0, *range(2, dims + 2))
        extra, stride = module.output_padding[1:], module.stride[1:]
        windowed = not module.transposed or all(e < s for e, s in zip(extra, stride))
        return _ConvPlan(settings, tuple(module.kernel_size), right, over, sums, phased, one_tap, windowed)

    def forward_of(self, module: nn.Module, draw: Draw) -> Callable[..., Tensor]:
        """The layer's forward, as cheap as it can be: one closure over what each call passes on."""
        state = (self, draw, self.settings)
        apply = cast(Callable[..., Tensor], _SampledConv.apply)
        batched = len(self.kernel) + 2

        def forward(input: Tensor) -> Tensor:
            if input.dim() == batched:
                return apply(input, module.weight, module.bias, state)
            return apply(input.unsqueeze(0), module.weight, module.bias, state).squeeze(0)

        if not self.settings[3]:
            return forward
        assert isinstance(module, nn.modules.conv._ConvTransposeNd)

        def forward_transposed(input: Tensor, output_size: list[int] | None = None) -> Tensor:
            """A transpose convolution's forward takes PyTorch's `output_size`, which sets its output padding."""
            if output_size is None:
                return forward(input)
            stride, padding, dilation, _, _, groups = self.settings
            extra = module._output_padding(
                input, output_size, stride, padding, list(self.kernel), len(stride), dilation
            )
            call = (self, draw, (stride, padding, dilation, True, extra, groups))
            if input.dim() == batched:
                return apply(input, module.weight, module.bias, call)
            return apply(input.unsqueeze(0), module.weight, module.bias, call).squeeze(0)

        return forward_transposed

    def input_gradient(self, gy: Tensor, x: Tensor, weight: Tensor, settings: Settings) -> Tensor:
        """The exact input gradient: convolution_backward's, or per phase (`_phases`) where PyTorch's CPU kernel was
        measured slow: a strided convolution whose kernel is one tap (a 1x1 shortcut: one phase is a matrix product,
        the others are zero), or one with little work per example (its kernel then spends its time per example)."""
        if self.phased and gy.device.type == "cpu":
            work = math.prod(gy.shape[1:]) * weight[0].numel()  # multiply-adds per example
            if self.one_tap or work < _SMALL_WORK:
                return _phases(gy, weight, settings, x)
        grad: Tensor = _BACKWARD(gy, x, weight, None, *settings, _INPUT_ONLY)[0]
        return grad if self.right is None else self.crop(grad)

    def crop(self, grad: Tensor) -> Tensor:
        """The gradient of an input F.pad padded for an asymmetric 'same', without the entries it added."""
        assert self.right is not None
        extras = self.right[1::2][::-1]  # per axis, first axis first
        kept: tuple[slice, ...] = tuple(slice(0, size - extra) for size, extra in zip(grad.shape[2:], extras))
        return grad[(slice(None), slice(None), *kept)]

    @_not_traced
    def weight_gradient(self, gy: Tensor, x: Tensor, weight: Tensor, settings: Settings, draw: Draw) -> Tensor:
        p, generator = draw
        if self.over == "block":  # the kernel on views of the kept block: no copies

            def part(a: int, b: int) -> Tensor:
                return cast(Tensor, _BACKWARD(gy[a:b], x[a:b], weight, None, *settings, _WEIGHT_ONLY)[1])

            return _block_sum(x.shape[0], draw, part)
        if self.over == "batch":
            kept = _keep(x.shape[0], p, generator)
            count = kept.numel()
            if not count:
                return torch.zeros_like(weight)
            index = _padded_index(kept, x.shape[0], p).to(x.device, non_blocking=True)
            gy, x = _gather(gy, 0, index), _gather(x, 0, index)
            gy[count:].zero_()
        elif self.windowed:
            windows = self._kept_windows(gy, x, settings, draw)
            if windows is None:
                return torch.zeros_like(weight)
            gy, x = windows
            settings = self._window_settings(settings)
        else:  # the input rows a transpose convolution keeps, the others zeroed: the full kernel's work
            kept = _keep(x.shape[2], p, generator).to(x.device, non_blocking=True)
            x = torch.zeros_like(x).index_copy_(2, kept, x.index_select(2, kept))
        result: Tensor = _BACKWARD(gy, x, weight, None, *settings, _WEIGHT_ONLY)[1]
        return result.mul_(1 / p)

    def _kept_windows(self, gy: Tensor, x: Tensor, settings: Settings, draw: Draw) -> tuple[Tensor, Tensor] | None:
        """The kept rows of the first spatial output axis, and for each the K rows of the layer's input its window
        reads (zeros where it reads padding), gathered next to each other. A transpose convolution's windows go the
        other way: its input rows are the kept ones, and the rows of its output they reach are read.
        (grad_output, input) of the ordinary convolution whose weight gradient this is; None when nothing is kept."""
        rows, read = (x, gy) if settings[3] else (gy, x)
        p = draw[0]
        kept = _keep(rows.shape[2], p, draw[1]).tolist()  # a few dozen: cheaper as Python ints from here
        if not kept:
            return None
        padded = _padded(kept, rows.shape[2], p)
        stride, padding, dilation = settings[0][0], settings[1][0], settings[2][0]
        size, taps = read.shape[2], [k * dilation - padding for k in range(self.kernel[0])]
        where = [row * stride + tap for row in padded for tap in taps]
        outside = [j for j, entry in enumerate(where) if not 0 <= entry < size]
        device = read.device
        index = torch.tensor([min(max(entry, 0), size - 1) for entry in where]).to(device, non_blocking=True)
        gathered = _gather(read, 2, index)
        if outside:
            gathered.index_fill_(2, torch.tensor(outside).to(device, non_blocking=True), 0)
        chosen = _gather(rows, 2, torch.tensor(padded).to(device, non_blocking=True))
        chosen[:, :, len(kept) :].zero_()
        return chosen, gathered

    def _window_settings(self, settings: Settings) -> Settings:
        """The gathered windows' kernel settings: stride K, no padding and no dilation on the first axis. A transpose
        convolution's weight gradient is then an ordinary convolution's, its input and output gradient swapped (its
        weight [in, out / groups, K...] is that convolution's layout). That convolution has as many windows on a
        later axis as the transpose convolution's input has entries unless its output padding reaches its stride
        (allowed where the dilation is larger): such a layer zeroes the rows it drops instead."""
        stride, padding, dilation, _, _, groups = settings
        dims = len(self.kernel)
        return [self.kernel[0], *stride[1:]], [0, *padding[1:]], [1, *dilation[1:]], False, [0] * dims, groups


def _phases(gy: Tensor, weight: Tensor, settings: Settings, x: Tensor) -> Tensor:
    """The input gradient of a strided convolution (dilation 1) as one stride-1 convolution of the output gradient
    per phase: the input entries i with (i + padding) % stride == r receive the taps k = r, r + stride, ... only, so
    they are a full correlation of gy with those taps, flipped. For little work per example, or a 1x1 kernel (one
    phase with a tap), PyTorch's CPU kernels do that in about half the time of its transposed convolution."""
    stride, padding, _, _, _, groups = settings
    out_channels, per_group = weight.shape[:2]
    kernel = weight.shape[2:]
    dims = len(kernel)
    # the transposed problem's weight [in, out / groups, K...], per group
    flipped = (
        weight.reshape(groups, out_channels // groups, per_group, *kernel)
        .transpose(1, 2)
        .reshape(per_group * groups, out_channels // groups, *kernel)
    )
    grad = torch.zeros_like(x, dtype=gy.dtype)  # in x's memory format
    sizes = x.shape[2:]
    for phase in itertools.product(*(range(s) for s in stride)):
        taps = flipped[(slice(None), slice(None), *(slice(r, None, s) for r, s in zip(phase, stride)))]
        if 0 in taps.shape[2:]:  # a stride wider than the kernel: these entries are read by no tap
            continue
        starts = [(r - p) % s for r, p, s in zip(phase, padding, stride)]
        counts = [len(range(start, size, s)) for start, size, s in zip(starts, sizes, stride)]
        if 0 in counts:
            continue
        extents = taps.shape[2:]
        full = torch.convolution(
            gy, taps.flip(list(range(2, dims + 2))).contiguous(), None, [1] * dims, [e - 1 for e in extents],
            [1] * dims, False, [0] * dims, groups,
        )  # fmt: skip
        target = grad[(slice(None), slice(None), *(slice(start, None, s) for start, s in zip(starts, stride)))]
        firsts = [(start + p - r) // s for start, p, r, s in zip(starts, padding, phase, stride)]
        source, into = [], []
        for first, count, size in zip(firsts, counts, full.shape[2:]):
            low, high = max(first, 0), min(first + count, size)
            source.append(slice(low, high))
            into.append(slice(low - first, high - first))
        target[(slice(None), slice(None), *into)] = full[(slice(None), slice(None), *source)]
    return grad


def _padding(module: nn.modules.conv._ConvNd) -> tuple[list[int], list[int] | None]:
    """Symmetric padding per axis and, for a 'same' that needs one more entry on the right (an odd extent), F.pad's
    list for it: PyTorch pads the input so, then convolves with the left padding."""
    padding = module.padding
    if not isinstance(padding, str):
        return list(padding), None
    if padding == "valid":
        return [0] * len(module.kernel_size), None
    totals = [d * (k - 1) for d, k in zip(module.dilation, module.kernel_size)]
    right: list[int] = []
    for total in reversed(totals):  # F.pad lists the last axis first
        right += [0, total % 2]
    return [total // 2 for total in totals], (right if any(right) else None)


ConvState = tuple[_ConvPlan, Draw, Settings]


class _SampledConv(torch.autograd.Function):
    """y = the layer's convolution, exactly; in the backward pass the exact input and bias gradients and the sampled
    weight gradient. The old-style forward(ctx, ...) is the cheaper call."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, state: ConvState) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):
            x, weight, bias = _autocast(x, weight, bias)
        right = state[0].right
        if right is not None:
            x = F.pad(x, right)
        ctx.save_for_backward(x, weight)
        ctx.state = state
        return torch.convolution(x, weight, bias, *state[2])

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        plan, draw, settings = ctx.state
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = plan.input_gradient(gy, x, weight, settings)
        if ctx.needs_input_grad[1]:
            grad_w = plan.weight_gradient(gy, x, weight, settings, draw)
        if ctx.needs_input_grad[2]:
            grad_b = gy.sum(plan.sums)
        return grad_x, grad_w, grad_b, None


# --- linear layers -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _LinearPlan(_Plan):
    """A linear layer over the batch: each row of its input (the leading axes flattened) kept with probability p, or
    (block) a random contiguous block of the rows."""

    block: bool

    def forward_of(self, module: nn.Module, draw: Draw) -> Callable[..., Tensor]:
        apply = cast(Callable[..., Tensor], _SampledLinear.apply)
        state = (draw, self.block)

        def forward(input: Tensor) -> Tensor:
            return apply(input, module.weight, module.bias, state)

        return forward


LinearState = tuple[Draw, bool]  # the draw, and whether a block of rows is kept


class _SampledLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, state: LinearState) -> Tensor:
        if torch.is_autocast_enabled(x.device.type):
            x, weight, bias = _autocast(x, weight, bias)
        ctx.save_for_backward(x, weight)
        ctx.state = state
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = gy.matmul(weight)
        rows = gy.reshape(-1, gy.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_w = _linear_weight(rows, x.reshape(-1, x.shape[-1]), weight, *ctx.state)
        if ctx.needs_input_grad[2]:
            grad_b = rows.sum(0)
        return grad_x, grad_w, grad_b, None


@_not_traced
def _linear_weight(gy: Tensor, x: Tensor, weight: Tensor, draw: Draw, block: bool = False) -> Tensor:
    p, generator = draw
    if block:
        return _block_sum(x.shape[0], draw, lambda a, b: gy[a:b].t().mm(x[a:b]))
    kept = _keep(x.shape[0], p, generator)
    if kept.numel() == 0:
        return torch.zeros_like(weight)
    kept = kept.to(x.device, non_blocking=True)
    return gy.index_select(0, kept).t().mm(x.index_select(0, kept)).mul_(1 / p)

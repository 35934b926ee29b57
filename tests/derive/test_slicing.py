"""`slice(y, leg=start:stop:step)`: the restricted diagram equals the full result sliced, and computes less.

The references are PyTorch's own convolutions and their gradients (`torch.nn.grad`), sliced after the fact;
the legs of a grouped axis such as `(g d)` are sliced on the split tensor `[.., g, d, ..]`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import tncompiler
from tncompiler.errors import TncError
from tncompiler.ir.network import Diagram
from tncompiler.ir.values import ConvPattern, size_symbol, view_shape
from tncompiler.order import plan_network
from tncompiler.passes.pipeline import run_pipeline

Tensor = torch.Tensor

# A grouped 1-d convolution with bias; the batch has a size, so it can be sliced too. o1 = (11 + 4 - 2 - 1) // 2 + 1.
CONV1D = """
index n = 3
index g = 2, c = 3, d = 4
index i1 = 11, k1 = 3
pattern p1(i1, o1, k1) = conv(stride=2, padding=2)
input x[n, (g c), i1]
input w[(g d), c, k1]
input b[(g d)]
y[n, (g d), o1] = x[n, (g c), i1] * p1(i1, o1, k1) * w[(g d), c, k1] + b[(g d)]
gw = vjp(y, w)
gx = vjp(y, x)
"""
CONV1D_SIZES = {"n": 3, "g": 2, "c": 3, "d": 4, "i1": 11, "k1": 3, "o1": 7}
CONV1D_ARGS = {"stride": 2, "padding": 2, "groups": 2}

# A grouped 2-d convolution with bias, stride, dilation and asymmetric padding; the batch is bound at call time.
CONV2D = """
index n
index g = 2, c = 2, d = 3
index i1 = 10, i2 = 9, k1 = 3, k2 = 2
pattern p1(i1, o1, k1) = conv(stride=2, padding=1)
pattern p2(i2, o2, k2) = conv(padding=(1, 0), dilation=2)
input x[n, (g c), i1, i2]
input w[(g d), c, k1, k2]
input b[(g d)]
y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2] + b[(g d)]
gw = vjp(y, w)
gx = vjp(y, x)
"""
BATCH = 4
CONV2D_SIZES = {"n": BATCH, "g": 2, "c": 2, "d": 3, "i1": 10, "i2": 9, "k1": 3, "k2": 2, "o1": 5, "o2": 8}


def _generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def conv1d_arguments() -> dict[str, Tensor]:
    g = _generator()
    return {
        "x": torch.randn(3, 6, 11, generator=g, dtype=torch.float64),
        "w": torch.randn(8, 3, 3, generator=g, dtype=torch.float64),
        "b": torch.randn(8, generator=g, dtype=torch.float64),
        "grad_y": torch.randn(3, 8, 7, generator=g, dtype=torch.float64),
    }


def conv1d_reference(name: str, a: dict[str, Tensor]) -> Tensor:
    if name == "y":
        return F.conv1d(a["x"], a["w"], a["b"], **CONV1D_ARGS)
    if name == "gw":
        return torch.nn.grad.conv1d_weight(a["x"], a["w"].shape, a["grad_y"], **CONV1D_ARGS)
    return torch.nn.grad.conv1d_input(a["x"].shape, a["w"], a["grad_y"], **CONV1D_ARGS)


def conv2d_arguments() -> dict[str, Tensor]:
    g = _generator(1)
    return {
        "x": torch.randn(BATCH, 4, 10, 9, generator=g, dtype=torch.float64),
        "w": torch.randn(6, 2, 3, 2, generator=g, dtype=torch.float64),
        "b": torch.randn(6, generator=g, dtype=torch.float64),
        "grad_y": torch.randn(BATCH, 6, 5, 8, generator=g, dtype=torch.float64),
    }


def conv2d_reference(name: str, a: dict[str, Tensor]) -> Tensor:
    """F.conv2d with the asymmetric padding of p2 (1 left, 0 right) done by F.pad; gradients through autograd."""
    x = a["x"].clone().requires_grad_()
    w = a["w"].clone().requires_grad_()
    y = F.conv2d(F.pad(x, (1, 0, 1, 1)), w, a["b"], stride=(2, 1), dilation=(1, 2), groups=2)
    if name == "y":
        return y.detach()
    (grad,) = torch.autograd.grad(y, w if name == "gw" else x, a["grad_y"])
    return grad


def restrict(
    full: Tensor, axes: tuple[tuple[str, ...], ...], sizes: dict[str, int], slices: dict[str, slice]
) -> Tensor:
    """`full`, laid out as `axes` (one or more legs per axis), with each leg in `slices` sliced."""
    legs = [leg for axis in axes for leg in axis]
    split = full.reshape([sizes[leg] for leg in legs])[tuple(slices.get(leg, slice(None)) for leg in legs)]
    shape, start = [], 0
    for axis in axes:
        shape.append(math.prod(split.shape[start : start + len(axis)]))
        start += len(axis)
    return split.reshape(shape)


def parse_slices(text: str) -> dict[str, slice]:
    """Parse "o1=1:5:2, d=::2" into {"o1": slice(1, 5, 2), "d": slice(None, None, 2)}."""
    slices = {}
    for item in text.split(","):
        leg, value = (part.strip() for part in item.split("="))
        parts = [int(p) if p else None for p in value.split(":")]
        slices[leg] = slice(*(parts + [None] * (3 - len(parts))))
    return slices


def check_slice(
    source: str,
    base: str,
    slices: str,
    arguments: dict[str, Tensor],
    reference: Callable[[str, dict[str, Tensor]], Tensor],
    sizes: dict[str, int],
) -> None:
    text = source + f"s = slice({base}, {slices})\n"
    program = tncompiler.build_program(text)
    module = tncompiler.load_source(text)
    diagram = program.diagram(base)
    assert [a.name for a in program.diagram("s").arguments] == [a.name for a in diagram.arguments]
    args = [arguments[a.name] for a in diagram.arguments]
    expected = restrict(reference(base, arguments), diagram.layout.axes, sizes, parse_slices(slices))
    result = module.s(*args)
    assert result.shape == expected.shape
    assert result.dtype == torch.float64
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10 * expected.abs().max().item())
    # float32 arguments give a float32 result of the same values
    result32 = module.s(*[a.float() for a in args])
    assert result32.dtype == torch.float32
    torch.testing.assert_close(result32.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


# --- values: slices of the output positions, channels, groups and the batch --------------------------------------

CONV1D_CASES = [
    ("y", "o1=1:5:2"),  # start, stop, step
    ("y", "o1=-3:"),  # negative start: the last three positions
    ("y", "o1=:-1:3"),  # negative stop with a step
    ("y", "o1=-6:-1:2"),
    ("y", "o1=0:1"),  # one position, whose window reaches into the padding
    ("y", "o1=6:7"),  # the last position
    ("y", "o1=-100:100"),  # clipped to the axis, as in Python
    ("y", "d=1:3"),  # out-channels inside the grouped axis (g d)
    ("y", "d=::3"),
    ("y", "g=1:"),  # one group of the grouped axis
    ("y", "g=0:1, d=-1:"),
    ("y", "n=::2"),  # the batch, declared with a size
    ("y", "n=1:2, o1=2:6:3, d=::2"),
    ("gw", "k1=1:"),  # a weight VJP: no batch leg in the result
    ("gw", "k1=::2, c=1:"),
    ("gw", "d=2:3, k1=2:3"),
    ("gw", "g=1:, c=0:1"),
    ("gx", "i1=2:9:3"),  # an input VJP: slices of the input positions
    ("gx", "i1=-4:"),
    ("gx", "c=::2, i1=::4"),
    ("gx", "n=0:2, i1=1:10"),
]


@pytest.mark.parametrize(("base", "slices"), CONV1D_CASES, ids=[f"{b}[{s}]" for b, s in CONV1D_CASES])
def test_conv1d_slices_equal_the_sliced_result(base: str, slices: str) -> None:
    check_slice(CONV1D, base, slices, conv1d_arguments(), conv1d_reference, CONV1D_SIZES)


CONV2D_CASES = [
    ("y", "o1=1:4"),
    ("y", "o2=::3"),
    ("y", "o1=-2:, o2=1:-1:2"),
    ("y", "d=1:, o2=0:1"),
    ("y", "g=1:2, d=0:2, o1=::2, o2=-3:"),
    ("gw", "k1=1:3"),  # a weight VJP sliced on the kernel positions
    ("gw", "k2=1:, d=::2"),
    ("gw", "g=0:1, k1=::2, k2=0:1"),
    ("gx", "i1=2:8"),  # an input VJP sliced on the input positions
    ("gx", "i1=::3, i2=-4:"),
    ("gx", "g=1:, c=1:, i2=1:8:2"),
]


@pytest.mark.parametrize(("base", "slices"), CONV2D_CASES, ids=[f"{b}[{s}]" for b, s in CONV2D_CASES])
def test_conv2d_slices_equal_the_sliced_result(base: str, slices: str) -> None:
    check_slice(CONV2D, base, slices, conv2d_arguments(), conv2d_reference, CONV2D_SIZES)


def test_the_sliced_layout_primes_the_sliced_legs() -> None:
    program = tncompiler.build_program(CONV2D + "s = slice(y, o1=1:4, d=::2)\n")
    s = program.diagram("s")
    assert s.layout.text() == "[n, (g d'), o1', o2]"
    assert (s.sizes["d'"], s.sizes["o1'"], s.sizes["o2"]) == (2, 3, 8)
    module = tncompiler.load_source(CONV2D + "s = slice(y, o1=1:4, d=::2)\n")
    a = conv2d_arguments()
    assert module.s(a["x"], a["w"], a["b"]).shape == (BATCH, 4, 3, 8)
    assert "s[n, (g d'), o1', o2]" in (module.s.__doc__ or "")


def test_a_slice_of_a_slice_composes() -> None:
    text = CONV1D + "s = slice(slice(y, o1=1:7), d=::2)\n"
    module = tncompiler.load_source(text)
    a = conv1d_arguments()
    expected = conv1d_reference("y", a).reshape(3, 2, 4, 7)[:, :, ::2, 1:7].reshape(3, 4, 6)
    torch.testing.assert_close(module.s(a["x"], a["w"], a["b"]), expected, rtol=0, atol=1e-10)


def test_one_entry_slice_of_an_input_leg() -> None:
    """BUG. Minimal reproducer: slice(y, i=2:3) of `y[i] = z[o] * p(i, o, k) * w[k]` returns 4 entries.

    The size-1 open leg i' is squeezed off the selection, so it leaves the term's sizes; narrow-input then takes
    the 'fresh' name i' for its narrowed input leg, and the result is broadcast over that leg's 4 entries."""
    text = """
index i = 5, k = 2
pattern p(i, o, k) = conv(stride=3, padding=1)
input z[o]
input w[k]
y[i] = z[o] * p(i, o, k) * w[k]
s = slice(y, i=2:3)
"""
    module = tncompiler.load_source(text)
    z, w = torch.randn(2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    assert module.s(z, w).shape == (1,)
    torch.testing.assert_close(module.s(z, w), module.y(z, w)[2:3])


# A strided 1-d convolution whose windows never reach the last input position (so narrow-input fires on i1).
STRIDED = """
index n, c = 2, d = 3
index i1 = 11, k1 = 2
pattern p1(i1, o1, k1) = conv(stride=3, padding=1)
input x[n, c, i1]
input w[d, c, k1]
y[n, d, o1] = x[n, c, i1] * p1(i1, o1, k1) * w[d, c, k1]
gx = vjp(y, x)
"""


def test_a_wider_input_slice_of_the_input_vjp() -> None:
    module = tncompiler.load_source(STRIDED + "s = slice(gx, i1=3:5)\n")
    w, grad_y = torch.randn(3, 2, 2, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    expected = torch.nn.grad.conv1d_input((2, 2, 11), w, grad_y, stride=3, padding=1)[..., 3:5]
    torch.testing.assert_close(module.s(w, grad_y), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("position", [0, 5, 10])
def test_one_entry_slice_of_an_input_vjp(position: int) -> None:
    """BUG: every one-entry slice of gx here has shape [2, 2, 10] instead of [2, 2, 1]."""
    module = tncompiler.load_source(STRIDED + f"s = slice(gx, i1={position}:{position + 1})\n")
    w, grad_y = torch.randn(3, 2, 2, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    expected = torch.nn.grad.conv1d_input((2, 2, 11), w, grad_y, stride=3, padding=1)[..., position : position + 1]
    result = module.s(w, grad_y)
    assert result.shape == expected.shape
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10)


# --- errors -------------------------------------------------------------------------------------------------------

ERRORS = [
    ("s = slice(y, o1=3:3)\n", "is empty"),
    ("s = slice(y, o1=7:)\n", "is empty"),
    ("s = slice(y, o1=-1:0)\n", "is empty"),
    ("s = slice(y, q=0:1)\n", "'q' is not a leg of 'y'"),
    ("s = slice(y, i1=0:1)\n", "'i1' is not a leg of 'y'"),  # a summed index, not a leg of the result
    ("s = slice(gw, o1=0:1)\n", "'o1' is not a leg of 'gw'"),
    ("s = slice(y, o1=::0)\n", "step must be at least 1"),
    ("s = slice(y, o1=::-1)\n", "step must be at least 1"),
    ("s = slice(y, o1=2)\n", "takes a slice"),
    ("s = slice(y)\n", "needs at least one leg"),
]


@pytest.mark.parametrize(("line", "fragment"), ERRORS, ids=[line.strip() for line, _ in ERRORS])
def test_slice_errors(line: str, fragment: str) -> None:
    with pytest.raises(TncError, match=re.escape(fragment)) as info:
        tncompiler.compile_source(CONV1D + line, "f.tnd")
    assert info.value.span is not None
    assert str(info.value).startswith(f"f.tnd:{CONV1D.count(chr(10)) + 1}:")


def test_slicing_a_call_time_sized_leg_is_an_error() -> None:
    with pytest.raises(TncError, match="slicing 'n' needs its size known in the file"):
        tncompiler.compile_source(CONV2D + "s = slice(y, n=0:2)\n")


def test_a_leg_sliced_twice_is_an_error() -> None:
    """BUG: `slice(y, o1=0:1, o1=1:3)` compiles (as o1=1:3); the same holds for any keyword of any transform."""
    with pytest.raises(TncError):
        tncompiler.compile_source(CONV1D + "s = slice(y, o1=0:1, o1=1:3)\n")


# --- less work: the slice reaches the patterns and the inputs ------------------------------------------------------
#
# The rewrite rules push each slice into the index patterns (as their own stride, padding and sizes) and into the
# inputs (as views); later passes may lower what is left to PyTorch's kernels. So the structure is checked on the
# diagram after the `simplify` stage, and the work on what the generated function actually runs (FLOPs of the
# matrix products and convolutions PyTorch executes, by torch.utils.flop_counter).


def stage(source: str, name: str, stage_name: str = "simplify") -> Diagram:
    stages = run_pipeline(tncompiler.build_program(source).diagram(name))
    return next(s.diagram for s in stages if s.name == stage_name)


def pattern_sizes(diagram: Diagram) -> list[tuple[int, int, int]]:
    """(I, O, K) of every index pattern of the diagram."""
    return sorted(
        (int(f.pattern.in_size), int(f.pattern.out_size), f.pattern.kernel_size)
        for term in diagram.terms
        for f in term.factors
        if isinstance(f.pattern, ConvPattern)
    )


def input_entries(diagram: Diagram, name: str) -> int:
    """How many entries of argument `name` the first term reads (after the slices of its view), at a batch of 32."""
    term = diagram.terms[0]
    factor = next(f for f in term.factors if f.kind == "input" and f.name == name)
    shape = view_shape(factor.view) if factor.view else tuple(term.size(leg) for leg in factor.legs)
    return int(sympy.Mul(*[sympy.sympify(s) for s in shape]).subs({size_symbol("n"): 32}))


def plan_flops(diagram: Diagram) -> float:
    """The multiply-adds of the best contraction order of every term, at a batch of 32."""
    total = sum(sympy.sympify(plan_network(term)[0].flops) for term in diagram.terms)
    return float(sympy.sympify(total).subs({size_symbol("n"): 32}))


def runtime_flops(function: Callable[..., Tensor], *arguments: Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        function(*arguments)
    return int(counter.get_total_flops())


def conv_pattern_calls(code: str, function: str) -> list[tuple[int, ...]]:
    """The (I, O, K, stride, pad_left, dilation) of each `_conv_pattern(...)` call in one generated function."""
    body = code.split(f"\ndef {function}(", 1)[1].split("\ndef ", 1)[0]
    calls = re.findall(r"_conv_pattern\(([-\d]+(?:, [-\d]+){5}), device, dtype\)", body)
    return [tuple(int(v) for v in call.split(", ")) for call in calls]


def test_an_output_slice_becomes_a_smaller_pattern_that_reads_less_input() -> None:
    source = CONV2D + "s = slice(y, o1=1:3)\n"
    full, sliced = stage(source, "y"), stage(source, "s")
    assert pattern_sizes(full) == [(9, 8, 2), (10, 5, 3)]
    # o1 = 1:3 becomes the pattern's own output size and padding, and only rows 1..5 of x are read
    assert pattern_sizes(sliced) == [(5, 2, 3), (9, 8, 2)]
    assert input_entries(sliced, "x") * 2 == input_entries(full, "x")
    assert plan_flops(sliced) < 0.4 * plan_flops(full)
    notes = [c for s in run_pipeline(tncompiler.build_program(source).diagram("s")) for c in s.changes]
    assert any(note.startswith("pattern-slice:") for note in notes)
    assert any(note.startswith("narrow-input:") for note in notes)
    # the generated function: it builds the smaller pattern where it builds one, and runs less
    code = tncompiler.compile_source(source)
    for call in conv_pattern_calls(code, "s"):
        assert call[:3] in ((5, 2, 3), (9, 8, 2))
    module, a = tncompiler.load_source(source), conv2d_arguments()
    assert runtime_flops(module.s, a["x"], a["w"], a["b"]) < 0.5 * runtime_flops(module.y, a["x"], a["w"], a["b"])


def test_a_strided_output_slice_becomes_the_pattern_stride() -> None:
    source = CONV1D + "s = slice(y, o1=::3)\n"
    [(i, o, k)] = pattern_sizes(stage(source, "s"))
    assert (o, k) == (3, 3) and i <= 11
    pattern = next(f.pattern for f in stage(source, "s").terms[0].factors if isinstance(f.pattern, ConvPattern))
    assert (pattern.stride, pattern.dilation) == (6, 1)
    assert plan_flops(stage(source, "s")) < 0.5 * plan_flops(stage(source, "y"))
    module, a = tncompiler.load_source(source), conv1d_arguments()
    assert runtime_flops(module.s, a["x"], a["w"], a["b"]) < 0.5 * runtime_flops(module.y, a["x"], a["w"], a["b"])


def test_a_channel_slice_reads_a_slice_of_the_weight_and_bias() -> None:
    source = CONV2D + "s = slice(y, d=1:3)\n"
    full, sliced = stage(source, "y"), stage(source, "s")
    assert input_entries(sliced, "w") * 3 == input_entries(full, "w") * 2
    bias = next(f for f in sliced.terms[1].factors if f.name == "b")
    assert bias.view is not None and view_shape(bias.view) == (2, 2)
    assert plan_flops(sliced) < plan_flops(full)  # the products of x with the patterns do not depend on d
    module, a = tncompiler.load_source(source), conv2d_arguments()
    assert runtime_flops(module.s, a["x"], a["w"], a["b"]) < 0.8 * runtime_flops(module.y, a["x"], a["w"], a["b"])


def test_a_one_channel_slice_reads_a_slice_of_the_weight() -> None:
    """The one-entry slice d=0:1 is a view of w (once the squeeze rule took it first and w was read whole)."""
    source = CONV2D + "s = slice(y, d=0:1)\n"
    assert input_entries(stage(source, "s"), "w") * 3 == input_entries(stage(source, "y"), "w")


def test_a_kernel_slice_of_the_weight_vjp_computes_less() -> None:
    source = CONV2D + "s = slice(gw, k1=1:2)\n"
    assert plan_flops(stage(source, "s")) < 0.5 * plan_flops(stage(source, "gw"))
    module, a = tncompiler.load_source(source), conv2d_arguments()
    assert runtime_flops(module.s, a["x"], a["grad_y"]) < 0.5 * runtime_flops(module.gw, a["x"], a["grad_y"])


def test_an_input_slice_of_the_input_vjp_becomes_a_smaller_pattern() -> None:
    source = CONV2D + "s = slice(gx, i1=0:4)\n"
    full, sliced = stage(source, "gx"), stage(source, "s")
    assert (10, 5, 3) in pattern_sizes(full)
    # rows i1 < 4 are read by windows o1 = 0, 1, 2 only (stride 2, padding 1): narrow-output keeps those
    assert (4, 3, 3) in pattern_sizes(sliced) and (10, 5, 3) not in pattern_sizes(sliced)
    assert plan_flops(sliced) < 0.5 * plan_flops(full)


def test_an_input_slice_of_the_input_vjp_runs_less() -> None:
    """Only grad_y[:, :, 0:3] reaches i1 < 4: the transpose kernel runs on that slice, not on all of grad_y."""
    source = CONV2D + "s = slice(gx, i1=0:4)\n"
    module, a = tncompiler.load_source(source), conv2d_arguments()
    assert runtime_flops(module.s, a["w"], a["grad_y"]) < 0.75 * runtime_flops(module.gx, a["w"], a["grad_y"])


# --- slices in index lists: x[n, c, 0:8] keeps the declared index, zero outside the slice ---------------------------

INDEX_LIST = """
index n
index c = 2, d = 3, i = 12, k = 3
pattern p(i, o, k) = conv(stride=1, padding=1)
input x[n, c, i]
input w[d, c, k]
y[n, d, o] = x[n, c, 0:8] * p(i, o, k) * w[d, c, k]
z[n, c, i] = x[n, c, ::2]
u[n, d] = y[n, d, 2:5] * delta(o)
gw = vjp(y, w)
"""


def _masked(x: Tensor, keep: slice) -> Tensor:
    out = torch.zeros_like(x)
    out[..., keep] = x[..., keep]
    return out


@pytest.mark.parametrize("rewrite", [True, False], ids=["rewritten", "as-written"])
def test_a_slice_in_an_index_list_masks_the_axis(rewrite: bool) -> None:
    module = tncompiler.load_source(INDEX_LIST, rewrite=rewrite)
    g = torch.Generator().manual_seed(0)
    x, w = (
        torch.randn(2, 2, 12, generator=g, dtype=torch.float64),
        torch.randn(3, 2, 3, generator=g, dtype=torch.float64),
    )
    y = torch.nn.functional.conv1d(_masked(x, slice(0, 8)), w, padding=1)
    torch.testing.assert_close(module.y(x, w), y, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(module.z(x), _masked(x, slice(None, None, 2)), rtol=0, atol=0)
    torch.testing.assert_close(module.u(x, w), y[..., 2:5].sum(-1), rtol=1e-10, atol=1e-12)
    grad = torch.randn(2, 3, 12, generator=g, dtype=torch.float64)
    expected = torch.nn.grad.conv1d_weight(_masked(x, slice(0, 8)), w.shape, grad, padding=1)
    torch.testing.assert_close(module.gw(x, grad), expected, rtol=1e-10, atol=1e-12)


def test_a_slice_in_an_index_list_reads_only_the_slice() -> None:
    code = tncompiler.compile_source(INDEX_LIST)
    body = code[code.index("def y(") : code.index("def z(")]
    assert "x[:, :, 0:8]" in body and "_select(" not in body


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("v[n, d] = x[n, c, 0:0] * delta(c) * delta(i) * delta(d)", "is empty"),
        ("v[n, c] = x[n, c, ::0] * delta(i)", "step must be at least 1"),
    ],
)
def test_bad_slices_in_index_lists(line: str, fragment: str) -> None:
    with pytest.raises(TncError, match=fragment):
        tncompiler.compile_source(INDEX_LIST + line + "\n")

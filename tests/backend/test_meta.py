"""Generated code reads no data of the arguments' device on the host: every function of every example, and every
operation of a sweep of layers (sampled ones included, with p= and count=), runs on `meta` tensors, which hold no
data at all, and returns `meta` results of the shapes a CPU call returns."""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import sympy
import torch

import tncompiler
from tests import cases
from tests.cases import Conv, conv
from tncompiler.ir.network import Diagram

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OPEN = 7  # the value of every size an example leaves open

LAYERS: dict[str, Conv] = {
    "1d k3 s2 d2 p2 bias": conv([11], [3], stride=2, dilation=2, padding=2, bias=True),
    "1d k4 same": conv([8], [4], padding="same"),
    "2d k3 s2 p1 g2": conv([8, 7], [3, 3], stride=2, padding=1, groups=2, bias=True),
    "2d depthwise": conv([6, 6], [3, 3], padding=1, groups=3, c_in=1, c_out=2),
    "2d k1 s2": conv([8, 8], [1, 1], stride=2),
    "2d k4 s4": conv([8, 12], [4, 4], stride=4),
    "2d asymmetric": conv([7, 6], [3, 2], stride=[2, 1], padding=[(2, 0), (1, 1)]),
    "3d k3 s2 p1": conv([5, 6, 6], [3, 3, 3], stride=2, padding=1),
    "transpose 2d k3 s2 p1": conv([3, 4], [3, 3], stride=2, padding=1, output_padding=1, transpose=True),
}
# Tensor dropout of every kind the kernels and contractions handle: positions and batch of the weight VJP, the
# input VJP's positions, the forward pass's channels (a contraction on gathered tensors), both sampling rules.
SAMPLED = (
    "sw_o = sample(vjp(y, w), index=o1, p=0.5)",
    "sw_oc = sample(vjp(y, w), index=o1, count=2)",
    "sw_n = sample(vjp(y, w), index=n, count=1)",
    "sx_o = sample(vjp(y, x), index=o1, p=0.5)",
    "sx_oc = sample(vjp(y, x), index=o1, count=1)",
    "sy_c = sample(y, index=c, count=1)",
    "sw_2 = sample(sample(vjp(y, w), index=n, p=0.5), index=o1, count=1)",
)


def sampled(case: Conv) -> list[str]:
    """SAMPLED for the case: a transpose convolution's input VJP sums over i1, not o1 (its open leg)."""
    return [line.replace("(y, x), index=o1", "(y, x), index=i1") if case.transpose else line for line in SAMPLED]


def _on_meta(value: object) -> object:
    return torch.empty_like(value, device="meta") if isinstance(value, torch.Tensor) else value


def _agree_on_meta(function: Callable[..., torch.Tensor], args: list[torch.Tensor], keywords: dict[str, int]) -> None:
    """The function on meta copies of `args` gives a meta result of the shape it gives on the CPU."""
    expected = function(*args, **keywords)
    result = function(*[_on_meta(a) for a in args], **keywords)
    assert result.device.type == "meta"
    assert result.shape == expected.shape and result.dtype == expected.dtype


# -- the examples ----------------------------------------------------------------------------------------------------


def _shapes(diagram: Diagram) -> tuple[list[tuple[int, ...]], dict[str, int]]:
    """The diagram's argument shapes with every open size set to OPEN (an open pattern output: what the pattern
    gives), and the values of the open sizes by name."""
    symbols = {
        s: OPEN
        for size in diagram.sizes.values()
        if isinstance(size, sympy.Expr)
        for s in size.free_symbols
        if "(" not in str(s)  # not a number of kept entries
    }
    for rule in diagram.size_rules:  # an open output size follows from its input's
        out = sympy.sympify(diagram.sizes.get(rule.legs[1], 0))
        if out in symbols:
            symbols[out] = int(sympy.sympify(rule.formula).subs(symbols))

    def size(leg: str) -> int:
        return int(sympy.sympify(diagram.sizes[leg]).subs(symbols))

    shapes = [tuple(math.prod(size(leg) for leg in axis) for axis in a.layout.axes) for a in diagram.arguments]
    return shapes, {str(s): value for s, value in symbols.items()}


def _example_functions() -> list[tuple[str, str]]:
    found = []
    for path in sorted(EXAMPLES.glob("*.tnd")):
        program = tncompiler.build_program(path.read_text(), path.name)
        found += [(path.name, d.name) for d in program.diagrams if not d.name.startswith("_")]
    return found


@pytest.fixture(scope="module")
def examples() -> dict[str, tuple[types.ModuleType, tncompiler.Program]]:
    return {
        path.name: (tncompiler.load(path), tncompiler.build_program(path.read_text(), path.name))
        for path in sorted(EXAMPLES.glob("*.tnd"))
    }


@pytest.mark.parametrize(("example", "name"), _example_functions(), ids=[f"{e}:{n}" for e, n in _example_functions()])
def test_every_example_function_runs_on_meta(
    examples: dict[str, tuple[types.ModuleType, tncompiler.Program]], example: str, name: str
) -> None:
    module, program = examples[example]
    function = getattr(module, name)
    shapes, sizes = _shapes(program.diagram(name))
    generator = torch.Generator().manual_seed(0)
    args = [torch.randn(shape, generator=generator, dtype=torch.float64) for shape in shapes]
    taken = inspect.signature(function).parameters
    _agree_on_meta(function, args, {key: value for key, value in sizes.items() if key in taken})


def test_the_sampled_autograd_class_runs_on_meta() -> None:
    module = tncompiler.load(EXAMPLES / "conv2d_sampled.tnd")
    x, w, b = (torch.empty(shape, device="meta", requires_grad=True) for shape in ((2, 3, 10, 8), (4, 3, 3, 3), (4,)))
    module.y_sampled_autograd.apply(x, w, b, None, p=0.25).sum().backward()
    assert w.grad is not None and w.grad.device.type == "meta" and w.grad.shape == w.shape


# -- a sweep of layers ------------------------------------------------------------------------------------------------


def _sweep() -> list[tuple[str, str]]:
    return [(layer, level) for layer in LAYERS for level in cases.OPEN_LEVELS]


@pytest.mark.parametrize(("layer", "level"), _sweep(), ids=[f"{layer}-{level}" for layer, level in _sweep()])
def test_every_operation_of_a_layer_runs_on_meta(layer: str, level: str) -> None:
    case = LAYERS[layer]
    module = cases.load(cases.source(case, cases.OPEN_LEVELS[level], [*cases.statements(case), *sampled(case)]))
    args, sizes = cases.all_arguments(case), cases.keyword_sizes(case)
    for name in module.__all__:
        function = getattr(module, name)
        if not inspect.isfunction(function):
            continue  # the autograd class
        parameters = inspect.signature(function).parameters.values()
        positional = [args[p.name] for p in parameters if p.kind is p.POSITIONAL_OR_KEYWORD]
        keywords = {p.name: sizes[p.name] for p in parameters if p.kind is p.KEYWORD_ONLY and p.name in sizes}
        _agree_on_meta(function, positional, keywords)

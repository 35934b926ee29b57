"""`sample(z, index=c, p=...)`: tensor dropout on a summed index, an unbiased estimate of z that computes less.

Checks: p = 1 is exact; the mean over many draws converges to the exact value (entrywise, within five standard
errors estimated from the draws); at p = 0.25 the planned work is about a quarter; `generator=` makes draws
reproducible; and what cannot be sampled is refused.
"""

from __future__ import annotations

import functools
import inspect
import math
import types

import pytest
import sympy
import torch
import torch.nn.functional as F

import tncompiler
from tests.cases import GROUPED_CONV, GROUPED_LAYER
from tncompiler.cost import native_flops
from tncompiler.errors import TncError
from tncompiler.ir.network import Diagram
from tncompiler.ir.values import kept_symbol, p_symbol, size_symbol
from tncompiler.order import plan_network
from tncompiler.passes.pipeline import run_pipeline

Tensor = torch.Tensor

SOURCE = GROUPED_LAYER + """
w_o1 = sample(gw, index=o1, p=0.4)            # a spatial index of the weight VJP
w_n = sample(gw, index=n, p=0.5)              # the batch (sized at call time)
w_both = sample(sample(gw, index=o1, p=0.5), index=n, p=0.6)
w_nested = sample(vjp(y, w), index=o2, p=0.3)  # transforms compose
x_d = sample(gx, index=d, p=0.5)              # an out-channel inside the grouped axis (g d) of the input VJP
y_c = sample(y, index=c, p=0.5)               # an in-channel of the forward pass; the bias term is not sampled
y_k = sample(y, index=k1, p=0.5)

w_o1_exact = sample(gw, index=o1, p=1)
w_n_exact = sample(gw, index=n, p=1)
y_c_exact = sample(y, index=c, p=1)
"""
BATCH = 4
CONV = GROUPED_CONV


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def module() -> types.ModuleType:
    return tncompiler.load_source(SOURCE, "sampling.tnd")


@pytest.fixture(scope="module")
def arguments() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(BATCH, 4, 10, 7, generator=g, dtype=torch.float64),
        "w": torch.randn(6, 2, 3, 2, generator=g, dtype=torch.float64),
        "b": torch.randn(6, generator=g, dtype=torch.float64),
        "grad_y": torch.randn(BATCH, 6, 5, 5, generator=g, dtype=torch.float64),
    }


def exact(name: str, a: dict[str, Tensor]) -> Tensor:
    """What the sampled function `name` estimates, from PyTorch."""
    if name.startswith("y_"):
        return F.conv2d(a["x"], a["w"], a["b"], **CONV)
    if name.startswith("x_"):
        return torch.nn.grad.conv2d_input(a["x"].shape, a["w"], a["grad_y"], **CONV)
    return torch.nn.grad.conv2d_weight(a["x"], a["w"].shape, a["grad_y"], **CONV)


@functools.cache
def argument_names(name: str) -> tuple[str, ...]:
    return tuple(argument.name for argument in tncompiler.build_program(SOURCE).diagram(name).arguments)


def call(module: types.ModuleType, name: str, a: dict[str, Tensor], generator: torch.Generator | None) -> Tensor:
    return getattr(module, name)(*[a[k] for k in argument_names(name)], generator=generator)


# --- (a) p = 1 is exact ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["w_o1_exact", "w_n_exact", "y_c_exact"])
def test_p_one_is_exact(module: types.ModuleType, arguments: dict[str, Tensor], name: str) -> None:
    expected = exact(name, arguments)
    for seed in range(3):
        result = call(module, name, arguments, torch.Generator().manual_seed(seed))
        assert result.shape == expected.shape and result.dtype == torch.float64
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-10 * expected.abs().max().item())


def test_p_one_in_float32(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    single = {k: v.float() for k, v in arguments.items()}
    result = call(module, "w_o1_exact", single, None)
    assert result.dtype == torch.float32
    expected = exact("gw", arguments)
    torch.testing.assert_close(result.double(), expected, rtol=0, atol=1e-5 * expected.abs().max().item())


# --- (b) unbiased: the mean of many draws converges to the exact value ----------------------------------------------

DRAWS = 2000
SAMPLED = [
    "w_o1",
    "w_n",
    "w_both",
    "w_nested",
    "x_d",
    "y_c",
    "y_k",
]


@pytest.mark.parametrize("name", SAMPLED)
def test_the_mean_of_many_draws_is_the_exact_value(
    module: types.ModuleType, arguments: dict[str, Tensor], name: str
) -> None:
    """Entrywise |mean - exact| <= 5 standard errors (std estimated from the draws), plus rounding."""
    generator = torch.Generator().manual_seed(1234)
    draws = torch.stack([call(module, name, arguments, generator) for _ in range(DRAWS)])
    expected = exact(name, arguments)
    mean, std = draws.mean(0), draws.std(0)
    assert std.max() > 1e-3 * expected.abs().max(), "the draws do not vary: nothing was sampled"
    bound = 5 * std / math.sqrt(DRAWS) + 1e-9 * expected.abs().max()
    excess = ((mean - expected).abs() / bound).max().item()
    assert excess <= 1, f"the mean is {excess:.2f}x the 5-sigma bound away from the exact value"


def test_a_single_draw_is_not_the_exact_value(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    draws = [call(module, "w_o1", arguments, torch.Generator().manual_seed(s)) for s in range(5)]
    expected = exact("gw", arguments)
    assert sum(not torch.allclose(d, expected) for d in draws) >= 4


# Only the weight VJP is sampled: the autograd.Function uses it for w and exact VJPs for x and b.
AUTOGRAD = SOURCE.split("\nw_o1 =")[0] + "\nw_o1 = sample(gw, index=o1, p=0.4)\n"


def test_the_sampled_autograd_gradient_is_unbiased(arguments: dict[str, Tensor]) -> None:
    module = tncompiler.load_source(AUTOGRAD)
    a = arguments
    x, w, b = (a[k].clone().requires_grad_() for k in ("x", "w", "b"))
    reference = F.conv2d(x, w, b, **CONV)
    exact_grads = torch.autograd.grad(reference, (x, w, b), a["grad_y"])
    generator = torch.Generator().manual_seed(7)
    draws = []
    for _ in range(DRAWS):
        out = module.y_sampled_autograd.apply(x, w, b, generator)
        grads = torch.autograd.grad(out, (x, w, b), a["grad_y"])
        draws.append(grads[1])
    torch.testing.assert_close(out, reference.detach(), rtol=0, atol=1e-10 * reference.abs().max().item())
    for k in (0, 2):  # x and b: exact
        torch.testing.assert_close(grads[k], exact_grads[k], rtol=0, atol=1e-10 * exact_grads[k].abs().max().item())
    stacked, gw = torch.stack(draws), exact_grads[1]
    assert not torch.allclose(stacked[0], gw)
    bound = 5 * stacked.std(0) / math.sqrt(DRAWS) + 1e-9 * gw.abs().max()
    assert ((stacked.mean(0) - gw).abs() <= bound).all()


def test_the_autograd_class_uses_the_first_sampled_vjp_of_each_argument(module: types.ModuleType) -> None:
    doc = module.y_sampled_autograd.__doc__ or ""
    assert "w_o1" in doc and "x_d" in doc
    assert "w_n" not in doc and "w_nested" not in doc
    assert callable(module._y_vjp_b)  # b has no sampled VJP: an exact, private one


# Nothing kept: the sampled term is an empty sum, 0 (p tiny, so no entry is kept with these seeds).
NONE_KEPT = """
index n
index g = 2, c = 2, d = 3
index i1 = 6, k1 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
input x[n, (g c), i1]
input w[(g d), c, k1]
y[n, (g d), o1] = x[n, (g c), i1] * p1(i1, o1, k1) * w[(g d), c, k1]
gx = vjp(y, x)
gw = vjp(y, w)
w_n = sample(gw, index=n, p=1e-9)
w_o1 = sample(gw, index=o1, p=1e-9)
y_k1 = sample(y, index=k1, p=1e-9)
y_c = sample(y, index=c, p=1e-9)
x_d = sample(gx, index=d, p=1e-9)
"""


@pytest.mark.parametrize(
    ("name", "shapes"),
    [
        ("w_n", [(2, 4, 6), (2, 6, 6)]),
        ("w_o1", [(2, 4, 6), (2, 6, 6)]),
        ("y_k1", [(2, 4, 6), (6, 2, 3)]),
        ("y_c", [(2, 4, 6), (6, 2, 3)]),
        ("x_d", [(6, 2, 3), (2, 6, 6)]),
    ],
)
def test_when_nothing_is_kept_the_estimate_is_zero(name: str, shapes: list[tuple[int, ...]]) -> None:
    """A term with a sampled axis is not lowered to the native kernels, which refuse zero channels (a case that
    once crashed: at p = 0.5 and 3 channels, one call in eight keeps none)."""
    module = tncompiler.load_source(NONE_KEPT)
    arguments = [torch.randn(shape, dtype=torch.float64) for shape in shapes]
    result = getattr(module, name)(*arguments, generator=torch.Generator().manual_seed(0))
    assert result.abs().max() == 0


# --- (c) less work: at p = 0.25 the plan costs about a quarter -----------------------------------------------------

BIG = """
index n
index g = 2, c = 2, d = 3
index i1 = 32, i2 = 12, k1 = 3, k2 = 2
pattern p1(i1, o1, k1) = conv(stride=2, padding=1)
pattern p2(i2, o2, k2) = conv(dilation=2)
input x[n, (g c), i1, i2]
input w[(g d), c, k1, k2]
y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2]
gw = vjp(y, w)
gx = vjp(y, x)
w_o1 = sample(gw, index=o1, p=0.25)
w_n = sample(gw, index=n, p=0.25)
x_o1 = sample(gx, index=o1, p=0.25)
"""
N = size_symbol("n")


def final(name: str) -> Diagram:
    return run_pipeline(tncompiler.build_program(BIG).diagram(name))[-1].diagram


def work(diagram: Diagram, expected: dict[sympy.Symbol, int]) -> float:
    """The multiply-adds of every term as lowered (native kernel or first plan), at a batch of 32 and the expected
    kept sizes."""
    total = sum(
        native_flops(term, term.lowering.native) if term.lowering.native else plan_network(term, expected)[0].flops
        for term in diagram.terms
    )
    return float(sympy.sympify(total).subs({N: 32, **expected}))


@pytest.mark.parametrize(
    ("name", "base", "index", "size"),
    [
        ("w_o1", "gw", "o1", 16),
        ("w_n", "gw", "n", 32),
        ("x_o1", "gx", "o1", 16),
    ],
)
def test_a_quarter_of_the_entries_costs_about_a_quarter(name: str, base: str, index: str, size: int) -> None:
    kept = {kept_symbol(index): round(0.25 * size)}
    sampled = final(name)
    ratio = work(sampled, kept) / work(final(base), {})
    assert 0.15 <= ratio <= 0.35, ratio
    # the kept entries are gathered from every tensor on the index, under a new name of call-time size
    assert any(
        kept_symbol(index) in sympy.sympify(size_).free_symbols
        for term in sampled.terms
        for size_ in term.sizes.values()
    )


def test_the_generated_code_gathers_the_kept_entries() -> None:
    code = tncompiler.compile_source(BIG)
    body = code.split("\ndef w_o1(", 1)[1].split("\ndef ", 1)[0]
    assert "def w_o1(x, grad_y, *, p=0.25, generator=None)" in code
    assert "_keep(16, p, generator)" in body
    assert body.count(".index_select(") >= 2  # x's kept windows and grad_y's kept rows on o1
    assert "mul_(1 / p)" in body  # rescaled by 1/p


# --- (d) generator= makes the draws reproducible -------------------------------------------------------------------


def test_the_generator_is_a_keyword_only_argument(module: types.ModuleType) -> None:
    parameter = inspect.signature(module.w_o1).parameters["generator"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY and parameter.default is None
    assert "generator" not in inspect.signature(module.gw).parameters


@pytest.mark.parametrize("name", ["w_o1", "w_n", "w_both", "x_d"])
def test_the_same_seed_gives_the_same_result(module: types.ModuleType, arguments: dict[str, Tensor], name: str) -> None:
    first = call(module, name, arguments, torch.Generator().manual_seed(42))
    second = call(module, name, arguments, torch.Generator().manual_seed(42))
    assert torch.equal(first, second)
    others = [call(module, name, arguments, torch.Generator().manual_seed(seed)) for seed in range(6)]
    assert any(not torch.equal(first, other) for other in others)


def test_one_generator_advances_from_call_to_call(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    generator = torch.Generator().manual_seed(3)
    results = [call(module, "w_o1", arguments, generator) for _ in range(6)]
    assert any(not torch.equal(results[0], r) for r in results[1:])
    generator.manual_seed(3)
    assert torch.equal(call(module, "w_o1", arguments, generator), results[0])


def test_without_a_generator_the_global_seed_decides(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    state = torch.get_rng_state()
    try:
        torch.manual_seed(5)
        first = call(module, "w_o1", arguments, None)
        torch.manual_seed(5)
        assert torch.equal(first, call(module, "w_o1", arguments, None))
    finally:
        torch.set_rng_state(state)


def test_the_autograd_class_passes_its_generator_to_the_backward_pass(
    module: types.ModuleType, arguments: dict[str, Tensor]
) -> None:
    def weight_gradient(seed: int) -> Tensor:
        w = arguments["w"].clone().requires_grad_()
        out = module.y_sampled_autograd.apply(arguments["x"], w, arguments["b"], torch.Generator().manual_seed(seed))
        (grad,) = torch.autograd.grad(out, w, arguments["grad_y"])
        return grad

    assert torch.equal(weight_gradient(11), weight_gradient(11))
    assert any(not torch.equal(weight_gradient(11), weight_gradient(seed)) for seed in range(4))


# --- (e) errors ----------------------------------------------------------------------------------------------------

HEAD = SOURCE.split("\nw_o1 =")[0] + "\n"
ERRORS = [
    ("s = sample(y, index=o1, p=0.5)", "'o1' is an open leg of 'y'"),
    ("s = sample(gw, index=k1, p=0.5)", "'k1' is an open leg of 'gw'"),
    ("s = sample(gw, index=q, p=0.5)", "'gw' does not sum over 'q'"),
    ("s = sample(gw, index=i2, p=0.5)", None),  # i2 is summed in gw: fine (control)
    ("s = sample(y, index=n, p=0.5)", "'n' is an open leg of 'y'"),
    ("s = sample(gx, index=c, p=0.5)", "'c' is an open leg of 'gx'"),
    ("s = sample(gw, index=o1, p=0)", "p must be in (0, 1], got 0.0"),
    ("s = sample(gw, index=o1, p=-0.5)", "p must be in (0, 1]"),
    ("s = sample(gw, index=o1, p=1.5)", "p must be in (0, 1], got 1.5"),
    ("s = sample(gw, index=o1, p=true)", "p= takes a number"),
    ("s = sample(gw, index=o1)", "needs p="),
    ("s = sample(gw, p=0.5)", "index="),
    ("s = sample(sample(gw, index=o1, p=0.5), index=o1, p=0.5)", "'o1' is sampled already"),
]


@pytest.mark.parametrize(("line", "fragment"), ERRORS, ids=[line for line, _ in ERRORS])
def test_sample_errors(line: str, fragment: str | None) -> None:
    text = HEAD + line + "\n"
    if fragment is None:
        tncompiler.compile_source(text)
        return
    with pytest.raises(TncError) as info:
        tncompiler.compile_source(text, "f.tnd")
    assert fragment in info.value.message
    assert str(info.value).startswith(f"f.tnd:{HEAD.count(chr(10)) + 1}:")


def test_an_index_summed_only_in_some_terms_is_sampled_there() -> None:
    """y's bias term does not sum over c; only the convolution term is sampled (checked by y_c's mean above)."""
    program = tncompiler.build_program(SOURCE)
    y_c = program.diagram("y_c")
    assert len(y_c.terms) == 2
    assert y_c.terms[1].coefficient == 1 and y_c.terms[0].coefficient == 1 / p_symbol("c")


def test_a_slice_of_a_sampled_diagram() -> None:
    """BUG. Minimal reproducer:

        index i = 4, o = 3
        input x[i, o]
        input v[o]
        y[i] = x[i, o] * v[o]
        z = sample(y, index=o, p=0.5)
        s = slice(z, i=0:2)

    fails with "the size of index 'o_kept' is not given in the file": slice_diagram replaces the diagram's meta,
    so the samplers are lost and the generated function never draws the kept entries (sample(slice(...)) works)."""
    text = HEAD + "s = slice(sample(gw, index=o1, p=1), k1=1:)\n"
    module = tncompiler.load_source(text)
    a = {"x": torch.randn(2, 4, 10, 7, dtype=torch.float64), "grad_y": torch.randn(2, 6, 5, 5, dtype=torch.float64)}
    torch.testing.assert_close(module.s(a["x"], a["grad_y"]), module.gw(a["x"], a["grad_y"])[:, :, 1:])


def test_a_sample_of_a_slice(arguments: dict[str, Tensor]) -> None:
    module = tncompiler.load_source(HEAD + "s = sample(slice(gw, k1=1:), index=o1, p=1)\n")
    expected = exact("gw", arguments)[:, :, 1:]
    result = module.s(arguments["x"], arguments["grad_y"], generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10 * expected.abs().max().item())

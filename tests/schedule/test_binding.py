"""Call-time sizes: each binding rule (from an axis, a grouped axis, a pattern's size rule in both directions, a
keyword-only argument), each check and each error it raises, and the plans chosen at call time."""

from __future__ import annotations

import inspect
import math

import pytest
import sympy
import torch
import torch.nn.functional as F

import tncompiler
from tncompiler.binding import AxisSize, CheckAxis, CheckRule, DerivedSize, KeywordSize, SolvedSize, plan_binding
from tncompiler.cost import evaluate
from tncompiler.ir.values import size_symbol
from tncompiler.order import plan_network

CONV = """index n, c, d, i
index k = 3
pattern p(i, o, k) = conv(stride=STRIDE, padding=1)
input x[n, c, i]
input w[d, c, k]
y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k]
gx = vjp(y, x)
gw = vjp(y, w)
"""


def conv(stride: int) -> str:
    return CONV.replace("STRIDE", str(stride))


def steps(source: str, name: str) -> list[type]:
    program = tncompiler.build_program(source)
    binding = plan_binding(program.diagram(name), program.size_rules, list(program.sizes))
    return [type(step) for step in binding.steps]


def test_each_size_is_bound_from_the_first_axis_that_holds_it_and_the_rest_is_checked() -> None:
    assert steps(conv(2), "y") == [AxisSize, AxisSize, AxisSize, AxisSize, DerivedSize, CheckAxis, CheckAxis]
    assert steps(conv(2), "gw") == [AxisSize, AxisSize, AxisSize, AxisSize, AxisSize, CheckAxis, CheckRule]


def test_a_strided_input_vjp_takes_its_input_size_as_a_keyword_and_a_stride_one_one_solves_it() -> None:
    assert KeywordSize in steps(conv(2), "gx") and CheckRule in steps(conv(2), "gx")
    assert SolvedSize in steps(conv(1), "gx") and KeywordSize not in steps(conv(1), "gx")
    assert str(inspect.signature(tncompiler.load_source(conv(2)).gx)) == "(w, grad_y, *, i)"
    assert str(inspect.signature(tncompiler.load_source(conv(1)).gx)) == "(w, grad_y)"


def test_the_keyword_and_the_solved_size_give_the_right_input_vjp() -> None:
    x, w = torch.randn(2, 3, 9, dtype=torch.float64), torch.randn(4, 3, 3, dtype=torch.float64)
    for stride in (1, 2):
        module = tncompiler.load_source(conv(stride))
        grad = torch.randn(module.y(x, w).shape, dtype=torch.float64)
        expected = torch.nn.grad.conv1d_input(x.shape, w, grad, stride, 1)
        actual = module.gx(w, grad, i=9) if stride == 2 else module.gx(w, grad)
        torch.testing.assert_close(actual, expected)


def test_an_inconsistent_keyword_is_refused() -> None:
    module = tncompiler.load_source(conv(2))
    w, grad = torch.randn(4, 3, 3), torch.randn(2, 4, 5)
    module.gx(w, grad, i=9)  # 5 windows over 9 entries
    module.gx(w, grad, i=10)  # and over 10: both fit
    with pytest.raises(ValueError, match=r"gx\(\): argument 'grad_y' axis 2 \(o\) has size 5, but pattern 'p' gives 6"):
        module.gx(w, grad, i=11)
    with pytest.raises(TypeError, match=r"gx\(\): keyword i= .* must be an int, got float"):
        module.gx(w, grad, i=9.0)
    with pytest.raises(ValueError, match=r"gx\(\): keyword i= .* at least 1, got -1"):
        module.gx(w, grad, i=-1)


def test_an_inconsistent_output_size_is_refused() -> None:
    module = tncompiler.load_source(conv(2))
    with pytest.raises(ValueError, match=r"gw\(\): argument 'grad_y' axis 2 \(o\) has size 4, but pattern 'p' gives 5"):
        module.gw(torch.randn(2, 3, 9), torch.randn(2, 4, 4))


def test_a_call_time_size_too_small_for_a_pattern_names_the_argument_and_index() -> None:
    module = tncompiler.load_source(CONV.replace("STRIDE", "1").replace("padding=1", "padding=0"))
    with pytest.raises(ValueError, match=r"y\(\): argument 'x' axis 2 \(i\) has size 2, too small for pattern 'p'"):
        module.y(torch.randn(2, 3, 2), torch.randn(4, 3, 3))
    with pytest.raises(ValueError, match=r"at least 3"):
        module.y(torch.randn(2, 3, 1), torch.randn(4, 3, 3))


GROUPED = """index n, c, d, i
index g = 2, k = 3
pattern p(i, o, k) = conv(padding=1)
input x[n, (g c), i]
input w[(g d), c, k]
y[n, (g d), o] = x[n, (g c), i] * p(i, o, k) * w[(g d), c, k]
"""


def test_a_grouped_axis_binds_its_open_index_by_division() -> None:
    module = tncompiler.load_source(GROUPED)
    x, w = torch.randn(2, 6, 7, dtype=torch.float64), torch.randn(8, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(module.y(x, w), F.conv1d(x, w, padding=1, groups=2))
    with pytest.raises(ValueError, match=r"y\(\): argument 'x' axis 1 \(\(g c\)\) has size 7, which is not a multiple"):
        module.y(torch.randn(2, 7, 7, dtype=torch.float64), w)


def test_two_open_indices_of_one_axis_are_bound_from_another_argument() -> None:
    source = GROUPED.replace("index g = 2, k = 3", "index g, k = 3").replace(
        "input w[(g d), c, k]", "input w[g, d, c, k]"
    )
    source = source.replace("w[(g d), c, k]\n", "w[g, d, c, k]\n")
    module = tncompiler.load_source(source)
    x, w = torch.randn(2, 6, 7, dtype=torch.float64), torch.randn(2, 4, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(module.y(x, w), F.conv1d(x, w.reshape(8, 3, 3), padding=1, groups=2))


def test_a_size_no_argument_carries_is_a_keyword_also_without_arguments() -> None:
    module = tncompiler.load_source("index a, b\ninput x[a]\ny[a, b] = x[a]\nj = jacobian(y, x)\n")
    assert str(inspect.signature(module.j)) == "(*, a, b, dtype=None, device=None)"
    assert module.j(a=2, b=3).shape == (2, 3, 2)
    assert "a: keyword-only int, the size of index a" in (module.j.__doc__ or "")


def test_a_declared_output_with_an_open_input_is_checked() -> None:
    """A transpose convolution declares o = 4 and leaves its output size i open: y takes i as a keyword."""
    source = """index n, c = 2, d = 3, i, o = 4, k = 3
pattern p(i, o, k) = conv(stride=2, padding=1)
input x[n, c, o]
input w[c, d, k]
y[n, d, i] = x[n, c, o] * p(i, o, k) * w[c, d, k]
"""
    module = tncompiler.load_source(source)
    x, w = torch.randn(1, 2, 4, dtype=torch.float64), torch.randn(2, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(module.y(x, w, i=8), F.conv_transpose1d(x, w, stride=2, padding=1, output_padding=1))
    with pytest.raises(ValueError, match=r"index o \(size 4 in the file\) has size 4, but pattern 'p' gives 5"):
        module.y(x, w, i=9)


def test_a_sampled_autograd_class_passes_its_keyword_sizes() -> None:
    source = conv(2).replace("gx = vjp(y, x)\ngw = vjp(y, w)\n", "gw = sample(vjp(y, w), index=o, p=1)\n")
    module = tncompiler.load_source(source)
    x = torch.randn(2, 3, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    module.y_sampled_autograd.apply(x, w, None).sum().backward()
    reference_x, reference_w = x.detach().requires_grad_(), w.detach().requires_grad_()
    F.conv1d(reference_x, reference_w, stride=2, padding=1).sum().backward()
    torch.testing.assert_close(x.grad, reference_x.grad)
    torch.testing.assert_close(w.grad, reference_w.grad)


# -- plans chosen at call time --------------------------------------------------------------------------------------

CHAIN = """index a, b, c, d, e
input p[a, b]
input q[b, c]
input r[c, d]
input s[d, e]
y[a, e] = p[a, b] * q[b, c] * r[c, d] * s[d, e]
"""


def _count(term: object, plan: object, sizes: dict[str, int]) -> int:
    """Multiply-adds of a plan counted from its steps' operand shapes, independently of the cost formulas."""
    legs = [f.legs for f in term.factors]  # type: ignore[attr-defined]
    total = 0
    for step in plan.steps:  # type: ignore[attr-defined]
        involved = set().union(*(legs[k] for k in step.operands))
        total += math.prod(sizes[leg] for leg in involved)
        legs.append(step.legs)
    return total


@pytest.mark.parametrize("sizes", [(2, 50, 3, 40, 5), (60, 2, 70, 3, 80), (7, 7, 7, 7, 7), (1, 100, 1, 100, 1)])
def test_the_plan_chosen_at_call_time_is_the_cheapest_by_the_true_cost(sizes: tuple[int, ...]) -> None:
    program = tncompiler.build_program(CHAIN)
    term = program.diagram("y").terms[0]
    plans = plan_network(term)
    assert len(plans) > 1  # the regimes disagree: the module holds several orders
    values = dict(zip("abcde", sizes))
    at = {size_symbol(name): value for name, value in values.items()}
    counted = [_count(term, plan, values) for plan in plans]
    assert [evaluate(plan.flops, at) for plan in plans] == counted  # every formula is the true count
    module = tncompiler.load_source(CHAIN)
    symbols = sorted({str(s) for plan in plans for s in sympy.sympify(plan.flops).free_symbols})
    chosen = module._y_plan1(*[values[name] for name in symbols])
    assert counted[chosen] == min(counted)
    tensors = [torch.randn(values[x], values[y], dtype=torch.float64) for x, y in ("ab", "bc", "cd", "de")]
    torch.testing.assert_close(module.y(*tensors), tensors[0] @ tensors[1] @ tensors[2] @ tensors[3])


def test_an_autograd_class_takes_the_definitions_keyword_sizes() -> None:
    """A strided transpose convolution with open sizes takes its output size as a keyword; its autograd class
    takes it after the generator (autograd.Function.apply takes no keywords) and passes it on."""
    source = """index n
index c = 2, d = 3
index i1, o1, k1 = 3
pattern p1(i1, o1, k1) = conv(stride=2)
input x[n, c, o1]
input w[c, d, k1]
y[n, d, i1] = x[n, c, o1] * p1(i1, o1, k1) * w[c, d, k1]
gw = sample(vjp(y, w), index=o1, p=1)
"""
    module = tncompiler.load_source(source)
    x = torch.randn(2, 2, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    module.y_sampled_autograd.apply(x, w, None, 11).sum().backward()
    reference_x, reference_w = x.detach().requires_grad_(), w.detach().requires_grad_()
    F.conv_transpose1d(reference_x, reference_w, stride=2, output_padding=0).sum().backward()
    torch.testing.assert_close(x.grad, reference_x.grad)
    torch.testing.assert_close(w.grad, reference_w.grad)

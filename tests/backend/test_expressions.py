"""The size printer: random expressions over floor division, products, sums, Max/Min and negative constants print
as Python that evaluates to what sympy says, at random integers (hypothesis)."""

from __future__ import annotations

import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

from tncompiler.backend.expressions import product_expr, python_expr

SYMBOLS = [sympy.Symbol(name, integer=True, positive=True) for name in ("a", "b", "c")]
NAMES = {symbol: str(symbol) for symbol in SYMBOLS}
_leaves = st.one_of(st.sampled_from(SYMBOLS), st.integers(-9, 9).map(sympy.Integer))
_positive_leaves = st.one_of(st.sampled_from(SYMBOLS), st.integers(1, 9).map(sympy.Integer))


def _positive(children: st.SearchStrategy[sympy.Expr]) -> st.SearchStrategy[sympy.Expr]:
    """Expressions that are at least 1: divisors."""
    return st.one_of(
        st.tuples(children, children).map(lambda t: sympy.Max(t[0], t[1], 1)),
        st.tuples(children, children).map(lambda t: t[0] * t[1]),
        st.tuples(children, children).map(lambda t: t[0] + t[1]),
    )


def _extend(children: st.SearchStrategy[sympy.Expr]) -> st.SearchStrategy[sympy.Expr]:
    divisors = st.one_of(_positive_leaves, _positive(_positive_leaves))
    return st.one_of(
        st.tuples(children, children).map(lambda t: t[0] + t[1]),
        st.tuples(children, children).map(lambda t: t[0] - t[1]),
        st.tuples(children, children).map(lambda t: t[0] * t[1]),
        st.tuples(children, divisors).map(lambda t: sympy.floor(t[0] / t[1])),
        st.tuples(children, divisors).map(lambda t: sympy.ceiling(t[0] / t[1])),
        st.tuples(children, divisors).map(lambda t: sympy.Mod(t[0], t[1])),
        st.tuples(children, children).map(lambda t: sympy.Max(t[0], t[1])),
        st.tuples(children, children).map(lambda t: sympy.Min(t[0], t[1])),
        st.tuples(children, st.integers(0, 3)).map(lambda t: t[0] ** t[1]),
        children.map(lambda e: -e),
    )


EXPRESSIONS = st.recursive(_leaves, _extend, max_leaves=12)
VALUES = st.fixed_dictionaries({symbol: st.integers(1, 40) for symbol in SYMBOLS})


@settings(max_examples=500, deadline=None)
@given(EXPRESSIONS, VALUES)
def test_printed_integer_expressions_evaluate_as_sympy_does(expr: sympy.Expr, values: dict[sympy.Symbol, int]) -> None:
    code = python_expr(expr, NAMES)
    # all at once: substituted one at a time, sympy evaluates -Max(-a, floor(-2/Max(b, c))) at (2, 1, 2) to 2, not 1
    expected = sympy.sympify(expr).subs(values, simultaneous=True)
    actual = eval(code, {"__builtins__": {"max": max, "min": min, "int": int}}, {str(s): v for s, v in values.items()})
    assert isinstance(actual, int), (expr, code, actual)
    assert actual == int(expected), (expr, code, actual, expected)


@settings(max_examples=200, deadline=None)
@given(EXPRESSIONS, EXPRESSIONS, VALUES)
def test_a_product_of_printed_sizes_keeps_each_size_whole(
    first: sympy.Expr, second: sympy.Expr, values: dict[sympy.Symbol, int]
) -> None:
    """The reported bug: `n * (i1 - 1) // 2 + 1 * ...` read a sum of sizes as part of a product."""
    code = product_expr([first, second], NAMES)
    actual = eval(code, {"__builtins__": {"max": max, "min": min, "int": int}}, {str(s): v for s, v in values.items()})
    assert actual == int(sympy.sympify(first * second).subs(values, simultaneous=True))


def test_scalars_divide_as_reals() -> None:
    n, o = SYMBOLS[:2]
    assert python_expr(1 / (n * o**2), NAMES) == "1 / (a * b ** 2)"
    assert eval(python_expr(sympy.Rational(3, 4) * n, NAMES), {}, {"a": 2}) == 1.5


def test_the_reported_reshape_prints_with_its_parentheses() -> None:
    n, i1, i2 = SYMBOLS
    positions = (sympy.floor((i1 - 1) / 2) + 1) * (sympy.floor((i2 - 1) / 2) + 1)
    assert python_expr(n * positions, NAMES) == "a * ((b - 1) // 2 + 1) * ((c - 1) // 2 + 1)"

"""Python source for size and scalar expressions: the one printer for shapes, reshapes, pads, slices, scalars and
cost formulas.

Every sub-expression is printed with its precedence, and a child is put in parentheses whenever Python would
otherwise read it differently. Floor division is the trap: `a * b // c` is `(a * b) // c` in Python, so a floor
division inside a product, a power or a negation is always parenthesised. Integer expressions evaluate exactly with
Python ints (floor and ceiling become `//`); only a real division of a scalar (`1 / n`) becomes `/`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import sympy

from tncompiler.errors import TncError

__all__ = ["python_expr", "printed_expr", "product_expr", "sum_terms", "ADD", "MUL", "UNARY", "POW", "ATOM"]

# Binding strength of what a printed piece has at its top: a parent wraps a child whose strength is too low.
ADD, MUL, UNARY, POW, ATOM = 10, 20, 30, 40, 50
_ADD, _MUL, _UNARY, _POW, _ATOM = ADD, MUL, UNARY, POW, ATOM

_Printed = tuple[str, int]


def python_expr(expr: sympy.Expr | int | float, names: Mapping[sympy.Symbol, str]) -> str:
    """Python source that evaluates `expr` over the variables `names` gives each symbol."""
    if isinstance(expr, bool):
        raise TypeError("a size is not a bool")
    if isinstance(expr, int):
        return str(expr)
    return _Printer(names).text(sympy.sympify(expr))[0]


def printed_expr(expr: sympy.Expr | int | float, names: Mapping[sympy.Symbol, str]) -> tuple[str, int]:
    """The source of `expr` and the binding strength of its top operator (ATOM for a name or a number)."""
    if isinstance(expr, int):
        return str(expr), (UNARY if expr < 0 else ATOM)
    return _Printer(names).text(sympy.sympify(expr))


def sum_terms(expr: sympy.Add, names: Mapping[sympy.Symbol, str]) -> list[str]:
    """The terms of a sum as printed in it, each after its sign (`+ a`, `- b`; none before the first): a long sum is
    broken between them."""
    return _Printer(names).terms(expr)


def product_expr(sizes: object, names: Mapping[sympy.Symbol, str]) -> str:
    """The product of several sizes as one expression (never a string join of printed pieces)."""
    return python_expr(sympy.Mul(*[sympy.sympify(size) for size in sizes]), names)  # type: ignore[attr-defined]


def _wrap(printed: _Printed, at_least: int) -> str:
    text, strength = printed
    return text if strength >= at_least else f"({text})"


class _Printer:
    def __init__(self, names: Mapping[sympy.Symbol, str]) -> None:
        self.names = names

    def text(self, expr: sympy.Expr) -> _Printed:
        for kind, method in _DISPATCH:
            if isinstance(expr, kind):
                return method(self, expr)
        raise TncError(f"internal: cannot print the size expression {expr} as Python")

    def symbol(self, expr: sympy.Symbol) -> _Printed:
        if expr not in self.names:
            raise TncError(f"internal: the size {expr} has no variable in the generated code")
        return str(self.names[expr]), _ATOM

    def integer(self, expr: sympy.Integer) -> _Printed:
        value = int(expr)
        return str(value), (_UNARY if value < 0 else _ATOM)

    def rational(self, expr: sympy.Rational) -> _Printed:
        sign = "-" if expr.p < 0 else ""
        return f"{sign}{abs(expr.p)} / {expr.q}", _MUL

    def float_(self, expr: sympy.Float) -> _Printed:
        value = float(expr)
        if not math.isfinite(value):
            raise TncError(f"the scalar {expr} does not fit in a float", hint="floats go up to about 1e308")
        return repr(value), (_UNARY if value < 0 else _ATOM)

    def add(self, expr: sympy.Add) -> _Printed:
        return " ".join(self.terms(expr)), _ADD

    def terms(self, expr: sympy.Add) -> list[str]:
        parts: list[str] = []
        for term in expr.as_ordered_terms():
            negative = term.could_extract_minus_sign()
            if not parts:
                parts.append(_wrap(self.text(term), _MUL))
            else:
                parts.append(("- " if negative else "+ ") + _wrap(self.text(-term if negative else term), _MUL))
        return parts

    def mul(self, expr: sympy.Mul) -> _Printed:
        if expr.as_coeff_Mul()[0].is_negative:
            positive = -expr
            text, strength = self.text(positive)
            if isinstance(positive, sympy.Mul):  # every factor is wrapped already: -a * b is (-a) * b
                return f"-{text}", _MUL
            return f"-{_wrap((text, strength), _POW)}", _UNARY
        numerator, denominator = [], []
        for factor in sympy.Mul.make_args(expr):
            base, exponent = factor.as_base_exp()
            if exponent.is_Integer and exponent < 0:
                denominator.append(base if exponent == -1 else sympy.Pow(base, -exponent, evaluate=False))
            elif factor.is_Rational and factor.q != 1:
                denominator.append(sympy.Integer(factor.q))
                if factor.p != 1:
                    numerator.append(sympy.Integer(factor.p))
            else:
                numerator.append(factor)
        top = " * ".join(_wrap(self.text(f), _UNARY) for f in numerator) or "1"
        if not denominator:
            return top, (_MUL if len(numerator) > 1 else self.text(numerator[0])[1])
        bottom = self.text(sympy.Mul(*denominator)) if len(denominator) > 1 else self.text(denominator[0])
        return f"{top} / {_wrap(bottom, _UNARY)}", _MUL

    def power(self, expr: sympy.Pow) -> _Printed:
        base, exponent = expr.as_base_exp()
        if exponent.is_Integer and exponent < 0:
            return self.mul(sympy.Mul(1, expr, evaluate=False))
        return f"{_wrap(self.text(base), _ATOM)} ** {_wrap(self.text(exponent), _ATOM)}", _POW

    def floor(self, expr: sympy.Expr) -> _Printed:
        numerator, denominator = sympy.fraction(sympy.together(expr.args[0]))
        if denominator == 1:
            if numerator.is_integer:
                return self.text(numerator)
            return f"int({self.text(numerator)[0]} // 1)", _ATOM
        # a // b: Python's floor division is sympy's floor(a / b) for any signs of a and b
        top = _wrap(self.text(numerator), _MUL)
        return f"{top} // {_wrap(self.text(denominator), _UNARY)}", _MUL

    def ceiling(self, expr: sympy.Expr) -> _Printed:
        inner = self.floor(sympy.floor(-expr.args[0], evaluate=False))
        return f"-{_wrap(inner, _UNARY)}", _UNARY

    def extremum(self, expr: sympy.Expr) -> _Printed:
        function = "max" if isinstance(expr, sympy.Max) else "min"
        return f"{function}({', '.join(self.text(a)[0] for a in expr.args)})", _ATOM

    def mod(self, expr: sympy.Mod) -> _Printed:
        a, b = expr.args
        return f"{_wrap(self.text(a), _MUL)} % {_wrap(self.text(b), _UNARY)}", _MUL


_DISPATCH: tuple[tuple[type, Callable[[_Printer, sympy.Expr], _Printed]], ...] = (
    (sympy.Symbol, _Printer.symbol),
    (sympy.Integer, _Printer.integer),
    (sympy.Rational, _Printer.rational),
    (sympy.Float, _Printer.float_),
    (sympy.Add, _Printer.add),
    (sympy.Mul, _Printer.mul),
    (sympy.Pow, _Printer.power),
    (sympy.floor, _Printer.floor),
    (sympy.ceiling, _Printer.ceiling),
    (sympy.Max, _Printer.extremum),
    (sympy.Min, _Printer.extremum),
    (sympy.Mod, _Printer.mod),
)

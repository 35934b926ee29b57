"""Safe, deterministic Python names for generated code, and Python source for size expressions."""

from __future__ import annotations

import builtins
import keyword
import math
import re
from collections.abc import Mapping

import sympy
from sympy.printing.str import StrPrinter

from tncompiler.errors import TncError

__all__ = ["Namespace", "safe_identifier", "size_code", "docstring", "docstring_text", "comment_text"]

_RESERVED = (
    frozenset(keyword.kwlist)
    | frozenset(keyword.softkwlist)
    | frozenset(dir(builtins))
    | {"torch", "functools", "math"}
)


def safe_identifier(text: str) -> str:
    """A valid identifier close to `text` that shadows no keyword, builtin or module the code imports."""
    name = re.sub(r"\W", "_", text, flags=re.ASCII) or "_"
    if name[0].isdigit():
        name = "_" + name
    return name + "_" if name in _RESERVED else name


class Namespace:
    """Hands out unique names: the first request for a candidate gets it, later ones get `candidate_2`, ..."""

    def __init__(self, taken: frozenset[str] | set[str] = frozenset()) -> None:
        self._taken = set(taken)

    def create(self, candidate: str) -> str:
        base = safe_identifier(candidate)
        name, counter = base, 1
        while name in self._taken:
            counter += 1
            name = f"{base}_{counter}"
        self._taken.add(name)
        return name


class _SizePrinter(StrPrinter):  # type: ignore[misc]
    """Prints integer size expressions with Python operators: floor(a/b) becomes (a) // b."""

    def __init__(self, names: Mapping[sympy.Symbol, str]) -> None:
        super().__init__()
        self._names = names

    def _print_Symbol(self, expr: sympy.Symbol) -> str:
        return str(self._names[expr])

    def _print_floor(self, expr: sympy.Expr) -> str:
        numerator, denominator = sympy.fraction(sympy.together(expr.args[0]))
        if denominator == 1:
            return str(self._print(numerator))
        return f"({self._print(numerator)}) // {self._print(denominator)}"

    def _print_Rational(self, expr: sympy.Rational) -> str:
        return f"({expr.p} / {expr.q})"

    def _print_Float(self, expr: sympy.Float) -> str:
        value = float(expr)
        if not math.isfinite(value):
            raise TncError(f"the scalar {expr} does not fit in a float", hint="floats go up to about 1e308")
        return repr(value)


def size_code(expr: sympy.Expr | int | float, names: Mapping[sympy.Symbol, str]) -> str:
    """Python source that evaluates a size (or scalar) expression over the named size variables."""
    if isinstance(expr, int):
        return str(expr)
    return str(_SizePrinter(names).doprint(sympy.sympify(expr)))


def comment_text(text: str) -> str:
    """Text safe to put after `#`: one line, printable characters only."""
    return "".join(ch if ch.isprintable() else " " for ch in " ".join(text.split()))


def docstring_text(text: str) -> str:
    """Text safe inside a triple-quoted string: backslashes and quotes escaped, other characters as escapes.

    Every `"` is escaped, so no run of quotes (also one next to the closing quotes) can end the string early;
    line breaks other than "\\n" (carriage returns, U+2028, form feeds) become escapes too.
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(ch if ch.isprintable() or ch == "\n" else repr(ch)[1:-1] for ch in escaped)


def docstring(text: str, indent: str) -> str:
    """A triple-quoted docstring that no text can break out of."""
    lines = docstring_text(text).split("\n")
    body = "\n".join((indent + line).rstrip() for line in lines[1:])
    if len(lines) == 1:
        return f'{indent}"""{lines[0]}"""'
    return f'{indent}"""{lines[0]}\n{body}\n{indent}"""'

"""The printer: scheduled ops to Python text. A table from each expression node and op to its text; nothing here
decides what the code does."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import sympy

from tncompiler.backend.expressions import ATOM, MUL, UNARY, printed_expr, sum_terms
from tncompiler.backend.text import comment_text, docstring
from tncompiler.schedule.ops import (
    Assign,
    Attr,
    BinOp,
    Branch,
    Call,
    Chain,
    ClassDef,
    Comment,
    Effect,
    Expr,
    Function,
    IfExp,
    Index,
    Lambda,
    Lit,
    Method,
    Name,
    Op,
    Return,
    SizeOf,
    Slice,
    Tuple,
    Unary,
)

__all__ = ["definition_text", "expr_text", "op_lines"]

# Binding strengths (expressions.py's scale, with Python's weaker operators below it).
_LAMBDA, _IFEXP, _OR, _AND, _NOT, _COMPARE, _BITOR = 1, 2, 3, 4, 5, 6, 8
_BINARY = {
    "or": _OR,
    "and": _AND,
    "==": _COMPARE,
    "!=": _COMPARE,
    "<": _COMPARE,
    "<=": _COMPARE,
    ">": _COMPARE,
    ">=": _COMPARE,
    "|": _BITOR,
    "+": 10,
    "-": 10,
    "*": MUL,
    "@": MUL,
    "/": MUL,
    "//": MUL,
    "%": MUL,
}

Printed = tuple[str, int]
_MATMUL = {op: op == "@" for op in _BINARY}  # `@` and `*` bind alike; a chain mixing them is printed bracketed


def expr_text(expr: Expr, symbols: Mapping[sympy.Symbol, str]) -> str:
    return _Printer(symbols).text(expr)[0]


class _Printer:
    def __init__(self, symbols: Mapping[sympy.Symbol, str]) -> None:
        self.symbols = symbols

    def text(self, expr: Expr | Slice) -> Printed:
        return _NODES[type(expr)](self, expr)

    def wrapped(self, expr: Expr, at_least: int) -> str:
        text, strength = self.text(expr)
        return text if strength >= at_least else f"({text})"

    def arguments(self, args: tuple[Expr, ...], kwargs: tuple[tuple[str, Expr], ...]) -> str:
        parts = [self.text(a)[0] for a in args] + [f"{key}={self.text(value)[0]}" for key, value in kwargs]
        return ", ".join(parts)

    def name(self, expr: Name) -> Printed:
        return expr.id, ATOM

    def lit(self, expr: Lit) -> Printed:
        if expr.value == "...":
            return "...", ATOM
        negative = isinstance(expr.value, int | float) and not isinstance(expr.value, bool) and expr.value < 0
        return repr(expr.value), (UNARY if negative else ATOM)

    def size(self, expr: SizeOf) -> Printed:
        return printed_expr(expr.expr, self.symbols)

    def call(self, expr: Call) -> Printed:
        return f"{expr.func}({self.arguments(expr.args, expr.kwargs)})", ATOM

    def method(self, expr: Method) -> Printed:
        return f"{self.wrapped(expr.obj, ATOM)}.{expr.name}({self.arguments(expr.args, expr.kwargs)})", ATOM

    def attr(self, expr: Attr) -> Printed:
        return f"{self.wrapped(expr.obj, ATOM)}.{expr.name}", ATOM

    def slice_(self, expr: Slice) -> Printed:
        parts = ["" if part is None else self.text(part)[0] for part in (expr.start, expr.stop)]
        text = ":".join(parts) + ("" if expr.step is None else f":{self.text(expr.step)[0]}")
        return text, ATOM

    def index(self, expr: Index) -> Printed:
        items = ", ".join(self.text(item)[0] for item in expr.items)
        return f"{self.wrapped(expr.obj, ATOM)}[{items}]", ATOM

    def tuple_(self, expr: Tuple) -> Printed:
        items = [self.text(item)[0] for item in expr.items]
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})", ATOM

    def binop(self, expr: BinOp) -> Printed:
        strength = _BINARY[expr.op]
        if strength == _COMPARE:
            # Python chains comparisons (`a == b == c` is not `(a == b) == c`): a comparison operand keeps brackets
            return (
                f"{self.wrapped(expr.left, strength + 1)} {expr.op} {self.wrapped(expr.right, strength + 1)}",
                strength,
            )
        # left-associative: a right operand binds tighter than the operator, so `a - (b - c)` keeps its brackets
        operands = _operands(expr)
        first = operands[0][1]
        apart = isinstance(first, BinOp) and _BINARY[first.op] == strength  # out of the chain: `(a * s) @ b`
        parts = [self.wrapped(first, strength + 1 if apart else strength)]
        parts += [f"{op} {self.wrapped(operand, strength + 1)}" for op, operand in operands[1:]]
        return " ".join(parts), strength

    def chain(self, expr: Chain) -> Printed:
        return f" {expr.op} ".join(self.wrapped(item, _COMPARE + 1) for item in expr.items), _COMPARE

    def unary(self, expr: Unary) -> Printed:
        if expr.op == "not":
            return f"not {self.wrapped(expr.operand, _NOT)}", _NOT
        return f"-{self.wrapped(expr.operand, UNARY)}", UNARY

    def ifexp(self, expr: IfExp) -> Printed:
        then = self.wrapped(expr.then, _IFEXP + 1)
        test = self.wrapped(expr.test, _IFEXP + 1)
        return f"{then} if {test} else {self.wrapped(expr.other, _IFEXP)}", _IFEXP

    def lambda_(self, expr: Lambda) -> Printed:
        return f"lambda: {self.text(expr.body)[0]}", _LAMBDA


_NODES: dict[type, Callable[[_Printer, Any], Printed]] = {
    Name: _Printer.name,
    Lit: _Printer.lit,
    SizeOf: _Printer.size,
    Call: _Printer.call,
    Method: _Printer.method,
    Attr: _Printer.attr,
    Slice: _Printer.slice_,
    Index: _Printer.index,
    Tuple: _Printer.tuple_,
    BinOp: _Printer.binop,
    Chain: _Printer.chain,
    Unary: _Printer.unary,
    IfExp: _Printer.ifexp,
    Lambda: _Printer.lambda_,
}


def _note(text: str) -> str:
    return f"  # {comment_text(text)}" if text else ""


def op_lines(op: Op | Function | ClassDef, symbols: Mapping[sympy.Symbol, str], indent: str = "    ") -> list[str]:
    """The lines of one op (or of a function or class, with its ops)."""
    return _OPS[type(op)](op, symbols, indent)


# Lines longer than this are broken: see _line.
WIDTH = 120


def _line(indent: str, prefix: str, value: Expr, suffix: str, symbols: Mapping[sympy.Symbol, str]) -> list[str]:
    """`prefix + value + suffix` on one line, or, where that is too long, broken as a reviewer would: a call's
    arguments, a condition's clauses, a long cost's terms, a conditional's three parts or a method chain's links one
    per line (a line that cannot be broken stays whole)."""
    text = f"{indent}{prefix}{expr_text(value, symbols)}{suffix}"
    if len(text) <= WIDTH:
        return [text]
    inner = indent + "    "
    if isinstance(value, Call | Tuple):
        items: list[tuple[str, Expr]] = [("", a) for a in (value.args if isinstance(value, Call) else value.items)]
        items += [(f"{k}=", v) for k, v in value.kwargs] if isinstance(value, Call) else []
        lines = [f"{indent}{prefix}{value.func if isinstance(value, Call) else ''}("]
        for key, item in items:
            lines += _line(inner, key, item, ",", symbols)
        return lines + [f"{indent}){suffix}"]
    negation = "not " if isinstance(value, Unary) and value.op == "not" and len(_clauses(value.operand)) > 1 else ""
    parts = _parts(value.operand if negation and isinstance(value, Unary) else value, symbols, inner)
    if len(parts) > 1:
        return [f"{indent}{prefix}{negation}("] + parts + [f"{indent}){suffix}"]
    return [text]


def _parts(value: Expr, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    """The lines, at `indent`, a too-long expression breaks into inside brackets (one line: it does not break)."""
    printer = _Printer(symbols)
    if isinstance(value, SizeOf) and isinstance(value.expr, sympy.Add):  # a long cost: one term per line
        return [f"{indent}{term}" for term in sum_terms(value.expr, symbols)]
    if isinstance(value, IfExp):
        then = _operand(value.then, "", printer, indent)
        return (
            then
            + [f"{indent}if {printer.wrapped(value.test, _IFEXP + 1)}"]
            + _operand(value.other, "else ", printer, indent, _IFEXP)
        )
    if isinstance(value, Method | Index) and isinstance(_chain(value)[0], Method):
        lines, base = [f"{indent}{link}" for link in _links(value, printer)], _chain(value)[-1].obj
        if len(lines[0]) > WIDTH and isinstance(base, Call) and lines[0] == f"{indent}{printer.text(base)[0]}":
            lines[:1] = _line(indent, "", base, "", symbols)  # a long first call: its arguments one per line
        return lines
    return [f"{indent}{'' if k == 0 else f'{op} '}{printer.text(c)[0]}" for k, (op, c) in enumerate(_clauses(value))]


def _operand(value: Expr, prefix: str, printer: _Printer, indent: str, at_least: int = _IFEXP + 1) -> list[str]:
    """A conditional's branch on its own line, itself broken where it is too long (a weak one keeps brackets)."""
    if printer.text(value)[1] < at_least:
        return [f"{indent}{prefix}{printer.wrapped(value, at_least)}"]
    return _line(indent, prefix, value, "", printer.symbols)


def _chain(value: Expr) -> list[Method | Index]:
    """The links of a method chain, outermost first (`a.f().g()[0]`: the index, g, f), down to its base."""
    links: list[Method | Index] = []
    while isinstance(value, Method | Index):
        links.append(value)
        value = value.obj
    return links


def _links(value: Method | Index, printer: _Printer) -> list[str]:
    """A method chain one call per line (`.unfold(..)` under its base); an index stays on the call before it."""
    links = _chain(value)[::-1]
    base = links[0].obj
    lines = [printer.wrapped(base, ATOM)]
    for link in links:
        if isinstance(link, Method):
            lines.append(f".{link.name}({printer.arguments(link.args, link.kwargs)})")
        else:
            lines[-1] += f"[{', '.join(printer.text(item)[0] for item in link.items)}]"
    if isinstance(base, Name | Attr):  # `x.f()` reads better than `x` alone on a line
        lines[:2] = [lines[0] + lines[1]]
    return lines


def _clauses(value: Expr) -> list[tuple[str, Expr]]:
    """The operands of a chain of `and` (or of `or`), left to right, each with the operator before it."""
    if isinstance(value, BinOp) and value.op in ("and", "or"):
        return _operands(value)
    return [("", value)]


# Operators whose grouping never changes the result: `a and (b and c)` prints as `a and b and c`. Not `+` or `*`,
# which round differently on floats when regrouped.
_ASSOCIATIVE = frozenset({"and", "or", "|"})


def _operands(expr: BinOp) -> list[tuple[str, Expr]]:
    """The operands of a chain of operators as strong as `expr`'s, left to right, each with the operator before it
    ("" for the first). Found with a stack, not recursion: a chain can be thousands of operators long (a sum of
    many terms, the checks of hundreds of arguments)."""
    strength = _BINARY[expr.op]
    found: list[tuple[str, Expr]] = []
    # (operator before, node, whether its own operators join the chain): a left operand always does (the chain
    # is left-associative); a right operand only under an associative operator.
    stack: list[tuple[str, Expr, bool]] = [("", expr, True)]
    while stack:
        before, node, joins = stack.pop()
        if joins and isinstance(node, BinOp) and _BINARY[node.op] == strength and _MATMUL[node.op] == _MATMUL[expr.op]:
            stack.append((node.op, node.right, node.op in _ASSOCIATIVE))
            stack.append((before, node.left, True))
        else:
            found.append((before, node))
    return found


def _assign(op: Assign, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    lines = _noted(indent, f"{op.target} = ", op.value, op.note, symbols)
    if len(lines[0]) > WIDTH and ", " in op.target:  # unpacked into many names: one target per line
        targets = [f"{indent}    {target}," for target in op.target.split(", ")]
        return [f"{indent}("] + targets + _line(indent, ") = ", op.value, _note(op.note), symbols)
    return lines


def _effect(op: Effect, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    return _noted(indent, "", op.value, op.note, symbols)


def _noted(indent: str, prefix: str, value: Expr, note: str, symbols: Mapping[sympy.Symbol, str]) -> list[str]:
    """A line with its note after it, or the note on a line of its own above it where the note alone would push the
    line past the width."""
    lines = _line(indent, prefix, value, _note(note), symbols)
    if note and len(lines) == 1 and len(lines[0]) > WIDTH:
        bare = _line(indent, prefix, value, "", symbols)
        if len(bare) == 1 and len(bare[0]) <= WIDTH:
            return [f"{indent}# {comment_text(note)}", *bare]
    return lines


def _branch(op: Branch, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    lines = []
    for position, (test, body) in enumerate(op.arms):
        note = _note(op.notes[position]) if position < len(op.notes) else ""
        keyword = "if" if position == 0 else ("else" if test is None else "elif")
        if test is None:
            lines.append(f"{indent}{keyword}:{note}")
        else:
            lines += _line(indent, f"{keyword} ", test, f":{note}", symbols)
        for inner in body:
            lines += op_lines(inner, symbols, indent + "    ")
    return lines


def _return(op: Return, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    return _line(indent, "return ", op.value, "", symbols)


def _comment(op: Comment, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    """The comment, wrapped at the width after a product's or a sum's operators (never inside a factor)."""
    width, lines = WIDTH - len(indent) - 2, [""]
    for piece in re.split(r"(?<= [*+]) ", comment_text(op.text)):
        if lines[-1] and len(lines[-1]) + 1 + len(piece) > width:
            lines.append(piece)
        else:
            lines[-1] = f"{lines[-1]} {piece}" if lines[-1] else piece
    return [f"{indent}# {line}".rstrip() for line in lines]


def _function(function: Function, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    """Its decorators, `def name(params, *, keywords):`, the docstring and the ops (sized by its own symbols)."""
    params = list(function.params)
    first = len(params) - len(function.defaults)
    params[first:] = [f"{name}={expr_text(d, {})}" for name, d in zip(params[first:], function.defaults, strict=True)]
    keywords = [name if default is None else f"{name}={expr_text(default, {})}" for name, default in function.keywords]
    if keywords:
        params += ["*", *keywords]
    lines = [f"{indent}@{decorator}" for decorator in function.decorators]
    head = f"{indent}def {function.name}({', '.join(params)}):"
    if len(head) > WIDTH:  # a function of many arguments: one parameter per line
        lines += [f"{indent}def {function.name}(", *(f"{indent}    {param}," for param in params), f"{indent}):"]
    else:
        lines.append(head)
    lines += [docstring(function.doc, indent + "    ")] if function.doc else []
    for op in function.body:
        lines += op_lines(op, function.symbols, indent + "    ")
    return lines


def _class(cls: ClassDef, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    """`class name(bases):`, the docstring and each method after a blank line."""
    lines = [f"{indent}class {cls.name}({', '.join(cls.bases)}):", docstring(cls.doc, indent + "    ")]
    for function in cls.methods:
        lines += ["", *_function(function, symbols, indent + "    ")]
    return lines


_OPS: dict[type, Callable[[Any, Mapping[sympy.Symbol, str], str], list[str]]] = {
    Assign: _assign,
    Effect: _effect,
    Branch: _branch,
    Return: _return,
    Comment: _comment,
    Function: _function,
    ClassDef: _class,
}


def definition_text(definition: Function | ClassDef) -> str:
    """A module-level function or class."""
    return "\n".join(op_lines(definition, {}, ""))

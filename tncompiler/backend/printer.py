"""The printer: scheduled ops to Python text. A table from each expression node and op to its text; nothing here
decides what the code does."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import sympy

from tncompiler.backend.expressions import ATOM, MUL, UNARY, printed_expr, python_expr
from tncompiler.backend.text import comment_text, docstring
from tncompiler.schedule.autograd import AutogradClass
from tncompiler.schedule.names import safe_identifier
from tncompiler.schedule.ops import (
    Assign,
    Attr,
    BinOp,
    Branch,
    Call,
    Chooser,
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

__all__ = ["autograd_text", "chooser_text", "expr_text", "function_text", "op_lines"]

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
    Unary: _Printer.unary,
    IfExp: _Printer.ifexp,
    Lambda: _Printer.lambda_,
}


def _note(text: str) -> str:
    return f"  # {comment_text(text)}" if text else ""


def op_lines(op: Op, symbols: Mapping[sympy.Symbol, str], indent: str = "    ") -> list[str]:
    """The lines of one op."""
    return _OPS[type(op)](op, symbols, indent)


# Lines longer than this are broken after the opening bracket of their call or condition, one item per line.
WIDTH = 120


def _line(indent: str, prefix: str, value: Expr, suffix: str, symbols: Mapping[sympy.Symbol, str]) -> list[str]:
    """`prefix + value + suffix` on one line, or, where that is too long, the call's arguments (or the condition's
    clauses) one per line."""
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
    clauses = _clauses(value.operand if isinstance(value, Unary) and value.op == "not" else value)
    if len(clauses) > 1:
        negation = "not " if isinstance(value, Unary) else ""
        joined = [f"{inner}{'' if k == 0 else f'{op} '}{expr_text(c, symbols)}" for k, (op, c) in enumerate(clauses)]
        return [f"{indent}{prefix}{negation}("] + joined + [f"{indent}){suffix}"]
    return [text]


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
    return _line(indent, f"{op.target} = ", op.value, _note(op.note), symbols)


def _effect(op: Effect, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    return _line(indent, "", op.value, _note(op.note), symbols)


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
    return [f"{indent}return {expr_text(op.value, symbols)}"]


def _comment(op: Comment, symbols: Mapping[sympy.Symbol, str], indent: str) -> list[str]:
    return [f"{indent}# {comment_text(op.text)}"]


_OPS: dict[type, Callable[[Any, Mapping[sympy.Symbol, str], str], list[str]]] = {
    Assign: _assign,
    Effect: _effect,
    Branch: _branch,
    Return: _return,
    Comment: _comment,
}


def function_text(function: Function) -> str:
    """`def name(params, *, keywords):`, the docstring and the ops."""
    params = list(function.params)
    keywords = [name if default is None else f"{name}={expr_text(default, {})}" for name, default in function.keywords]
    if keywords:
        params += ["*", *keywords]
    head = f"def {function.name}({', '.join(params)}):"
    if len(head) > WIDTH:  # a function of many arguments: one parameter per line
        head = "\n".join([f"def {function.name}(", *(f"    {param}," for param in params), "):"])
    lines = [head, docstring(function.doc, "    ")]
    for op in function.body:
        lines += op_lines(op, function.symbols)
    return "\n".join(lines)


def chooser_text(chooser: Chooser) -> str:
    """The cached module-level function that picks the cheapest plan for the call-time sizes."""
    names = {symbol: _parameter(symbol) for symbol in chooser.params}
    costs = ", ".join(python_expr(cost, names) for cost in chooser.costs)
    return "\n".join(
        [
            "@functools.lru_cache(maxsize=None)",
            f"def {chooser.name}({', '.join(names.values())}):",
            f'    """{chooser.doc}"""',
            f"    costs = ({costs},)",
            "    return costs.index(min(costs))",
        ]
    )


def _parameter(symbol: sympy.Symbol) -> str:
    return safe_identifier(str(symbol))


def autograd_text(cls: AutogradClass) -> str:
    """A torch.autograd.Function: the exact forward pass, and the VJPs in the backward pass. Its non-tensor arguments
    (the generator, sizes, p or count) are kept on ctx by setup_context, so `apply` takes them by keyword too."""
    params = ", ".join(cls.params)
    extra = ["generator", *cls.sizes, *(name for name, _ in cls.rates)]
    defaults = ["generator=None", *(f"{s}=None" for s in cls.sizes), *(f"{n}={expr_text(v, {})}" for n, v in cls.rates)]
    usage = ["generator: a torch.Generator or None, for the draws."]
    usage += [f"{', '.join(cls.sizes)}: the sizes {cls.forward} takes as keywords."] if cls.sizes else []
    usage += [f"{', '.join(n for n, _ in cls.rates)}: passed on to {', '.join(cls.sampled)}."] if cls.rates else []
    lines = [
        f"class {cls.name}(torch.autograd.Function):",
        f'    """{cls.forward} exactly in the forward pass; in the backward pass, the sampled VJPs',
        f"    {', '.join(cls.sampled)} and exact VJPs for the other arguments.",
        "",
        f"    Use as {cls.name}.apply({params}, {', '.join(defaults)}).",
        *(f"    {line}" for line in usage),
        '    """',
        "",
        "    @staticmethod",
        f"    def forward({params}, {', '.join(defaults)}):",
        f"        return {cls.forward}({params}{''.join(f', {s}={s}' for s in cls.sizes)})",
        "",
        "    @staticmethod",
        "    def setup_context(ctx, inputs, output):",
        f"        {', '.join([*cls.params, *(f'ctx.{name}' for name in extra)])} = inputs",
        f"        ctx.save_for_backward({params})",
        "",
        "    @staticmethod",
        f"    def backward(ctx, {cls.grad}):",
        f"        {params if len(cls.params) > 1 else f'({params},)'} = ctx.saved_tensors",
    ]
    for position, step in enumerate(cls.backward):
        args = [expr_text(a, {}) for a in step.args] + [f"{k}={expr_text(v, {})}" for k, v in step.keywords]
        lines.append(
            f"        {step.result} = {step.function}({', '.join(args)}) if ctx.needs_input_grad[{position}] else None"
        )
    nones = ", None" * len(extra)  # no gradient for the generator, the sizes, p or count
    lines.append(f"        return {', '.join(step.result for step in cls.backward)}{nones}")
    return "\n".join(lines)

"""The scheduled-op IR: what a generated function does, step by step, with every decision made.

An op is a statement of one kind (a check, a binding, a constant, a view, a contraction, a kernel call, a scale, a
sum, the return) whose value is an expression tree of Python calls, methods, indexing and sizes. The schedule pass
builds these, the peephole rules rewrite them, `tnc explain` lists them and the printer turns them into text; none
of those decides anything the ops do not say.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Literal, TypeAlias

import sympy

__all__ = [
    "Expr",
    "Entries",
    "Name",
    "Lit",
    "SizeOf",
    "Call",
    "Method",
    "Attr",
    "Index",
    "Slice",
    "Tuple",
    "BinOp",
    "Chain",
    "Unary",
    "IfExp",
    "Lambda",
    "Op",
    "OpKind",
    "Assign",
    "Effect",
    "Branch",
    "Return",
    "Comment",
    "Function",
    "ClassDef",
    "names_in",
    "reads",
    "forget_reads",
    "walk",
    "call",
    "method",
]

OpKind = Literal[
    "check", "bind", "device", "draw", "constant", "view", "contract", "kernel", "scale", "sum", "return", "note"
]


@dataclass(frozen=True)
class Name:
    """A variable, a parameter or a module-level name (`torch`, a helper)."""

    id: str


@dataclass(frozen=True)
class Lit:
    """A Python literal: printed with repr."""

    value: int | float | str | bool | None


@dataclass(frozen=True)
class SizeOf:
    """A size or scalar expression over the function's call-time sizes."""

    expr: sympy.Expr | int

    def __hash__(self) -> int:
        return hash(str(self.expr))


@dataclass(frozen=True)
class Call:
    """`func(args..., key=value...)`; `func` is a dotted name (`torch.nn.functional.conv2d`, `_pad`)."""

    func: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[tuple[str, Expr], ...] = ()


@dataclass(frozen=True)
class Method:
    """`obj.name(args..., key=value...)`."""

    obj: Expr
    name: str
    args: tuple[Expr, ...] = ()
    kwargs: tuple[tuple[str, Expr], ...] = ()


@dataclass(frozen=True)
class Attr:
    obj: Expr
    name: str


@dataclass(frozen=True)
class Slice:
    """`start:stop:step` inside an index; None parts are left out."""

    start: Expr | None = None
    stop: Expr | None = None
    step: Expr | None = None


@dataclass(frozen=True)
class Index:
    """`obj[item, ...]`; an item `Lit(...)` is printed as `...` when its value is the string '...'."""

    obj: Expr
    items: tuple[Expr | Slice, ...]


@dataclass(frozen=True)
class Tuple:
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class BinOp:
    """`left op right` for op in + - * / // % | == != < <= > >= and or."""

    op: str
    left: Expr
    right: Expr


@dataclass(frozen=True)
class Chain:
    """`a op b op c ...`, Python's chained comparison: each middle operand is read once (`x.dtype == w.dtype ==
    b.dtype` loads three attributes where two `==` joined by `and` load four)."""

    op: str
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Unary:
    """`not operand` or `-operand`."""

    op: str
    operand: Expr


@dataclass(frozen=True)
class IfExp:
    """`then if test else other`."""

    test: Expr
    then: Expr
    other: Expr


@dataclass(frozen=True)
class Lambda:
    """`lambda: body` (a constant built on first use)."""

    body: Expr


Expr: TypeAlias = Name | Lit | SizeOf | Call | Method | Attr | Index | Tuple | BinOp | Chain | Unary | IfExp | Lambda
Entries: TypeAlias = sympy.Expr | int | None  # a number of tensor entries, in the call-time sizes (None: none)


@dataclass(frozen=True)
class Assign:
    """`target = value`, an op of `kind`. `fresh`: the value is new storage nobody else holds (a result that may be
    changed in place); `cost`: multiply-adds, for `tnc explain`; `note`: a trailing comment. What it allocates (as
    torch.fx's ShapeProp records shapes), for the memory guard (memory.py) and `tnc explain`: `entries`, of the new
    storage it makes and holds (None for a view, an alias, a value in place); `scratch`, entries the call copies for
    itself while it runs (a GEMM operand laid out, a kernel's unfolded input, the temporaries of `.sum` runs)."""

    target: str  # a name, or names and attributes to unpack a tuple into (`x, w, ctx.generator`; `(x,)` for one)
    value: Expr
    kind: OpKind
    note: str = ""
    fresh: bool = False
    cost: sympy.Expr | None = field(default=None, compare=False)
    entries: Entries = field(default=None, compare=False)
    scratch: Entries = field(default=None, compare=False)


@dataclass(frozen=True)
class Effect:
    """A call for its effect: a check that raises, an in-place scale or fill."""

    value: Expr
    kind: OpKind
    note: str = ""


@dataclass(frozen=True)
class Branch:
    """`if test: ... elif test: ... else: ...`; the last arm's test is None (else)."""

    arms: tuple[tuple[Expr | None, tuple[Op, ...]], ...]
    kind: OpKind
    notes: tuple[str, ...] = ()  # one per arm


@dataclass(frozen=True)
class Return:
    """`return value`; `entries`: of new storage the value makes (zeros), as an Assign's."""

    value: Expr
    kind: OpKind = "return"
    entries: Entries = field(default=None, compare=False)


@dataclass(frozen=True)
class Comment:
    """A line of comment: the term an op sequence computes, with its source text."""

    text: str
    kind: OpKind = "note"


Op: TypeAlias = Assign | Effect | Branch | Return | Comment


@dataclass(frozen=True)
class Function:
    """One generated function (or method): its decorators, signature, docstring and ops; `symbols` names the
    call-time sizes' variables; `choosers`: the cached module-level functions that pick its plans per shape."""

    name: str
    params: tuple[str, ...]
    keywords: tuple[tuple[str, Expr | None], ...]  # keyword-only: (name, default or None for required)
    doc: str
    body: tuple[Op, ...]
    symbols: Mapping[sympy.Symbol, str]
    choosers: tuple[Function, ...] = ()
    helpers: frozenset[str] = frozenset()
    decorators: tuple[str, ...] = ()  # each printed after an `@`
    defaults: tuple[Expr, ...] = ()  # of the last `params`, as Python's __defaults__ (apply binds them positionally)


@dataclass(frozen=True)
class ClassDef:
    """A module-level class (an autograd Function): its bases, docstring and methods."""

    name: str
    bases: tuple[str, ...]
    doc: str
    methods: tuple[Function, ...]


def call(func: str, *args: Expr, **kwargs: Expr) -> Call:
    return Call(func, tuple(args), tuple(kwargs.items()))


def method(obj: Expr, name: str, *args: Expr, **kwargs: Expr) -> Method:
    return Method(obj, name, tuple(args), tuple(kwargs.items()))


def walk(expr: Expr | Slice | None) -> Iterator[Expr | Slice]:
    """Every node of an expression, the root first (sizes are leaves: their symbols are read by `names_in`)."""
    if expr is None:
        return
    yield expr
    if isinstance(expr, SizeOf):
        return
    for item in fields(expr):
        value = getattr(expr, item.name)
        for child in value if isinstance(value, tuple) else (value,):
            if isinstance(child, tuple):  # a keyword argument: (name, value)
                child = child[1]
            if is_dataclass(child):
                yield from walk(child)  # type: ignore[arg-type]


def names_in(expr: Expr | None, symbols: Mapping[sympy.Symbol, str]) -> set[str]:
    """The variables an expression reads (sizes read their symbols' variables)."""
    found: set[str] = set()
    for node in walk(expr):
        if isinstance(node, Name):
            found.add(node.id)
        elif isinstance(node, SizeOf) and isinstance(node.expr, sympy.Expr):
            found |= {symbols[s] for s in node.expr.free_symbols if s in symbols}
    return found


# reads() by op identity: the peephole rules ask for the same ops' reads again after every rewrite. An entry holds
# its op, so an id is never reused while cached; `forget_reads` empties it after each function.
_READS: dict[int, tuple[Op, Mapping[sympy.Symbol, str], frozenset[str]]] = {}


def reads(op: Op, symbols: Mapping[sympy.Symbol, str]) -> frozenset[str]:
    """The names an op reads (a branch: its tests and its arms)."""
    hit = _READS.get(id(op))
    if hit is not None and hit[0] is op and hit[1] is symbols:
        return hit[2]
    found: set[str] = set()
    if isinstance(op, Assign | Effect | Return):
        found = names_in(op.value, symbols)
    elif isinstance(op, Branch):
        for test, body in op.arms:
            found |= names_in(test, symbols)
            for inner in body:
                found |= reads(inner, symbols)
    result = _READS[id(op)] = (op, symbols, frozenset(found))
    return result[2]


def forget_reads() -> None:
    _READS.clear()

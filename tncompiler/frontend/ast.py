"""Typed syntax tree of a `.tnd` file; every node keeps the span it was written at."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeAlias

from tncompiler.errors import Span

__all__ = [
    "Name",
    "IndexItem",
    "IndexDecl",
    "PatternArg",
    "PatternDecl",
    "InputDecl",
    "AxisNames",
    "SliceSpec",
    "Axis",
    "Number",
    "TensorRef",
    "CallFactor",
    "Paren",
    "Factor",
    "Term",
    "Sum",
    "Definition",
    "KwArg",
    "Call",
    "CallArg",
    "TransformDef",
    "Statement",
    "Module",
]


@dataclass(frozen=True)
class Name:
    """An identifier as written."""

    text: str
    span: Span


@dataclass(frozen=True)
class IndexItem:
    """`a`, `a = 8` or `a = b`."""

    name: Name
    size: int | Name | None
    size_span: Span | None


@dataclass(frozen=True)
class IndexDecl:
    items: tuple[IndexItem, ...]
    span: Span


@dataclass(frozen=True)
class PatternArg:
    """`stride=2`, `padding=(1, 0)` or `padding=same`."""

    key: Name
    value: int | tuple[int, int] | str
    value_span: Span


@dataclass(frozen=True)
class PatternDecl:
    name: Name
    legs: tuple[Name, ...]
    kind: Name
    args: tuple[PatternArg, ...]
    span: Span


@dataclass(frozen=True)
class AxisNames:
    """One axis: a single index `c`, or a group `(g c)` holding g·c entries, g major."""

    names: tuple[Name, ...]
    grouped: bool
    span: Span


@dataclass(frozen=True)
class SliceSpec:
    """`start:stop:step`, any part optional."""

    start: int | None
    stop: int | None
    step: int | None
    span: Span


Axis: TypeAlias = AxisNames | SliceSpec


@dataclass(frozen=True)
class InputDecl:
    name: Name
    axes: tuple[Axis, ...]
    span: Span


@dataclass(frozen=True)
class Number:
    value: int | float
    span: Span


@dataclass(frozen=True)
class TensorRef:
    """`x[n, (g c), i1, i2]`: an input or an earlier definition, legs named freely."""

    name: Name
    axes: tuple[Axis, ...]
    span: Span


@dataclass(frozen=True)
class CallFactor:
    """`p(i, o, k)`, `delta(a, b)` or `size(n)`."""

    name: Name
    args: tuple[Name, ...]
    span: Span


@dataclass(frozen=True)
class Paren:
    body: Sum
    span: Span


Factor: TypeAlias = Number | TensorRef | CallFactor | Paren


@dataclass(frozen=True)
class Term:
    """`sign · f0 (op f1) (op f2) ...`, each op `*` or `/`."""

    negative: bool
    factors: tuple[Factor, ...]
    ops: tuple[str, ...]
    span: Span


@dataclass(frozen=True)
class Sum:
    terms: tuple[Term, ...]
    span: Span


@dataclass(frozen=True)
class Definition:
    name: Name
    axes: tuple[Axis, ...]
    body: Sum
    span: Span


@dataclass(frozen=True)
class KwArg:
    key: Name
    value: Name | float | int | SliceSpec | Call
    span: Span


@dataclass(frozen=True)
class Call:
    """A transform call `vjp(y, x, cotangent=g)`."""

    name: Name
    args: tuple[CallArg, ...]
    span: Span


CallArg: TypeAlias = Call | Name | KwArg


@dataclass(frozen=True)
class TransformDef:
    name: Name
    call: Call
    span: Span


Statement: TypeAlias = IndexDecl | PatternDecl | InputDecl | Definition | TransformDef


@dataclass(frozen=True)
class Module:
    statements: tuple[Statement, ...]

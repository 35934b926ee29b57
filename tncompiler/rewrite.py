"""The one rewrite engine: rules as data (a name, a one-line doc that is the rule's specification, the kinds of item
it looks at, and a function that returns the rewritten value or None), applied until none fires. Index-pattern
simplification, lowering and the peephole rules of the schedule are tables of such rules."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Rule", "Rewrite", "fixpoint", "MAX_STEPS"]

T = TypeVar("T")
C = TypeVar("C")

MAX_STEPS = 2000  # a safety net: every rule makes its value smaller or simpler, so this is never reached


@dataclass(frozen=True)
class Rewrite(Generic[T]):
    """A rule's result: the new value, a one-line note, and anything the caller must carry along (e.g. the open legs
    a simplification split)."""

    value: T
    note: str
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rule(Generic[T, C]):
    """`apply(value, position, context)` at each position whose item's kind is one of `kinds`."""

    name: str
    doc: str
    kinds: frozenset[str]
    apply: Callable[[T, int, C], Rewrite[T] | None]


def fixpoint(
    value: T,
    rules: Sequence[Rule[T, C]],
    kinds: Callable[[T], Sequence[str]],
    context: C,
    check: Callable[[T], None] | None = None,
) -> tuple[T, list[Rewrite[T]]]:
    """Apply the first rule that fires (in table order, then position order) until none does; `check` (a lint)
    runs after every rewrite."""
    done: list[Rewrite[T]] = []
    for _ in range(MAX_STEPS):
        rewrite = _first(value, rules, kinds(value), context)
        if rewrite is None:
            return value, done
        value = rewrite.value
        if check is not None:
            check(value)
        done.append(rewrite)
    raise RuntimeError("the rewrite rules did not settle")  # pragma: no cover - every rule shrinks its value


def _first(value: T, rules: Sequence[Rule[T, C]], items: Sequence[str], context: C) -> Rewrite[T] | None:
    for rule in rules:
        for position, kind in enumerate(items):
            if kind in rule.kinds:
                rewrite = rule.apply(value, position, context)
                if rewrite is not None:
                    return rewrite
    return None

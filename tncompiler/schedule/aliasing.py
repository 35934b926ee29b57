"""The one aliasing rule: when a generated function may write a value in place.

A value may be written in place only when the function made it (new storage that no argument, cached constant or
other variable holds) and nothing reads its old contents later: no other name that may share its storage is read
after the write. The schedule proposes in-place writes where they save a buffer (a term's coefficient, J ⊙ J); the
peephole rules never merge a value that is written in place with an equal one (after the write they differ); and
`settle` applies this rule to the tidied ops, turning every proposal the rule refuses into its out-of-place form.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import sympy

from tncompiler.schedule.ops import (
    Assign,
    BinOp,
    Branch,
    Effect,
    Expr,
    Function,
    Index,
    Method,
    Name,
    Op,
    Return,
    names_in,
    reads,
    walk,
)

__all__ = ["written", "writes", "root", "settle", "AliasingError"]

# In-place methods the schedule proposes for a saving, with the out-of-place form `settle` falls back to.
OUT_OF_PLACE = {"mul_": "mul", "square_": "square"}


class AliasingError(AssertionError):
    """An in-place write that the rule refuses and that has no out-of-place form: a compiler bug."""


def root(expr: Expr) -> str | None:
    """The variable whose storage an expression writes into: `u` for `u`, `u[..., :2]`, `u.view(...)`."""
    while isinstance(expr, Index | Method):
        expr = expr.obj
    return expr.id if isinstance(expr, Name) else None


def writes(op: Op) -> set[str]:
    """The variables an op writes in place (a method whose name ends in `_`, anywhere in its expression)."""
    if isinstance(op, Branch):
        return {name for _, body in op.arms for inner in body for name in writes(inner)}
    if not isinstance(op, Assign | Effect | Return):
        return set()
    found = set()
    for node in walk(op.value):
        if isinstance(node, Method) and node.name.endswith("_") and not node.name.startswith("_"):
            name = root(node.obj)
            if name is not None:
                found.add(name)
    return found


def written(ops: tuple[Op, ...]) -> frozenset[str]:
    """Every variable that some op of `ops` (branch arms included) writes in place."""
    return frozenset(name for op in ops for name in writes(op))


@dataclass
class _State:
    """What is known at a point of a block: which names hold storage the function made, and which names may share
    storage with which (a view, a reshape, a plain alias)."""

    made: set[str] = field(default_factory=set)
    shares: dict[str, set[str]] = field(default_factory=dict)

    def bind(self, op: Assign, symbols: Mapping[sympy.Symbol, str]) -> None:
        target = op.target
        for group in self.shares.values():
            group.discard(target)
        self.shares[target] = {target}
        if op.fresh:
            self.made.add(target)
            return
        self.made.discard(target)
        for name in names_in(op.value, symbols) - {target}:  # conservatively: a non-fresh value may view its reads
            joined = self.shares.setdefault(name, {name}) | self.shares[target]
            for member in joined:
                self.shares[member] = joined

    def copy(self) -> _State:
        return _State(set(self.made), {name: set(group) for name, group in self.shares.items()})


def _reads_after(
    ops: tuple[Op, ...], after: frozenset[str], symbols: Mapping[sympy.Symbol, str]
) -> list[frozenset[str]]:
    """For each position, the names read after it (in the block, then after the block): one pass from the end."""
    found, later = [frozenset(after)] * len(ops), frozenset(after)
    for position in range(len(ops) - 1, -1, -1):
        found[position] = later
        later = later | reads(ops[position], symbols)
    return found


def _allowed(name: str, state: _State, later: frozenset[str]) -> bool:
    """The rule: made by the function, and no other name that may share its storage is read later."""
    return name in state.made and not (state.shares.get(name, {name}) - {name}) & later


def _out_of_place(op: Op, name: str) -> Op:
    """The proposal without the in-place write: `u.mul_(c)` -> `u = u.mul(c)`, `u.square_()` -> `u.square()`."""

    def rebuild(expr: Any) -> Any:
        if isinstance(expr, Method):
            obj = rebuild(expr.obj)
            if expr.name in OUT_OF_PLACE and root(expr.obj) == name:
                return replace(expr, obj=obj, name=OUT_OF_PLACE[expr.name])
            if expr.name.endswith("_") and root(expr.obj) == name:
                raise AliasingError(f"in-place {expr.name} on {name}, which the function may not write")
            return replace(expr, obj=obj, args=tuple(rebuild(a) for a in expr.args))
        if isinstance(expr, BinOp):
            return replace(expr, left=rebuild(expr.left), right=rebuild(expr.right))
        return expr

    if isinstance(op, Effect):
        value = rebuild(op.value)
        if root(value) != name or not isinstance(value, Method):
            raise AliasingError(f"in-place write on {name} in an effect that has no out-of-place form")
        # a new tensor: the old contents stay for whoever shares them
        return Assign(name, value, op.kind, op.note, True)
    assert isinstance(op, Assign | Return)
    return replace(op, value=rebuild(op.value))


def _block(
    ops: tuple[Op, ...], state: _State, after: frozenset[str], symbols: Mapping[sympy.Symbol, str]
) -> tuple[Op, ...]:
    result: list[Op] = []
    suffixes = _reads_after(ops, after, symbols)
    for position, op in enumerate(ops):
        if isinstance(op, Branch):
            op = _branch(op, state, suffixes[position], symbols)
            result.append(op)
            continue
        targets = writes(op)
        if targets:
            later = suffixes[position]
            for name in sorted(targets):
                if not _allowed(name, state, later):
                    op = _out_of_place(op, name)
        if isinstance(op, Assign):
            state.bind(op, symbols)
        result.append(op)
    return tuple(result)


def _branch(op: Branch, state: _State, later: frozenset[str], symbols: Mapping[sympy.Symbol, str]) -> Branch:
    """Each arm from the state before the branch; after it, a name is made only if every path made it, and two names
    may share storage if they may on some path."""
    arms, ends = [], []
    for test, body in op.arms:
        end = state.copy()
        arms.append((test, _block(body, end, later, symbols)))
        ends.append(end)
    if op.arms[-1][0] is not None:  # no else: the branch may be skipped
        ends.append(state.copy())
    state.made = set.intersection(*(end.made for end in ends))
    for end in ends:
        for name, group in end.shares.items():
            state.shares[name] = state.shares.get(name, {name}) | group
    return replace(op, arms=tuple(arms))


def settle(function: Function) -> Function:
    """The function with every in-place write the rule refuses turned into its out-of-place form."""
    return replace(function, body=_block(function.body, _State(), frozenset(), function.symbols))

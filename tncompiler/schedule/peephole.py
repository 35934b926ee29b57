"""Peephole rules on a function's ops, applied by the rewrite engine until none fires: equal values computed once,
no aliases, no reshape of a reshape, no dead lines. Each rule looks at a whole block of ops (a function body or a
branch arm) in one linear pass, so that a function of thousands of terms is tidied in linear time. A rewritten op
keeps what it allocates (`entries`: the memory guard reads the tidied ops), and an alias allocates nothing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any

import sympy

from tncompiler.rewrite import Rewrite, Rule, fixpoint
from tncompiler.schedule.aliasing import settle, written
from tncompiler.schedule.ops import (
    Assign,
    Attr,
    Branch,
    Expr,
    Function,
    Index,
    Method,
    Name,
    Op,
    SizeOf,
    forget_reads,
    names_in,
    reads,
)

__all__ = ["PEEPHOLE", "tidy"]

Ops = tuple[Op, ...]


@dataclass(frozen=True)
class Scope:
    """What the rules need to know beyond a block's ops: the names read after it, the size variables, how often
    each name is assigned in the whole function (only names assigned once are renamed or dropped), and the names
    some op writes in place (their contents change without an assignment)."""

    after: frozenset[str]
    symbols: Mapping[sympy.Symbol, str]
    counts: Mapping[str, int]
    params: frozenset[str]
    mutated: frozenset[str] = frozenset()

    def single(self, name: str) -> bool:
        return self.counts.get(name, 0) == 1 and name not in self.symbols.values()

    def stable(self, name: str) -> bool:
        """Holds one value throughout: never reassigned (a parameter, or a name assigned once) and never written in
        place."""
        return (name in self.params or self.counts.get(name, 0) <= 1) and name not in self.mutated


def _assigned(ops: Ops) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in ops:
        if isinstance(op, Assign):
            counts[op.target] = counts.get(op.target, 0) + 1
        elif isinstance(op, Branch):
            for _, body in op.arms:
                for name, count in _assigned(body).items():
                    counts[name] = counts.get(name, 0) + count
    return counts


def _substitute(value: Any, names: Mapping[str, Expr]) -> Any:
    """`value` (an op, an expression, or a tuple of them) with each Name in `names` replaced (targets stay)."""
    if isinstance(value, Name):
        return names.get(value.id, value)
    if isinstance(value, tuple):
        return tuple(_substitute(item, names) for item in value)
    if is_dataclass(value) and not isinstance(value, type | SizeOf):
        changes = {f.name: _substitute(getattr(value, f.name), names) for f in fields(value) if f.name != "target"}
        return replace(value, **changes)
    return value


def common(ops: Ops, position: int, scope: Scope) -> Rewrite[Ops] | None:
    """u = E; ...; v = E (every name in E, u and v never reassigned nor written in place) -> v = u: equal values
    computed once. A value written in place (a term scaled by its coefficient) is no longer E after the write, and
    an alias of it would carry a later write of either name into the other."""
    seen: dict[Expr, str] = {}
    result, changed = [], []
    for op in ops:
        if isinstance(op, Assign) and op.kind in ("view", "contract", "constant", "kernel"):
            stable = all(scope.stable(name) for name in names_in(op.value, scope.symbols))
            merge = stable and op.target not in scope.mutated and not isinstance(op.value, Name)
            if merge and op.value in seen:
                alias = Name(seen[op.value])  # allocates nothing
                op = replace(op, value=alias, kind="view", note="", cost=None, entries=None, scratch=None)
                changed.append(op.target)
            elif stable and scope.single(op.target) and op.target not in scope.mutated:
                seen.setdefault(op.value, op.target)
        result.append(op)
    return Rewrite(tuple(result), f"common: {', '.join(changed)}") if changed else None


def alias(ops: Ops, position: int, scope: Scope) -> Rewrite[Ops] | None:
    """v = w (both never reassigned, v not needed after the block) -> w read wherever v was."""
    names: dict[str, Expr] = {}
    result: list[Op] = []
    for op in ops:
        op = _substitute(op, names) if names else op
        if isinstance(op, Assign) and isinstance(op.value, Name) and _renamable(op.target, op.value.id, scope):
            names[op.target] = op.value
            continue
        result.append(op)
    return Rewrite(tuple(result), f"alias: {', '.join(names)}") if names else None


def _renamable(target: str, source: str, scope: Scope) -> bool:
    return scope.single(target) and scope.stable(source) and target not in scope.after


def reshape_chain(ops: Ops, position: int, scope: Scope) -> Rewrite[Ops] | None:
    """u = z.reshape(a), read only by v = u.reshape(b) -> v = z.reshape(b) (which copies where u's reshape did)."""
    uses = _uses(ops, scope)
    reshapes = {
        op.target: op
        for op in ops
        if isinstance(op, Assign) and _is_reshape(op.value) and scope.single(op.target) and uses.get(op.target) == 1
    }
    result, folded = [], []
    for op in ops:
        if isinstance(op, Assign) and isinstance(op.value, Method) and op.value.name == "reshape":
            inner = op.value.obj
            source = reshapes.get(inner.id) if isinstance(inner, Name) else None
            if isinstance(inner, Name) and source is not None and isinstance(source.value, Method):
                entries = op.entries if op.entries is not None else source.entries
                op = replace(op, value=replace(op.value, obj=source.value.obj), entries=entries)
                folded.append(inner.id)
        result.append(op)
    return Rewrite(tuple(result), f"reshape chain: {', '.join(folded)}") if folded else None


def _is_reshape(value: Expr) -> bool:
    return isinstance(value, Method) and value.name == "reshape"


def _uses(ops: Ops, scope: Scope) -> dict[str, int]:
    counts: dict[str, int] = {name: 1 for name in scope.after}
    for op in ops:
        for name in reads(op, scope.symbols):
            counts[name] = counts.get(name, 0) + 1
    return counts


def dead(ops: Ops, position: int, scope: Scope) -> Rewrite[Ops] | None:
    """v = value with v never read -> dropped (checks, draws and bindings that validate stay)."""
    live = set(scope.after)
    kept, dropped = [], []
    for op in reversed(ops):
        if isinstance(op, Assign) and _droppable(op, scope) and op.target not in live:
            dropped.append(op.target)
            continue
        live |= reads(op, scope.symbols)
        kept.append(op)
    return Rewrite(tuple(reversed(kept)), f"dead: {', '.join(dropped)}") if dropped else None


def _droppable(op: Assign, scope: Scope) -> bool:
    if op.kind in ("check", "draw") or not scope.single(op.target):
        return False
    return op.kind != "bind" or _shape_read(op.value)


def _shape_read(value: Expr) -> bool:
    """A size read off a shape (x.shape[0]), which cannot fail."""
    return isinstance(value, Index) and isinstance(value.obj, Attr) and value.obj.name == "shape"


_BLOCK = frozenset({"block"})

# The peephole rules, in the order they are tried; each rewrites a whole block.
PEEPHOLE: tuple[Rule[Ops, Scope], ...] = (
    Rule("common", "v = E after u = E -> v = u (equal sub-expressions computed once)", _BLOCK, common),
    Rule("alias", "v = w -> w read wherever v was", _BLOCK, alias),
    Rule("reshape-chain", "v = u.reshape(b), u = z.reshape(a) read once -> v = z.reshape(b)", _BLOCK, reshape_chain),
    Rule("dead", "v = value, v never read -> dropped", _BLOCK, dead),
)


def _block(ops: Ops, scope: Scope) -> Ops:
    """The rules on one block, after they ran on every branch arm inside it."""
    tidied: list[Op] = []
    for position, op in enumerate(ops):
        if isinstance(op, Branch):
            after = set(scope.after)
            for later in ops[position + 1 :]:
                after |= reads(later, scope.symbols)
            inner = replace(scope, after=frozenset(after))
            op = replace(op, arms=tuple((test, _block(body, inner)) for test, body in op.arms))
        tidied.append(op)
    result, _ = fixpoint(tuple(tidied), PEEPHOLE, lambda _: ["block"], scope)
    return result


def tidy(function: Function) -> Function:
    """The function with the peephole rules applied everywhere, then the aliasing rule on its in-place writes."""
    body = function.body
    scope = Scope(frozenset(), function.symbols, _assigned(body), frozenset(function.params), written(body))
    try:
        return settle(replace(function, body=_block(body, scope)))
    finally:
        forget_reads()

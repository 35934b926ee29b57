"""Fusion: a group of constant tensors (patterns, selections, copy tensors) joined by indices that only they
carry is contracted once, when the constants are built, where the cost model says that lowers the work per call
(KFAC-reduce: Σ_o Π[i, o, k] becomes one small matrix per spatial dimension)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tncompiler.cost import WITHOUT_RULES, Regimes, evaluate, lowered_cost, symbols_of
from tncompiler.ir.network import Network
from tncompiler.ir.values import Factor, Fused, GatherOp, is_kept
from tncompiler.rewrite import Rewrite, Rule, fixpoint

__all__ = ["fuse_network", "MAX_FUSED_ENTRIES"]

# A fused constant larger than this is never built, whatever it saves.
MAX_FUSED_ENTRIES = 2**24


@dataclass(frozen=True)
class _Group:
    members: tuple[int, ...]
    legs: tuple[str, ...]  # legs the group shares with the rest of the network, in first-appearance order


def _constant(factor: Factor) -> bool:
    if factor.kind not in ("pattern", "select", "delta"):
        return False
    return factor.view is None or not any(isinstance(op, GatherOp) for op in factor.view.ops)


def _groups(net: Network) -> list[_Group]:
    """Constants joined through summed indices that no other tensor carries."""
    parent = {k: k for k, f in enumerate(net.factors) if _constant(f)}

    def root(k: int) -> int:
        while parent[k] != k:
            k = parent[k]
        return k

    for leg in net.summed():
        carriers = net.tensors_on(leg)
        if all(k in parent for k in carriers):
            for k in carriers[1:]:
                parent[root(k)] = root(carriers[0])
    members: dict[int, list[int]] = {}
    for k in parent:
        members.setdefault(root(k), []).append(k)
    groups = []
    for group in members.values():
        inside = set(group)
        legs = [leg for k in group for leg in net.factors[k].legs]
        shared = [
            leg
            for leg in dict.fromkeys(legs)
            if leg in net.outputs or any(j not in inside for j in net.tensors_on(leg))
        ]
        if len(shared) < len(set(legs)):  # something is summed inside the group
            groups.append(_Group(tuple(group), tuple(shared)))
    return groups


def _entries(net: Network, legs: tuple[str, ...], regimes: Regimes) -> int | None:
    """Entries over these legs; a size known only at call time counts at the middle regime (a fused constant over
    it is built once per call-time shape), a sampled one makes the group unfusable."""
    sizes = [net.size(leg) for leg in legs]
    if any(is_kept(size) for size in sizes):
        return None
    middle = regimes.middle(symbols_of(*sizes))
    return math.prod(evaluate(size, middle) for size in sizes)


def _shrinks(net: Network, parts: tuple[Factor, ...], entries: int, regimes: Regimes) -> bool:
    """A single constant summed over a leg only it carries (Σ_o Π[i, o, k]) becomes a smaller one: always worth it.
    Multiply-adds alone would not say so (a window view sums as few), but the summed view is strided and a product
    with a small dense matrix runs as a matrix product, and needs no padded copy."""
    if len(parts) != 1:
        return False
    whole = _entries(net, parts[0].legs, regimes)
    return whole is not None and entries < whole


def fuse_group(net: Network, position: int, regimes: Regimes) -> Rewrite[Network] | None:
    """The first group of constants whose fusion lowers the work per call (or shrinks a constant), fused."""
    base: float | None = None  # the unfused network's cost, computed once, when first needed
    for group in _groups(net):
        entries = _entries(net, group.legs, regimes)
        if entries is None or entries > MAX_FUSED_ENTRIES:
            continue
        parts = tuple(net.factors[k] for k in group.members)
        sizes = tuple((leg, net.size(leg)) for f in parts for leg in dict.fromkeys(f.legs))
        fused = Factor("fused", "", group.legs, parts[0].span, Fused(parts, group.legs, tuple(dict(sizes).items())))
        factors = [f for k, f in enumerate(net.factors) if k not in group.members] + [fused]
        kept = {leg for f in factors for leg in f.legs} | set(net.outputs)
        candidate = Network(
            factors, net.outputs, {k: v for k, v in net.sizes.items() if k in kept}, net.coefficient, net.lowering
        )
        if not _shrinks(net, parts, entries, regimes):
            base = lowered_cost(net, regimes) if base is None else base  # window views are free
            if lowered_cost(candidate, regimes) >= base:
                continue
        described = " * ".join(f"{f.name or f.kind}({', '.join(f.legs)})" for f in parts)
        return Rewrite(candidate, f"fuse: {described} -> one constant over ({', '.join(group.legs)}), built once")
    return None


# The fusion rule: applied to the whole term until no group is worth fusing.
RULES: tuple[Rule[Network, Regimes], ...] = (
    Rule(
        "fuse",
        "constants joined by legs only they carry -> one constant, where that lowers the work per call",
        frozenset({"term"}),
        fuse_group,
    ),
)


def fuse_network(net: Network, regimes: Regimes = WITHOUT_RULES) -> tuple[Network, list[str]]:
    fused, done = fixpoint(net, RULES, lambda _: ["term"], regimes)
    return fused, [step.note for step in done]

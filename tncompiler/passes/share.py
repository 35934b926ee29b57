"""Common sub-networks: a term that holds two copies of one sub-network computes it once.

A definition used twice in one product is inlined twice, with fresh names for its summed legs: the GGN diagonal
J ⊙ J holds two copies of J's network, a Gram matrix two copies of the per-sample gradients. A contraction order
for the whole product may pair the copies' factors with each other (s·s over v, then x·x over positions) and pay
more than J twice. Here the copies are found as two disjoint sets of factors A and B = τ(A), equal factor for
factor up to a renaming τ of the legs that maps A's own summed legs onto B's. Then

    Σ Π_A Π_B Π_rest = Σ H[ℓ] · H[τ(ℓ)] · Π_rest,   H[ℓ] = Σ_{A's own legs} Π_A

and H, computed once (by a kernel where it is one: J is a convolution's weight gradient), is read twice. The pass runs
first, on the diagram as built, so that simplify sees each shared sub-network as written and lowering can still pick
J's own kernel for it (a K = S layer's J would otherwise be a reshape and a GEMM)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace

from tncompiler.cost import Regimes, lowered_cost
from tncompiler.ir.network import Diagram, Network, Shared
from tncompiler.ir.values import Factor

__all__ = ["share_common"]


@dataclass(frozen=True)
class _Copies:
    """Factor positions `half` and `copy` (copy[j] is half[j] renamed), and the leg renaming τ."""

    half: tuple[int, ...]
    copy: tuple[int, ...]
    legs: dict[str, str]


# The search for copies tries every pair of equal factors and grows each: cubic in the factors. No real term has more
# than a dozen; past this many, a product is left unshared (a 4,000-factor chain then compiles in 2 s, not minutes).
SHARE_UP_TO = 64


def share_common(diagram: Diagram, lint: bool) -> tuple[Diagram, tuple[str, ...]]:
    """Each term's repeated sub-networks, computed once where that costs no more (equal ones across terms once)."""
    regimes = Regimes(diagram.size_rules)
    shared = list(diagram.shared)
    terms, notes = [], []
    for term in diagram.terms:
        while (found := _cheaper_copies(term, regimes)) is not None:
            term, note = _factor_out(term, found, shared)
            notes.append(note)
        if lint:
            term.lint()
        terms.append(term)
    return replace(diagram, terms=tuple(terms), shared=tuple(shared)), tuple(notes)


def _cheaper_copies(term: Network, regimes: Regimes) -> _Copies | None:
    """Two copies of a sub-network, where computing it once costs no more than the term's own cheapest order. A
    term that is a kernel as written is left to lowering."""
    if term.lowering.as_written is not None or len(term.factors) > SHARE_UP_TO:
        return None
    whole: float | None = None  # the term's own cost, found when first needed
    for found in _all_copies(term):
        sub = _sub_network(term, found.half)
        rest = _replaced(term, found, "_", sub.outputs)
        whole = lowered_cost(term, regimes) if whole is None else whole
        if lowered_cost(sub, regimes) + lowered_cost(rest, regimes) <= whole:
            return found
    return None


def _all_copies(term: Network) -> Iterator[_Copies]:
    """Candidate pairs of copies, grown from each pair of equal factors, whose halves multiply at least two tensors
    (one tensor with its patterns is a view: its copies are read from one view already)."""
    factors = term.factors
    for a in range(len(factors)):
        for b in range(a + 1, len(factors)):
            found = _grow(term, a, b)
            if found is not None and sum(factors[k].kind in ("input", "shared") for k in found.half) >= 2:
                yield found


def _same_kind(a: Factor, b: Factor) -> bool:
    return (a.kind, a.name, a.pattern, a.view, len(a.legs)) == (b.kind, b.name, b.pattern, b.view, len(b.legs))


def _grow(term: Network, a: int, b: int) -> _Copies | None:
    """The copies that start from factors a ↦ b: every factor met through a renamed summed leg of the half must
    have its equal partner on the renamed leg. None where that fails or the halves overlap."""
    pairs: dict[int, int] = {}
    legs: dict[str, str] = {}
    if not _bind(term, a, b, pairs, legs):
        return None
    queue = [a]
    while queue:
        here = queue.pop()
        for leg in term.factors[here].legs:
            if legs[leg] == leg or leg in term.outputs:
                continue
            for other in term.tensors_on(leg):
                if other in pairs:
                    continue
                partner = _partner(term, other, legs[leg], pairs, legs)
                if partner is None:
                    return None
                queue.append(other)
    half, copy = tuple(pairs), tuple(pairs.values())
    if set(half) & set(copy) or _own(term, set(copy)) != {legs[leg] for leg in _own(term, set(half))}:
        return None
    return _Copies(half, copy, legs)


def _partner(term: Network, other: int, renamed: str, pairs: dict[int, int], legs: dict[str, str]) -> int | None:
    """The first factor on `renamed` that `other` maps onto consistently (bound into `pairs` and `legs`)."""
    for candidate in term.tensors_on(renamed):
        if candidate in pairs.values() or candidate == other:
            continue
        trial_pairs, trial_legs = dict(pairs), dict(legs)
        if _bind(term, other, candidate, trial_pairs, trial_legs):
            pairs.update(trial_pairs)
            legs.update(trial_legs)
            return candidate
    return None


def _bind(term: Network, a: int, b: int, pairs: dict[int, int], legs: dict[str, str]) -> bool:
    """Map factor a onto factor b, leg by leg, keeping τ one-to-one and size-preserving."""
    fa, fb = term.factors[a], term.factors[b]
    if not _same_kind(fa, fb):
        return False
    taken = {target: source for source, target in legs.items()}
    for x, y in zip(fa.legs, fb.legs):
        if legs.get(x, y) != y or taken.get(y, x) != x or term.size(x) != term.size(y):
            return False
        legs[x], taken[y] = y, x
    pairs[a] = b
    return True


def _own(term: Network, positions: set[int]) -> set[str]:
    """The summed legs that only these factors carry."""
    carried = {leg for k in positions for leg in term.factors[k].legs}
    return {leg for leg in carried if leg not in term.outputs and set(term.tensors_on(leg)) <= positions}


def _sub_network(term: Network, half: tuple[int, ...]) -> Network:
    """Π_A summed over A's own legs; its open legs in order of first appearance."""
    own = _own(term, set(half))
    factors = [term.factors[k] for k in sorted(half)]
    outputs = tuple(dict.fromkeys(leg for f in factors for leg in f.legs if leg not in own))
    return Network(factors, outputs, {leg: term.size(leg) for f in factors for leg in f.legs})


def _replaced(term: Network, found: _Copies, name: str, outputs: tuple[str, ...]) -> Network:
    """The term with both copies replaced by shared factors `name` (the second one's legs renamed by τ)."""
    gone = set(found.half) | set(found.copy)
    copies = [
        Factor("shared", name, outputs),
        Factor("shared", name, tuple(found.legs[leg] for leg in outputs)),
    ]
    factors: list[Factor] = []
    for k, factor in enumerate(term.factors):  # the copies stand where the first of their factors stood
        if k == min(gone):
            factors += copies
        if k not in gone:
            factors.append(factor)
    legs = {leg for f in factors for leg in f.legs} | set(term.outputs)
    return Network(factors, term.outputs, {leg: term.size(leg) for leg in legs}, term.coefficient, term.lowering)


def _factor_out(term: Network, found: _Copies, shared: list[Shared]) -> tuple[Network, str]:
    """The term reading a shared sub-network (an equal one already shared is reused) and the note saying so."""
    sub = _sub_network(term, found.half)
    name, outputs = _reuse(sub, shared)
    if name is None:
        name, outputs = f"shared{len(shared) + 1}", sub.outputs
        shared.append(Shared(name, sub))
    new = _replaced(term, found, name, outputs)
    text = " * ".join(f"{f.name or f.kind}" for f in sub.factors)
    return new, f"share: {text} computed once as {name}[{', '.join(outputs)}], read twice"


def _reuse(sub: Network, shared: list[Shared]) -> tuple[str | None, tuple[str, ...]]:
    """An earlier shared sub-network equal to `sub` up to the names of its legs: its name, and `sub`'s legs in the
    order of its outputs."""
    key, order = _canonical(sub)
    for earlier in shared:
        if _canonical(earlier.network)[0] == key:
            return earlier.name, order
    return None, sub.outputs


def _canonical(net: Network) -> tuple[tuple[object, ...], tuple[str, ...]]:
    """The network with its legs numbered in order of first appearance (outputs first), and its outputs."""
    legs = dict.fromkeys([*net.outputs, *(leg for f in net.factors for leg in f.legs)])
    numbers = {leg: k for k, leg in enumerate(legs)}
    factors = tuple((f.kind, f.name, f.pattern, f.view, tuple(numbers[leg] for leg in f.legs)) for f in net.factors)
    sizes = tuple(str(net.size(leg)) for leg in numbers)
    return (factors, len(net.outputs), sizes, str(net.coefficient)), net.outputs

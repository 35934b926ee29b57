"""Kronecker factors of KFAC for a weight of a diagram that is linear in it.

The legs of the weight w are classified by where else they occur: shared with y only (output features), with the
other factors only (input features), or with both (groups: the factor is block-diagonal over them). y's legs that
w lacks are the batch and the weight-sharing positions. KFAC-expand (KFC) treats positions as extra batch; KFAC-reduce
sums them before the outer product.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import sympy

from tncompiler.derive.autodiff import derived_diagram, occurrences
from tncompiler.errors import Span, TncError
from tncompiler.ir.names import fresh_names
from tncompiler.ir.network import Argument, Diagram, Network
from tncompiler.ir.values import Factor, Layout, Size

__all__ = ["Roles", "kfac_input", "kfac_grad", "APPROXIMATIONS"]

Approx = Literal["expand", "reduce"]
APPROXIMATIONS = ("expand", "reduce")


@dataclass(frozen=True)
class Roles:
    """The weight's legs by role, in the weight's leg order, and y's remaining legs."""

    groups: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    batch: str
    positions: tuple[str, ...]


def _weight_terms(diagram: Diagram, weight: str, span: Span) -> list[tuple[Network, int]]:
    found = []
    for term in diagram.terms:
        positions = occurrences(term, weight)
        if len(positions) > 1:
            raise TncError(
                f"{diagram.name!r} is not linear in {weight!r} (a term uses it twice); KFAC needs a "
                "layer that is linear in its weight",
                span,
            )
        found += [(term, p) for p in positions]
    if not found:
        raise TncError(f"{diagram.name!r} does not depend on {weight!r}", span)
    return found


def roles(diagram: Diagram, weight: str, batch: str, span: Span) -> Roles:
    """Classify the weight's legs; every term that holds the weight must agree."""
    found = _weight_terms(diagram, weight, span)
    if batch not in diagram.layout.legs:
        raise TncError(f"batch index {batch!r} is not a leg of {diagram.name!r} {diagram.layout.text()}", span)
    classified = {_classify(term, position, diagram, batch, span) for term, position in found}
    if len(classified) != 1:
        raise TncError(f"the terms of {diagram.name!r} use {weight!r} in different ways", span)
    return classified.pop()


def _classify(term: Network, position: int, diagram: Diagram, batch: str, span: Span) -> Roles:
    legs = term.factors[position].legs
    if batch in legs:
        raise TncError(f"the batch index {batch!r} is a leg of the weight", span)
    others = set().union(*(f.legs for k, f in enumerate(term.factors) if k != position))
    result = set(diagram.layout.legs)
    groups = tuple(leg for leg in legs if leg in result and leg in others)
    inputs = tuple(leg for leg in legs if leg not in result and leg in others)
    outputs = tuple(leg for leg in legs if leg in result and leg not in others)
    lonely = [leg for leg in legs if leg not in result and leg not in others]
    if lonely or not inputs:
        raise TncError(
            f"the weight's leg {(lonely or legs)[0]!r} joins no input feature; KFAC needs weight legs "
            "that meet the layer input",
            span,
        )
    positions = tuple(leg for leg in diagram.layout.legs if leg not in legs and leg != batch)
    return Roles(groups, inputs, outputs, batch, positions)


def _scale(diagram: Diagram, r: Roles, approx: Approx, input_side: bool) -> sympy.Expr:
    scale = 1 / sympy.sympify(diagram.sizes[r.batch])
    if approx == "reduce" and input_side:
        for leg in r.positions:
            scale /= sympy.sympify(diagram.sizes[leg]) ** 2
    return scale


def _copy(
    factors: list[Factor], sizes: dict[str, Size], renames: dict[str, str], keep: set[str], taken: set[str]
) -> tuple[list[Factor], dict[str, Size]]:
    """A second copy of a factor list: `renames` applied, other indices not in `keep` made fresh."""
    inner = [leg for f in factors for leg in f.legs if leg not in keep and leg not in renames]
    mapping = {**renames, **fresh_names(dict.fromkeys(inner), taken)}
    return [f.renamed(mapping) for f in factors], {mapping.get(k, k): v for k, v in sizes.items()}


def _outer(
    left: tuple[list[Factor], dict[str, Size], sympy.Expr],
    r: Roles,
    features: tuple[str, ...],
    approx: Approx,
    right: tuple[list[Factor], dict[str, Size], sympy.Expr],
    scale: sympy.Expr,
    outputs: tuple[str, ...],
    primes: dict[str, str],
) -> Network:
    """left ⊗ right with shared batch and groups; positions shared (expand) or summed apart (reduce)."""
    factors, sizes, coefficient = left
    taken = set(sizes) | set(outputs)
    keep = {r.batch, *r.groups} | (set(r.positions) if approx == "expand" else set())
    copy, copy_sizes = _copy(right[0], right[1], {f: primes[f] for f in features}, keep, taken)
    return Network(factors + copy, outputs, {**sizes, **copy_sizes}, coefficient * right[2] * scale)


def _with_ones(factors: list[Factor], legs: tuple[str, ...], span: Span | None) -> list[Factor]:
    """Legs a part lacks are broadcast over: a product with ones keeps every sum explicit."""
    present = {leg for f in factors for leg in f.legs}
    return factors + [Factor("delta", "", (leg,), span) for leg in legs if leg not in present]


def _factor_layout(r: Roles, features: tuple[str, ...], primes: dict[str, str]) -> Layout:
    return Layout(tuple((g,) for g in r.groups) + (features, tuple(primes[f] for f in features)))


def kfac_input(
    diagram: Diagram, weight: str, batch: str, approx: Approx, name: str, span: Span, source: str = ""
) -> Diagram:
    """A[groups, (in), (in')] = scale · Σ U[batch, groups, in, positions] U[batch, groups, in', positions']."""
    r = roles(diagram, weight, batch, span)
    parts = []
    for term, position in _weight_terms(diagram, weight, span):
        factors = [f for k, f in enumerate(term.factors) if k != position]
        factors = _with_ones(factors, (r.batch, *r.positions), span)
        sizes = {**term.sizes, **{leg: diagram.sizes[leg] for leg in (r.batch, *r.positions)}}
        parts.append((factors, sizes, term.coefficient))
    return _factor_diagram(diagram, r, r.inputs, approx, parts, True, name, source, ())


def kfac_grad(
    diagram: Diagram, weight: str, batch: str, approx: Approx, cotangent: str, name: str, span: Span, source: str = ""
) -> Diagram:
    """B[groups, (out), (out')] = 1/|batch| · Σ g[batch, groups, out, positions] g[batch, groups, out', positions']."""
    r = roles(diagram, weight, batch, span)
    if not r.outputs:
        raise TncError(f"{weight!r} has no output-feature leg (one shared with {diagram.name!r} only)", span)
    grad = Factor("input", cotangent, diagram.layout.legs, span)
    sizes = {leg: diagram.sizes[leg] for leg in diagram.layout.legs}
    new = (Argument(cotangent, diagram.layout),)
    return _factor_diagram(diagram, r, r.outputs, approx, [([grad], sizes, sympy.Integer(1))], False, name, source, new)


def _factor_diagram(
    diagram: Diagram,
    r: Roles,
    features: tuple[str, ...],
    approx: Approx,
    parts: list[tuple[list[Factor], dict[str, Size], sympy.Expr]],
    input_side: bool,
    name: str,
    source: str,
    new: tuple[Argument, ...],
) -> Diagram:
    taken = set(diagram.sizes).union(*(p[1] for p in parts))
    primes = fresh_names(features, taken)
    outputs = r.groups + features + tuple(primes[f] for f in features)
    scale = _scale(diagram, r, approx, input_side)
    terms = [_outer(left, r, features, approx, right, scale, outputs, primes) for left in parts for right in parts]
    layout = _factor_layout(r, features, primes)
    return derived_diagram(diagram, name, layout, terms, new, source)

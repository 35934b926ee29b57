"""Derivatives of diagrams. A term is multilinear in its tensors, so its derivative with respect to one
occurrence of a tensor is the term with that occurrence cut out, its legs left open (product rule over the
occurrences, linearity over the terms)."""

from __future__ import annotations

from dataclasses import replace

from tncompiler.errors import Span, TncError
from tncompiler.ir.names import fresh_name
from tncompiler.ir.network import Argument, Diagram, Network
from tncompiler.ir.values import Factor, Layout, Size

__all__ = ["vjp", "jvp", "jacobian", "occurrences", "cut", "derived_diagram"]


def occurrences(term: Network, name: str) -> list[int]:
    """Positions of the factors that are argument `name`."""
    return [k for k, f in enumerate(term.factors) if f.kind == "input" and f.name == name]


def cut(
    term: Network,
    position: int,
    targets: tuple[str, ...],
    keep: tuple[str, ...],
    extra: tuple[Factor, ...] = (),
    extra_sizes: dict[str, Size] | None = None,
) -> tuple[list[Factor], dict[str, Size]]:
    """Remove factor `position` (with `extra` factors added first) and join its legs to the open legs `targets`.

    Indices that would clash with a target are renamed first. A cut leg becomes its target by renaming, unless it
    must stay open itself (`keep`) or repeats an earlier leg: then a copy tensor joins the two.
    """
    sizes = {**term.sizes, **(extra_sizes or {})}
    factors = list(term.factors) + list(extra)
    taken = set(sizes) | set(targets) | set(keep)
    clash = {name: fresh_name(name, taken) for name in sorted(set(sizes) & set(targets), key=list(sizes).index)}
    factors = [f.renamed(clash) for f in factors]
    sizes = {clash.get(name, name): size for name, size in sizes.items()}
    occurrence = factors.pop(position)
    mapping: dict[str, str] = {}
    joins: list[Factor] = []
    for leg, target in zip(occurrence.legs, targets):
        sizes[target] = sizes[leg]
        if leg in keep or leg in mapping:
            joins.append(Factor("delta", "", (mapping.get(leg, leg), target), occurrence.span))
        else:
            mapping[leg] = target
    return [f.renamed(mapping) for f in factors] + joins, sizes


def _argument(diagram: Diagram, name: str, span: Span) -> Argument:
    for argument in diagram.arguments:
        if argument.name == name:
            return argument
    names = ", ".join(a.name for a in diagram.arguments) or "none"
    raise TncError(f"{name!r} is not an argument of {diagram.name!r}; its arguments: {names}", span)


def _check_split(diagram: Diagram, term: Network, position: int, argument: Argument, span: Span) -> None:
    """Derivatives are laid out like the argument, so each occurrence must split its axes as declared."""
    legs = term.factors[position].legs
    declared = argument.layout.legs
    if len(legs) != len(declared) or any(term.size(a) != diagram.sizes[b] for a, b in zip(legs, declared)):
        raise TncError(
            f"{argument.name!r} is used with its axes split differently from its declaration "
            f"{argument.layout.text()}; derivatives need the declared split",
            span,
        )


def _used_arguments(diagram: Diagram, terms: list[Network], new: tuple[Argument, ...]) -> tuple[Argument, ...]:
    used = {f.name for t in terms for f in t.factors if f.kind == "input"}
    return tuple(a for a in diagram.arguments + new if a.name in used or a in new)


def derived_diagram(
    diagram: Diagram, name: str, layout: Layout, terms: list[Network], new: tuple[Argument, ...], source: str
) -> Diagram:
    """The derived diagram; its sizes cover its layout, its arguments' layouts and every index of its terms."""
    arguments = _used_arguments(diagram, terms, new)
    legs = layout.legs + tuple(leg for a in arguments for leg in a.layout.legs)
    sizes = {leg: diagram.sizes[leg] for leg in legs if leg in diagram.sizes}
    for term in terms:
        sizes.update(term.sizes)
    new_arguments = tuple(a.name for a in new)
    return Diagram(
        name, layout, tuple(terms), arguments, sizes, diagram.span, source, diagram.size_rules, (), new_arguments
    )


def vjp(diagram: Diagram, wrt: str, cotangent: str, name: str, span: Span, source: str = "") -> Diagram:
    """Σ over y's legs of cotangent[y] · ∂y/∂x: laid out like x, with the cotangent laid out like y."""
    argument = _argument(diagram, wrt, span)
    targets = argument.layout.legs
    terms = []
    for term in diagram.terms:
        for position in occurrences(term, wrt):
            _check_split(diagram, term, position, argument, span)
            extra = (Factor("input", cotangent, diagram.layout.legs),)
            outer = {leg: diagram.sizes[leg] for leg in diagram.layout.legs}
            factors, sizes = cut(term, position, targets, (), extra, outer)
            terms.append(Network(factors, targets, sizes, term.coefficient, term.lowering))
    derived = derived_diagram(diagram, name, argument.layout, terms, (Argument(cotangent, diagram.layout),), source)
    return replace(derived, vjp_of=(diagram.name, wrt, cotangent))


def jvp(diagram: Diagram, wrt: str, tangent: str, name: str, span: Span, source: str = "") -> Diagram:
    """Σ over x's legs of ∂y/∂x · tangent[x]: laid out like y, with the tangent laid out like x."""
    argument = _argument(diagram, wrt, span)
    terms = []
    for term in diagram.terms:
        for position in occurrences(term, wrt):
            _check_split(diagram, term, position, argument, span)
            factors = list(term.factors)
            factors[position] = replace(factors[position], name=tangent)
            terms.append(term.replace(factors=factors))
    return derived_diagram(diagram, name, diagram.layout, terms, (Argument(tangent, argument.layout),), source)


def jacobian(diagram: Diagram, wrt: str, name: str, span: Span, source: str = "") -> Diagram:
    """∂y/∂x as a network: y's legs, then x's (primed where they clash with y's)."""
    argument = _argument(diagram, wrt, span)
    taken = set(diagram.layout.legs)
    renames = {leg: fresh_name(leg, taken) for leg in argument.layout.legs}
    targets = tuple(renames[leg] for leg in argument.layout.legs)
    keep = diagram.layout.legs
    terms = []
    for term in diagram.terms:
        for position in occurrences(term, wrt):
            _check_split(diagram, term, position, argument, span)
            factors, sizes = cut(term, position, targets, keep)
            outputs = tuple(leg for leg in keep if leg in sizes) + targets
            terms.append(Network(factors, outputs, sizes, term.coefficient, term.lowering))
    layout = Layout(diagram.layout.axes + tuple(tuple(renames[leg] for leg in axis) for axis in argument.layout.axes))
    derived = derived_diagram(diagram, name, layout, terms, (), source)
    sizes = {**derived.sizes, **{renames[leg]: diagram.sizes[leg] for leg in renames}}
    return replace(derived, sizes=sizes)

"""Tensor dropout: `sample(z, index=c, p=0.5)` keeps each entry of the summed index c with probability p, gathers
the kept entries from every tensor on c (so all work on c shrinks by p) and rescales by 1/p: an unbiased estimate.
`sample(z, index=c, count=K)` keeps exactly K distinct entries, drawn uniformly, and rescales by |c|/K: also
unbiased, and every shape is static. p and K are the defaults of keyword arguments, so the scale is a symbol
(`Sampler.scale`) that the generated code reads from the call.
"""

from __future__ import annotations

from dataclasses import replace

import sympy

from tncompiler.errors import Span, TncError
from tncompiler.ir.names import fresh_name
from tncompiler.ir.network import Diagram, Network
from tncompiler.ir.values import Factor, GatherOp, Sampler, View, kept_symbol

__all__ = ["Sampler", "kept_symbol", "sample_diagram"]


def sample_diagram(
    diagram: Diagram,
    index: str,
    name: str,
    span: Span,
    source: str = "",
    p: float = 1.0,
    count: int | None = None,
    count_span: Span | None = None,
) -> Diagram:
    """`diagram` with `index` sampled: with keep-probability `p`, or `count` entries where count is given."""
    if not 0 < p <= 1:
        raise TncError(f"p must be in (0, 1], got {p}", span)
    if index in diagram.layout.legs:
        raise TncError(
            f"{index!r} is an open leg of {diagram.name!r}; sampling is for summed indices",
            span,
            "use slice(...) to restrict an open leg",
        )
    samplers = diagram.samplers
    if any(s.index == index for s in samplers):
        raise TncError(f"{index!r} is sampled already", span)
    if not any(index in term.summed() for term in diagram.terms):
        summed = sorted({leg for term in diagram.terms for leg in term.summed() if "'" not in leg})
        raise TncError(
            f"{diagram.name!r} does not sum over {index!r}", span, "summed indices: " + (", ".join(summed) or "none")
        )
    size = next(term.size(index) for term in diagram.terms if index in term.summed())
    if count is not None and isinstance(size, int) and count > size:
        raise TncError(
            f"count={count} is more than the {size} entries of {index!r}",
            count_span or span,
            f"count is at most |{index}| = {size} (count={size} is exact)",
        )
    if count is not None:  # each entry's chance to be kept, which plans count on
        p = count / size if isinstance(size, int) else 1.0
    sampler = Sampler(index, size, p, count)
    kept = fresh_name(index, set(diagram.sizes))  # the argument layouts keep the full index
    terms = tuple(_sampled(term, index, kept, sampler.scale()) for term in diagram.terms)
    sizes = dict(diagram.sizes)
    for term in terms:
        sizes.update(term.sizes)
    return replace(
        diagram,
        name=name,
        terms=terms,
        sizes=sizes,
        span=span,
        source=source,
        samplers=samplers + (sampler,),
        new_arguments=(),
    )


def _sampled(term: Network, index: str, kept: str, scale: sympy.Expr) -> Network:
    if index not in term.summed():
        return term
    factors = [
        _gather(factor, index, term).renamed({index: kept}) if index in factor.legs else factor
        for factor in term.factors
    ]
    sizes = {name: size for name, size in term.sizes.items() if name != index}
    sizes[kept] = kept_symbol(index)
    return Network(factors, term.outputs, sizes, term.coefficient * scale, term.lowering)


def _gather(factor: Factor, index: str, term: Network) -> Factor:
    view = factor.view or View(tuple(term.size(leg) for leg in factor.legs))
    ops = tuple(GatherOp(axis, index) for axis, leg in enumerate(factor.legs) if leg == index)
    return replace(factor, view=View(view.base, view.ops + ops))

"""Sub-tensor slicing: `slice(y, o1=0:8)` restricts open legs of a diagram. Each sliced leg becomes a selection
factor on the network, which the simplification rules then push into the patterns and inputs, so that the
discarded part is never computed."""

from __future__ import annotations

from dataclasses import replace

from tncompiler.errors import Span
from tncompiler.ir.names import fresh_name
from tncompiler.ir.network import Diagram, Network
from tncompiler.ir.slices import normalise
from tncompiler.ir.values import Factor, Layout, Select

__all__ = ["normalise", "slice_diagram"]


def slice_diagram(
    diagram: Diagram, slices: dict[str, tuple[int, int, int]], name: str, span: Span, source: str = ""
) -> Diagram:
    """y restricted to `slices` (leg -> start, stop, step); the restricted legs get primed names."""
    taken = set(diagram.sizes)
    renames = {leg: fresh_name(leg, taken) for leg in slices}
    sizes = dict(diagram.sizes)
    for leg, (start, stop, step) in slices.items():
        sizes[renames[leg]] = len(range(start, stop, step))
    terms = tuple(_slice_term(term, slices, renames, sizes, span) for term in diagram.terms)
    for term in terms:
        sizes.update(term.sizes)
    layout = Layout(tuple(tuple(renames.get(leg, leg) for leg in axis) for axis in diagram.layout.axes))
    return replace(
        diagram,
        name=name,
        layout=layout,
        terms=terms,
        sizes=sizes,
        span=span,
        source=source,
        new_arguments=(),
        vjp_of=None,
    )


def _slice_term(
    term: Network,
    slices: dict[str, tuple[int, int, int]],
    renames: dict[str, str],
    sizes: dict[str, object],
    span: Span,
) -> Network:
    factors = list(term.factors)
    new_sizes = dict(term.sizes)
    for leg, (start, stop, step) in slices.items():
        if leg not in term.outputs:
            continue  # the term broadcasts over this leg: slicing changes nothing in it
        full = term.size(leg)
        assert isinstance(full, int)
        count = len(range(start, stop, step))
        factors.append(Factor("select", "", (leg, renames[leg]), span, Select(full, count, start, step)))
        new_sizes[renames[leg]] = count
    outputs = tuple(renames.get(leg, leg) if leg in slices else leg for leg in term.outputs)
    return Network(factors, outputs, new_sizes, term.coefficient, term.lowering)

"""Sub-tensor slicing: `slice(y, o1=0:8)` restricts open legs of a diagram. Each sliced leg becomes a selection
factor on the network, which the simplification rules then push into the patterns and inputs, so that the
discarded part is never computed."""

from __future__ import annotations

from dataclasses import replace

from tncompiler.errors import Span, TncError
from tncompiler.ir.names import fresh_name
from tncompiler.ir.network import Diagram, Network
from tncompiler.ir.values import Factor, Layout, Select

__all__ = ["normalise", "slice_diagram"]


def normalise(size: int, start: int | None, stop: int | None, step: int | None) -> tuple[int, int, int]:
    """Python's slice semantics on an axis of `size` entries, as explicit non-negative start, stop, step."""
    if step is not None and step < 1:
        raise TncError("a slice step must be at least 1")
    begin, end, stride = slice(start, stop, step).indices(size)
    if len(range(begin, end, stride)) == 0:
        raise TncError(f"the slice {_text(start, stop, step)} of an axis of size {size} is empty")
    return begin, end, stride


def _text(start: int | None, stop: int | None, step: int | None) -> str:
    parts = ["" if v is None else str(v) for v in (start, stop)]
    return ":".join(parts) + ("" if step is None else f":{step}")


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

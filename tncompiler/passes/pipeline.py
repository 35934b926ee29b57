"""The rewrite pipeline: the passes, in order, in one place. Each pass is a pure function Diagram -> Diagram that
reports what it changed; every stage can be drawn (`tnc compile --dot`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from tncompiler.cost import Regimes, expected_sizes
from tncompiler.ir.network import Diagram, Lowering, Network, Shared
from tncompiler.ir.values import Layout
from tncompiler.passes.fuse import fuse_network
from tncompiler.passes.lower import lower_network, match_native, planned
from tncompiler.passes.share import share_common
from tncompiler.passes.simplify import simplify_network

__all__ = ["Pass", "PIPELINE", "Stage", "run_pipeline"]


@dataclass(frozen=True)
class Pass:
    name: str
    doc: str
    run: Callable[[Diagram, bool], tuple[Diagram, tuple[str, ...]]]


@dataclass(frozen=True)
class Stage:
    """A diagram after a pass, with the changes that pass made."""

    name: str
    diagram: Diagram
    changes: tuple[str, ...]


def simplify(diagram: Diagram, lint: bool) -> tuple[Diagram, tuple[str, ...]]:
    """Index-pattern simplification on every term; open legs may split only in a one-term diagram that is no
    kernel as written (a kernel's output needs no split: lowering may still prefer the kernel)."""
    notes: list[str] = []
    check: Callable[[Network], None] | None = Network.lint if lint else None

    def each(term: Network, split: bool) -> tuple[Network, dict[str, tuple[str, ...]]]:
        kernel = match_native(term) is not None
        new, changed, splits = simplify_network(term, split and not kernel, check)
        if changed and kernel:  # lowering may prefer the kernel on the term as written
            new = Network(new.factors, new.outputs, new.sizes, new.coefficient, Lowering(as_written=term))
        notes.extend(changed)
        return new, splits

    shared = tuple(Shared(s.name, each(s.network, False)[0]) for s in diagram.shared)
    terms = []
    layout = diagram.layout
    for term in diagram.terms:
        new, splits = each(term, len(diagram.terms) == 1)
        terms.append(new)
        layout = _split_layout(layout, splits)
    sizes = dict(diagram.sizes)
    for term in terms:
        sizes.update(term.sizes)
    return replace(diagram, shared=shared, terms=tuple(terms), layout=layout, sizes=sizes), tuple(notes)


def per_term(
    run: Callable[[Network, Regimes], tuple[Network, list[str]]],
) -> Callable[[Diagram, bool], tuple[Diagram, tuple[str, ...]]]:
    """A diagram pass from a network pass that leaves open legs alone: applied to every shared sub-network and
    every term, with the diagram's representative call-time sizes for its cost model."""

    def diagram_pass(diagram: Diagram, lint: bool) -> tuple[Diagram, tuple[str, ...]]:
        notes: list[str] = []

        def each(term: Network) -> Network:
            new, changed = run(term, Regimes(diagram.size_rules))
            if lint:
                new.lint()
            notes.extend(changed)
            return new

        shared = tuple(Shared(s.name, each(s.network)) for s in diagram.shared)
        return replace(diagram, shared=shared, terms=tuple(each(term) for term in diagram.terms)), tuple(notes)

    return diagram_pass


def lower(diagram: Diagram, lint: bool) -> tuple[Diagram, tuple[str, ...]]:
    """Lowering, the last pass: it keeps each contraction's plans, priced with sampled sizes at their expected
    value, on the network for the schedule."""
    expected = expected_sizes(diagram.samplers)
    return per_term(lambda term, regimes: lower_network(term, regimes, expected))(diagram, lint)


def _with_plans(diagram: Diagram) -> Diagram:
    """The diagram as written with each network's plans (no pass runs: the schedule reads them here)."""
    expected, regimes = expected_sizes(diagram.samplers), Regimes(diagram.size_rules)
    shared = tuple(Shared(s.name, planned(s.network, expected, regimes)) for s in diagram.shared)
    return replace(diagram, shared=shared, terms=tuple(planned(t, expected, regimes) for t in diagram.terms))


def _split_layout(layout: Layout, splits: dict[str, tuple[str, ...]]) -> Layout:
    """Replace each split open leg by its parts, in place, within its axis."""
    return Layout(tuple(tuple(part for leg in axis for part in splits.get(leg, (leg,))) for axis in layout.axes))


PIPELINE: tuple[Pass, ...] = (
    Pass("share", "a sub-network a term holds twice (J ⊙ J, a Gram matrix's halves) is computed once", share_common),
    Pass("simplify", "index patterns become selections, reshapes and slices; copy tensors and unit legs go", simplify),
    Pass(
        "fuse", "groups of constants are contracted once, where that lowers the work per call", per_term(fuse_network)
    ),
    Pass("lower", "convolutions go to PyTorch's kernels; other patterns become strided window views", lower),
)


def run_pipeline(diagram: Diagram, rewrite: bool = True, lint: bool = False) -> list[Stage]:
    """The diagram as built, then after each pass (only `built`, with its plans, when rewriting is off)."""
    if not rewrite:
        return [Stage("built", _with_plans(diagram), ())]
    stages = [Stage("built", diagram, ())]
    for step in PIPELINE:
        current, changes = step.run(stages[-1].diagram, lint)
        if lint:
            current.lint()
        stages.append(Stage(step.name, current, changes))
    return stages

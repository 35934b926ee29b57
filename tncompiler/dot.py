"""Draw diagrams as Graphviz DOT: tensors as nodes, indices as labelled edges, hyperedges through a dot."""

from __future__ import annotations

import hashlib

from tncompiler.ir.network import Diagram, Network
from tncompiler.ir.values import Factor, GatherOp, SliceOp, ViewOp, WindowOp

__all__ = ["diagram_dot", "escape"]

_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
# Arguments are boxes, index patterns triangles, selections (slices as tensors) trapezia, fused constants hexagons.
_SHAPES = {"input": "box", "pattern": "invtriangle", "select": "invtrapezium", "fused": "hexagon", "delta": "point"}


def escape(text: str) -> str:
    """A DOT string body: quotes and backslashes escaped, control characters dropped."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _colour(name: str) -> str:
    """A colour from a hash of the name, so pictures are stable across runs."""
    return _PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(_PALETTE)]


def diagram_dot(diagram: Diagram, stage: str = "built") -> str:
    """One DOT graph for a diagram at a stage; each term is a cluster."""
    lines = [
        f'graph "{escape(diagram.name)}.{escape(stage)}" {{',
        f'  label="{escape(diagram.name)}{escape(diagram.layout.text())}  ({escape(stage)})";',
        "  labelloc=t; fontname=Helvetica;",
        "  node [fontname=Helvetica]; edge [fontname=Helvetica, fontsize=10];",
    ]
    for position, term in enumerate(diagram.terms):
        lines += _term_cluster(f"t{position}", position, term, diagram.meta.get("new_arguments", ()))
    lines.append("}")
    return "\n".join(lines) + "\n"


def _term_cluster(prefix: str, position: int, term: Network, new: tuple[str, ...]) -> list[str]:
    title = f"term {position + 1}" + ("" if term.coefficient == 1 else f": coefficient {term.coefficient}")
    native = term.meta.get("native")
    if native is not None:
        title += f" ({native.describe()})"
    lines = [f"  subgraph cluster_{prefix} {{", f'    label="{escape(title)}"; style=rounded; color=gray;']
    for k, factor in enumerate(term.factors):
        lines.append(f"    {prefix}_f{k} {_node_style(factor, factor.name in new)};")
    lines.append(f'    {prefix}_out [label="result", shape=doublecircle, fontsize=10];')
    for index in term.indices:
        lines += _index_edges(prefix, term, index)
    lines.append("  }")
    return lines


def _node_style(factor: Factor, new: bool) -> str:
    if factor.kind == "delta":
        return '[label="", shape=point, width=0.12]'
    lines = [factor.name or factor.kind]
    if factor.pattern is not None:
        lines.append(factor.pattern.describe())
    if factor.view is not None:
        lines += [_op_text(op) for op in factor.view.ops]
    label = "\\n".join(escape(line) for line in lines)
    if new:  # the argument a derivation added (cotangent, tangent): bold and dashed
        return f'[label="{label}", shape=box, style="filled,dashed,bold", fillcolor="#ffffff", penwidth=2]'
    return f'[label="{label}", shape={_SHAPES[factor.kind]}, style=filled, fillcolor="{_colour(factor.name)}40"]'


def _op_text(op: ViewOp) -> str:
    """A view op in a word or two, for the node label."""
    if isinstance(op, SliceOp):
        return f"axis {op.axis}: [{op.start}:{op.stop}:{op.step}]"
    if isinstance(op, WindowOp):
        return f"axis {op.axis}: windows of {op.pattern.describe()}"
    if isinstance(op, GatherOp):
        return f"axis {op.axis}: sampled {op.index}"
    return f"axis {op.axis}: {type(op).__name__.removesuffix('Op').lower()}"


def _index_edges(prefix: str, term: Network, index: str) -> list[str]:
    ends = [
        f"{prefix}_f{k}"
        for k in term.tensors_on(index)
        for _ in term.graph.edges[("tensor", k), ("index", index)]["axes"]
    ]
    if index in term.outputs:
        ends.append(f"{prefix}_out")
    label = f'label="{escape(index)} ({escape(str(term.size(index)))})"'
    if len(ends) == 2:
        return [f"    {ends[0]} -- {ends[1]} [{label}];"]
    hub = f"{prefix}_i_{_node_id(index)}"
    lines = [f'    {hub} [label="", shape=point, width=0.06, xlabel="{escape(index)}"];']
    lines += [f"    {end} -- {hub} [{label}];" for end in ends]
    return lines


def _node_id(index: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in index) + "_" + hashlib.sha256(index.encode()).hexdigest()[:6]

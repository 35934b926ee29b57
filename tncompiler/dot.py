"""Draw diagrams as Graphviz DOT, the way the field draws tensor networks: tensors as boxes, index patterns as small
triangles Π, copy tensors and hyperedges as dots, open legs as loose ends named by their index."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

from tncompiler.ir.network import Diagram, Network
from tncompiler.ir.values import (
    ConvPattern,
    Factor,
    Fused,
    GatherOp,
    Layout,
    MergeOp,
    Select,
    SliceOp,
    SplitOp,
    SqueezeOp,
    View,
    ViewOp,
    WindowOp,
)
from tncompiler.render import notebook_svg

__all__ = ["diagram_dot", "diagram_svg", "escape", "program_dot", "program_svg"]

_PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f")
_STYLE = (
    "  rankdir=LR; labelloc=t; fontname=Helvetica; fontsize=12; nodesep=0.15; ranksep=0.3;",
    '  node [fontname=Helvetica, fontsize=11, width=0.3, height=0.3, margin="0.05,0.03"];',
    '  edge [fontname=Helvetica, fontsize=9, fontcolor="#444444", color="#555555"];',
)
# Constants are small shapes with a sub-label, a text node kept just below them.
_TRIANGLE = "shape=triangle, fixedsize=true, width=0.42, height=0.36"
_TRAPEZIUM = "shape=invtrapezium, fixedsize=true, width=0.42, height=0.3, fontsize=9"
_SUB_LABEL = "shape=plaintext, width=0, height=0, margin=0, fontsize=10"


def escape(text: str) -> str:
    """A DOT string body: quotes and backslashes escaped, control characters dropped."""
    text = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(ch if ch.isprintable() else " " for ch in text)


def _colour(name: str) -> str:
    """A colour from a hash of the name, so pictures are stable across runs."""
    return _PALETTE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(_PALETTE)]


def diagram_dot(diagram: Diagram, stage: str = "built") -> str:
    """One DOT graph for a diagram at a stage (no stage: the diagram as it is); each term is a cluster."""
    name = diagram.name + (f".{stage}" if stage else "")
    lines = [f'graph "{escape(name)}" {{', f'  label="{escape(_title(diagram, stage))}";', *_STYLE]
    return "\n".join([*lines, *_diagram_body("", diagram), "}"]) + "\n"


def program_dot(diagrams: Sequence[Diagram], name: str, stage: str = "built") -> str:
    """One DOT graph of several diagrams, each a cluster: a compiled module, drawn in a notebook."""
    lines = [f'graph "{escape(name)}" {{', f'  label="{escape(name)}";', *_STYLE]
    for position, diagram in reversed(list(enumerate(diagrams))):  # dot stacks clusters bottom-up
        lines += [f"  subgraph cluster_d{position} {{", f'  label="{escape(_title(diagram, stage))}"; color="#888888";']
        lines += [*_diagram_body(f"d{position}", diagram), "  }"]
    return "\n".join([*lines, "}"]) + "\n"


def diagram_svg(diagram: Diagram) -> str:
    """The diagram as SVG text for a notebook, or a picture that says how to install Graphviz."""
    return notebook_svg(diagram_dot(diagram, ""))


def program_svg(diagrams: Sequence[Diagram], name: str) -> str:
    """Several diagrams as built, in one SVG picture for a notebook (or how to install Graphviz)."""
    return notebook_svg(program_dot(diagrams, name))


def _title(diagram: Diagram, stage: str) -> str:
    return f"{diagram.name}{diagram.layout.text()}" + (f"  ({stage})" if stage else "")


def _diagram_body(prefix: str, diagram: Diagram) -> list[str]:
    new = diagram.new_arguments
    count = len(diagram.terms)
    lines = []
    for position, term in reversed(list(enumerate(diagram.terms))):  # dot stacks clusters bottom-up: term 1 on top
        title = _term_title(position, count, term)
        lines += _term_cluster(f"{prefix}t{position}", title, count > 1, term, new, diagram.layout)
    for position, shared in reversed(list(enumerate(diagram.shared))):  # read by double boxes in the terms
        net = shared.network
        title = f"{shared.name}[{', '.join(net.outputs)}], computed once" + _native_note(net)
        layout = Layout(tuple((leg,) for leg in net.outputs))
        lines += _term_cluster(f"{prefix}s{position}", title, True, net, new, layout)
    return lines


def _native_note(net: Network) -> str:
    native = net.lowering.native
    return f": {native.describe()}" if native is not None else ""


def _term_title(position: int, count: int, term: Network) -> str:
    notes = [] if term.coefficient == 1 else [f"× {term.coefficient}"]
    native = term.lowering.native
    if native is not None:
        notes.append(native.describe())
    head = f"term {position + 1}" if count > 1 else ""
    return ": ".join(part for part in (head, ", ".join(notes)) if part)


def _term_cluster(
    prefix: str, title: str, framed: bool, term: Network, new: tuple[str, ...], layout: Layout
) -> list[str]:
    frame = 'style=rounded; color="#bbbbbb"' if framed else "peripheries=0"
    lines = [f"  subgraph cluster_{prefix} {{", f'    label="{escape(title)}"; {frame}; fontsize=10;']
    for k, factor in enumerate(term.factors):
        lines += _factor_nodes(f"{prefix}_f{k}", factor, factor.name in new)
    loose = _loose_ends(prefix, term, layout)
    for node, text in dict(loose.values()).items():
        lines.append(f'    {node} [label="{escape(text)}", shape=plaintext, width=0, height=0, fontsize=10];')
    for index in term.indices:
        lines += _index_edges(prefix, term, index, loose.get(index))
    return [*lines, "  }"]


def _loose_ends(prefix: str, term: Network, layout: Layout) -> dict[str, tuple[str, str]]:
    """Open leg -> (node, label) of its loose end: one per axis of the result, so the legs of a grouped axis
    `(g d)` end together, at one end named by the group."""
    axis_of = {leg: axis for axis, legs in enumerate(layout.axes) for leg in legs}
    ends = {}
    for leg in term.outputs:
        axis = axis_of.get(leg)
        ends[leg] = (
            (f"{prefix}_o_{_node_id(leg)}", leg) if axis is None else (f"{prefix}_a{axis}", layout.axis_text(axis))
        )
    return ends


def _factor_nodes(node: str, factor: Factor, new: bool) -> list[str]:
    """Boxes for arguments (dashed: new ones), small triangles Π for patterns, dots for copy tensors."""
    views = _view_lines(factor)
    tip = f'tooltip="{escape(_tooltip(factor))}"'
    fill = f'style=filled, fillcolor="{_colour(factor.name)}40"'
    pattern = factor.pattern
    if factor.kind == "delta":
        return [f'    {node} [label="", shape=point, width=0.1, {tip}];']
    if isinstance(pattern, ConvPattern):
        below = [f"{factor.name} {_short(pattern)}".strip(), *views]
        return _with_sub_label(node, f'[label="Π", {_TRIANGLE}, {fill}, {tip}]', below)
    if isinstance(pattern, Select):
        below = [f"[{pattern.start}::{pattern.step}]", *views]
        return _with_sub_label(node, f'[label="[:]", {_TRAPEZIUM}, {fill}, {tip}]', below)
    name = " · ".join(part.name or part.kind for part in pattern.parts) if isinstance(pattern, Fused) else factor.name
    label = "\\n".join(escape(line) for line in [name, *views])
    if new:  # the argument a derivation added (cotangent, tangent): bold and dashed
        fill = 'style="filled,dashed,bold", fillcolor="#ffffff", penwidth=2'
    shape = "hexagon" if isinstance(pattern, Fused) else "box"  # fused constants: hexagons
    if factor.kind == "shared":  # a sub-network computed once (its own cluster): a double box
        shape += ", peripheries=2"
    return [f'    {node} [label="{label}", shape={shape}, {fill}, {tip}];']


def _with_sub_label(node: str, style: str, below: list[str]) -> list[str]:
    """A node and, just below it, its sub-label (an invisible edge within a rank runs downwards when drawn left to
    right, from the sub-label to the node)."""
    text = "\\n".join(escape(line) for line in below)
    return [
        f"    {node} {style};",
        f'    {node}_sub [label="{text}", {_SUB_LABEL}];',
        f"    {{ rank=same; {node}_sub -- {node} [style=invis]; }}",
    ]


def _tooltip(factor: Factor) -> str:
    """The factor in full: name, legs, parameters, views."""
    text = f"{factor.name or factor.kind}({', '.join(factor.legs)})"
    if factor.pattern is not None:
        text += f" = {factor.pattern.describe()}"
    return "; ".join([text, *_view_lines(factor, long=True)])


def _short(pattern: ConvPattern) -> str:
    """Stride, padding and dilation in a few characters, defaults left out."""
    pad = pattern.pad_left if pattern.pad_left == pattern.pad_right else f"({pattern.pad_left},{pattern.pad_right})"
    parts = [f"S={pattern.stride}" if pattern.stride != 1 else "", f"P={pad}" if pad != 0 else ""]
    parts.append(f"D={pattern.dilation}" if pattern.dilation != 1 else "")
    return " ".join(part for part in parts if part)


def _view_lines(factor: Factor, long: bool = False) -> list[str]:
    """A line per view op, naming the legs it makes: `o1~: 1:6`, `(o1 k1): windows S=2 P=1`."""
    if factor.view is None:
        return []
    return [f"{legs}: {_op_text(op, long)}" for op, legs in zip(factor.view.ops, _op_legs(factor.view, factor.legs))]


def _op_legs(view: View, legs: tuple[str, ...]) -> list[str]:
    """For each view op, the legs that the axes it makes end up as (`axis N` where they are squeezed away)."""
    axes = list(range(len(view.base)))  # each axis as an id; an op that reshapes replaces ids by fresh ones
    fresh = itertools.count(len(axes))
    children: dict[int, list[int]] = {}
    made = []
    for op in view.ops:
        old = axes[op.axis : op.axis + (2 if isinstance(op, MergeOp) else 1)]
        new = old if isinstance(op, SliceOp | GatherOp) else [next(fresh) for _ in range(_arity(op))]
        axes[op.axis : op.axis + len(old)] = new
        children.update({axis: new for axis in old if new is not old})
        made.append((op.axis, new))
    final = dict(zip(axes, legs))

    def name(axis: int) -> str:
        return final.get(axis) or " ".join(name(child) for child in children.get(axis, []))

    texts = [" ".join(name(axis) for axis in new).strip() for _, new in made]
    return [f"({text})" if " " in text else text or f"axis {axis}" for (axis, _), text in zip(made, texts)]


def _arity(op: ViewOp) -> int:
    """How many axes an op that reshapes makes of the one (two for a merge) it takes."""
    return len(op.sizes) if isinstance(op, SplitOp) else {WindowOp: 2, MergeOp: 1, SqueezeOp: 0}[type(op)]


def _op_text(op: ViewOp, long: bool) -> str:
    """A view op in a word or two for a label, in full for a tooltip."""
    if isinstance(op, SliceOp):
        return f"{op.start}:{op.stop}" + (f":{op.step}" if op.step != 1 or long else "")
    if isinstance(op, WindowOp):
        return f"windows of {op.pattern.describe()}" if long else f"windows {_short(op.pattern)}".rstrip()
    if isinstance(op, GatherOp):
        return f"the drawn entries of {op.index}" if long else f"sampled {op.index}"
    return type(op).__name__.removesuffix("Op").lower()


def _index_edges(prefix: str, term: Network, index: str, loose: tuple[str, str] | None) -> list[str]:
    """The edges of one index: a line between two ends, else through a dot (a hyperedge, or a sum on one tensor).
    Edges are named by their index, except the one to a loose end that bears the same name."""
    ends = [
        f"{prefix}_f{k}"
        for k in term.tensors_on(index)
        for _ in term.graph.edges[("tensor", k), ("index", index)]["axes"]
    ]
    tip = f'tooltip="{escape(f"{index}: {term.size(index)}")}"'
    named = f'label="{escape(index)}", {tip}'
    to_loose = [] if loose is None else [(loose[0], named if loose[1] != index else tip)]
    edges = [(end, named) for end in ends] + to_loose  # each end with the attributes of an edge that meets it
    if len(edges) == 2:
        return [f"    {edges[0][0]} -- {edges[1][0]} [{edges[1][1]}];"]
    hub = f"{prefix}_i_{_node_id(index)}"  # the dot names the index; its edges need no label
    lines = [f'    {hub} [label="", shape=point, width=0.08, xlabel="{escape(index)}", {tip}];']
    lines += [f"    {end} -- {hub} [{tip}];" for end in ends]
    return lines + [f"    {hub} -- {end} [{attributes}];" for end, attributes in to_loose]


def _node_id(index: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in index) + "_" + hashlib.sha256(index.encode()).hexdigest()[:6]

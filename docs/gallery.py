"""Write docs/gallery.md and its pictures docs/img/*.svg from the examples (`make docs`; needs Graphviz's `dot`).

Each section shows the lines of an example file that its diagrams need, each diagram as built and after every
rewrite stage that changed its picture, with the compiler's own note on what changed. The output is the same on
every run; `python docs/gallery.py --check` says whether the files on disk are up to date, and writes nothing.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tncompiler
from tncompiler.dot import diagram_dot
from tncompiler.ir.network import Diagram, Program
from tncompiler.passes.pipeline import run_pipeline
from tncompiler.render import render

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
DOCS = ROOT / "docs"
IMAGES = DOCS / "img"


@dataclass(frozen=True)
class Section:
    title: str
    file: str
    diagrams: tuple[str, ...]
    about: str


@dataclass(frozen=True)
class Part:
    heading: str
    sections: tuple[Section, ...]


GALLERY = (
    Part(
        "Convolutions",
        (
            Section(
                "1-d convolution",
                "conv1d.tnd",
                ("y",),
                "One index pattern for the one spatial axis; the bias is "
                "a second term, broadcast over the legs it lacks. Lowering hands the first term to `F.conv1d`.",
            ),
            Section(
                "Dilated 1-d convolution",
                "dilated_conv1d.tnd",
                ("y",),
                "Dilation 2 and `same` padding: only the pattern's parameters differ.",
            ),
            Section("2-d convolution", "conv2d_vjp.tnd", ("y",), "One pattern per spatial axis."),
            Section(
                "Grouped 2-d convolution",
                "conv2d.tnd",
                ("y",),
                "The group leg g is shared by x, w and the result: "
                "a hyperedge, drawn through a dot. The result's grouped axis (g d) gathers its two legs at one "
                "loose end.",
            ),
            Section(
                "Depthwise 2-d convolution",
                "depthwise_conv2d.tnd",
                ("y",),
                "As many groups as channels; simplification squeezes away the in-channel leg c of size 1.",
            ),
            Section(
                "3-d convolution",
                "conv3d.tnd",
                ("y",),
                "Three patterns. The third has kernel size = stride and "
                "no padding, so simplification turns it into a reshape of x (a split of i3 into o3 and k3).",
            ),
            Section(
                "Transpose 2-d convolution",
                "transpose_conv2d.tnd",
                ("y",),
                "The network of a convolution, read "
                "the other way round: x sits on the patterns' o legs and the result on their i legs.",
            ),
        ),
    ),
    Part(
        "Derivatives",
        (
            Section(
                "Input VJP",
                "conv2d_vjp.tnd",
                ("gx",),
                "x is cut out of y's network: its legs stay open, and the "
                "cotangent grad_y (dashed: an argument the derivation added) takes y's place. A transpose "
                "convolution.",
            ),
            Section(
                "Weight VJP",
                "conv2d_vjp.tnd",
                ("gw",),
                "w is cut out: the input meets the cotangent through the patterns, PyTorch's weight-gradient kernel.",
            ),
            Section(
                "Bias VJP",
                "conv2d_vjp.tnd",
                ("gb",),
                "The cotangent summed over the batch and the positions; "
                "simplification merges o1 and o2, which always travel together.",
            ),
            Section(
                "JVPs",
                "conv2d_jvp.tnd",
                ("tx", "tw", "t"),
                "The tangent (dashed) takes the argument's place; the "
                "JVP in both arguments is the sum of the two networks.",
            ),
        ),
    ),
    Part(
        "Unfold and KFAC",
        (
            Section(
                "Unfold (im2col) in 3-d",
                "unfold3d.tnd",
                ("u",),
                "The convolution without its weight: the kernel "
                "legs stay open. Lowering turns every pattern into strided windows of x.",
            ),
            Section(
                "KFC (KFAC-expand)",
                "conv2d_kfac.tnd",
                ("A",),
                "Two copies of the unfolded input, joined at the "
                "batch and at the output positions (primed legs belong to the second copy).",
            ),
            Section(
                "KFAC-reduce",
                "conv2d_kfac.tnd",
                ("Ar",),
                "The positions are summed in each copy before the "
                "outer product: each pattern with its summed o leg becomes a constant, contracted once (hexagons).",
            ),
            Section(
                "Gradient factors",
                "conv2d_kfac.tnd",
                ("B", "Br"),
                "Two copies of the cotangent, joined at the "
                "batch and at the positions (expand), or summed over the positions first (reduce).",
            ),
        ),
    ),
    Part(
        "Curvature",
        (
            Section(
                "Per-sample Jacobian",
                "conv2d_curvature.tnd",
                ("J",),
                "The network of dy/dw with the batch kept: "
                "x with its patterns, and a copy tensor (a dot) that joins y's out-channel leg d to w's, d'.",
            ),
            Section(
                "GGN diagonal",
                "conv2d_curvature.tnd",
                ("diag",),
                "Two copies of the Jacobian, joined at every leg; simplification prunes the copy tensors.",
            ),
            Section(
                "Gram matrix",
                "conv2d_curvature.tnd",
                ("G",),
                "Per-sample gradients of two examples n and m, contracted over the weight's legs.",
            ),
        ),
    ),
    Part(
        "Transforms",
        (
            Section(
                "Sliced diagrams",
                "conv2d_slice.tnd",
                ("top", "gx_crop"),
                "A slice of the result is a selection "
                "(a trapezium) on an open leg; simplification pushes it into the patterns and the inputs, so the "
                "diagram shrinks.",
            ),
            Section(
                "Sampled diagram",
                "conv2d_sampled.tnd",
                ("gw",),
                "Tensor dropout on the summed index o1: every "
                "tensor on o1 keeps the drawn entries (o1'), and the result is scaled by 1/p.",
            ),
        ),
    ),
)

_HEADER = """\
# Gallery: every operation as a diagram

<!-- Written by `make docs` (docs/gallery.py) from examples/*.tnd; edit those, not this file. -->

Each section shows the lines of an example file, the diagram as the file builds it, and the diagram after each
rewrite stage that changed it, with the compiler's note on what changed. `tnc dot FILE [DIAGRAM] --stage STAGE
-o OUT.svg` draws any of them; in the SVG files, hovering over a node or an edge shows its parameters and sizes.

How to read them: boxes are tensors (arguments; dashed: the argument a derivation added, such as a cotangent or a
tangent), small triangles Π are index patterns (below them: the pattern's name and its stride S, padding P and
dilation D where they are not the default), trapezia selections (slices as tensors), hexagons constants contracted
once, dots copy tensors or hyperedges (an index shared by three or more tensors, or summed on one). Each line is an
index; a line that ends loose is an open leg of the result, named by its index or, for a grouped axis such as
`(g d)`, by the group. Every other index is summed. After rewriting, a box lists its views (slices, windows, ...).
A diagram with several terms draws each in a frame, with its coefficient and, once lowered, the kernel that runs it.
"""


def anchor(title: str) -> str:
    """GitHub's anchor for a heading."""
    return re.sub(r"[^a-z0-9 -]", "", title.lower()).replace(" ", "-")


def code_lines(source: str, program: Program, names: tuple[str, ...]) -> list[str]:
    """The file without comments, with only the definitions that the named diagrams need (declarations all kept)."""
    lines = [line.split("#", 1)[0].rstrip() for line in source.splitlines()]
    spans = {d.name: range(d.span.line, (d.span.end_line or d.span.line) + 1) for d in program.diagrams if d.span}
    needed: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        needed.add(name)
        text = " ".join(lines[k - 1] for k in spans[name])
        words = set(re.findall(r"[A-Za-z][A-Za-z0-9_]*", text.split("=", 1)[1]))
        todo += [word for word in words & set(spans) if word not in needed]
    dropped = {k for name, span in spans.items() if name not in needed for k in span}
    kept: list[str] = []
    for number, line in enumerate(lines, start=1):
        if number in dropped:
            continue
        if line or (kept and kept[-1]):  # runs of blank lines become one
            kept.append(line)
    return kept[:-1] if kept and not kept[-1] else kept


def note(changes: tuple[str, ...]) -> list[str]:
    """What a stage changed, in one line: the compiler's notes, or for many of them the rules applied, one for
    example, and every note in a fold."""
    if len(changes) <= 3:
        return ["; ".join(f"`{change}`" for change in changes) or "the picture changed"]
    rules = Counter(change.split(":", 1)[0] for change in changes)
    counts = ", ".join(rule if count == 1 else f"{rule} ×{count}" for rule, count in rules.items())
    fold = ["", "<details><summary>every note</summary>", "", *(f"- `{change}`" for change in changes)]
    return [f"{len(changes)} rewrites ({counts}), such as `{changes[0]}`", *fold, "", "</details>"]


def in_words(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def diagram_parts(stem: str, diagram: Diagram) -> tuple[list[str], dict[str, str]]:
    """Markdown for one diagram's stages, and the DOT text of each picture, by file name."""
    pictures = {f"{stem}.{diagram.name}.built.svg": diagram_dot(diagram, "built")}
    lines = [f"**{diagram.name}** as built:", "", f"![{diagram.name}, as built](img/{stem}.{diagram.name}.built.svg)"]
    shown, quiet = diagram_dot(diagram, ""), []
    for stage in run_pipeline(diagram)[1:]:
        text = diagram_dot(stage.diagram, "")
        if text == shown:
            quiet.append(stage.name)
            continue
        shown, name = text, f"{stem}.{diagram.name}.{stage.name}.svg"
        pictures[name] = diagram_dot(stage.diagram, stage.name)
        first, *fold = note(stage.changes)
        lines += ["", f"After **{stage.name}**: {first}", *fold, "", f"![{diagram.name}, {stage.name}](img/{name})"]
    if quiet:
        lines += ["", f"{in_words([f'`{q}`' for q in quiet])} leave{'s' if len(quiet) == 1 else ''} it unchanged."]
    return lines, pictures


def section_parts(section: Section) -> tuple[list[str], dict[str, str]]:
    path = EXAMPLES / section.file
    source = path.read_text(encoding="utf-8")
    program = tncompiler.build_program(source, f"examples/{section.file}")
    lines = [
        f"### {section.title}",
        "",
        section.about,
        "",
        f"From [examples/{section.file}](../examples/{section.file}):",
    ]
    lines += ["", "```", *code_lines(source, program, section.diagrams), "```"]
    pictures: dict[str, str] = {}
    for name in section.diagrams:
        more, drawn = diagram_parts(path.stem, program.diagram(name))
        lines += ["", *more]
        pictures.update(drawn)
    return lines, pictures


def gallery() -> tuple[str, dict[str, str]]:
    """The text of gallery.md, and the DOT text of every picture by file name."""
    lines = [_HEADER]
    for part in GALLERY:
        links = ", ".join(f"[{s.title}](#{anchor(s.title)})" for s in part.sections)
        lines.append(f"- **{part.heading}**: {links}")
    pictures: dict[str, str] = {}
    for part in GALLERY:
        lines += ["", f"## {part.heading}"]
        for section in part.sections:
            more, drawn = section_parts(section)
            lines += ["", *more]
            pictures.update(drawn)
    return "\n".join(lines) + "\n", pictures


def svg(dot_text: str) -> bytes:
    """Graphviz's SVG without the line that names Graphviz's version, so the files depend on the drawing only."""
    return re.sub(rb"<!-- Generated by graphviz version [^>]*-->\n", b"", render(dot_text))


def expected_files() -> dict[Path, bytes]:
    """Every file `make docs` writes, with its content."""
    text, pictures = gallery()
    return {DOCS / "gallery.md": text.encode(), **{IMAGES / name: svg(dot) for name, dot in pictures.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the files on disk; write nothing")
    args = parser.parse_args(argv)
    files = expected_files()
    stale = sorted(set(IMAGES.glob("*.svg")) - set(files))
    if args.check:
        wrong = [path for path, data in files.items() if not path.exists() or path.read_bytes() != data]
        for path in wrong + stale:
            print(f"out of date: {path.relative_to(ROOT)}", file=sys.stderr)
        return 1 if wrong or stale else 0
    IMAGES.mkdir(parents=True, exist_ok=True)
    for path, data in files.items():
        if not path.exists() or path.read_bytes() != data:
            path.write_bytes(data)
    for path in stale:
        path.unlink()
    print(f"wrote {DOCS.relative_to(ROOT)}/gallery.md and {len(files) - 1} pictures", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

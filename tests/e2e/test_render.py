"""Pictures: every example renders with Graphviz in every stage, drawn in the field's picture language; the gallery is
up to date; notebooks get SVG, or a line saying how to install Graphviz."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

import tncompiler
from tncompiler.dot import diagram_dot, escape
from tncompiler.errors import TncError
from tncompiler.ir.network import Program
from tncompiler.render import render
from tncompiler.stages import diagram_stages

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
FILES = sorted(EXAMPLES.glob("*.tnd"))
DOT = shutil.which("dot")
needs_dot = pytest.mark.skipif(DOT is None, reason="Graphviz's `dot` is not installed (apt-get install graphviz)")


def _program(name: str) -> Program:
    path = EXAMPLES / name
    return tncompiler.build_program(path.read_text(encoding="utf-8"), f"examples/{name}")


def _dot_svg(text: str) -> tuple[bytes, bytes]:
    """Graphviz's SVG and what it said on stderr (warnings included)."""
    assert DOT is not None
    done = subprocess.run([DOT, "-Tsvg"], input=text.encode(), capture_output=True, check=True)
    return done.stdout, done.stderr


def _width(svg: bytes) -> float:
    found = re.search(rb'<svg width="([\d.]+)pt"', svg)
    assert found is not None
    return float(found.group(1))


@needs_dot
@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_example_renders_in_every_stage(path: Path) -> None:
    for diagram in _program(path.name).diagrams:
        for stage, staged in diagram_stages(diagram):
            svg, said = _dot_svg(diagram_dot(staged, stage))
            assert svg.startswith(b"<?xml") and svg.rstrip().endswith(b"</svg>"), (diagram.name, stage)
            assert said == b"", f"{diagram.name} ({stage}): Graphviz warned: {said.decode()}"


@needs_dot
def test_a_weight_vjp_fits_in_600pt() -> None:
    gw = _program("conv2d_vjp.tnd").diagram("gw")
    assert _width(render(diagram_dot(gw))) <= 600  # 1778 pt when the triangles held their full parameters


def test_patterns_are_small_triangles_with_their_parameters_below_and_in_a_tooltip() -> None:
    text = diagram_dot(_program("conv2d_vjp.tnd").diagram("gw"))
    assert re.search(
        r't0_f1 \[label="Π", shape=triangle, fixedsize=true, .*tooltip="p1\(i1, o1, k1\) = conv\(stride=2, '
        r'padding=1, dilation=1\)"',
        text,
    )
    assert 't0_f1_sub [label="p1 S=2 P=1"' in text
    assert "{ rank=same; t0_f1_sub -- t0_f1 [style=invis]; }" in text


def test_new_arguments_are_dashed_and_open_legs_end_loose() -> None:
    text = diagram_dot(_program("conv2d_vjp.tnd").diagram("gw"))
    assert re.search(r't0_f3 \[label="grad_y", shape=box, style="filled,dashed,bold"', text)
    assert 't0_a0 [label="d", shape=plaintext' in text and "t0_f3 -- t0_a0 [" in text  # d: grad_y to a loose end
    assert "doublecircle" not in text


def test_hyperedges_are_dots_and_grouped_legs_end_together() -> None:
    text = diagram_dot(_program("conv2d.tnd").diagram("y"))
    hub = re.search(r'(t0_i_g_\w+) \[label="", shape=point, width=0.08, xlabel="g"', text)
    assert hub is not None  # g is shared by x, w and the result
    assert 't0_a1 [label="(g d)", shape=plaintext' in text
    assert f'{hub.group(1)} -- t0_a1 [label="g"' in text and 't0_f3 -- t0_a1 [label="d"' in text


def test_copy_tensors_are_dots() -> None:
    text = diagram_dot(_program("conv2d_curvature.tnd").diagram("J"))
    assert re.search(r'\[label="", shape=point, width=0.1, tooltip="delta\(d, d\'\)"\]', text)


def test_terms_are_framed_with_their_coefficient_and_kernel() -> None:
    stages = dict(diagram_stages(_program("conv2d_kfac.tnd").diagram("Ar")))
    assert 'label="× 1/(225*n)"; peripheries=0' in diagram_dot(stages["built"])
    lowered = diagram_dot(dict(diagram_stages(_program("conv2d_vjp.tnd").diagram("y")))["lower"], "lower")
    assert 'label="term 1: native conv2d"; style=rounded' in lowered and 'label="term 2"' in lowered


def test_views_name_the_legs_they_make() -> None:
    lowered = dict(diagram_stages(_program("unfold3d.tnd").diagram("u")))["lower"]
    assert "(o2 k2): windows S=2 P=1" in diagram_dot(lowered)


def test_labels_are_escaped() -> None:
    assert escape('a"b\\c\nd') == 'a\\"b\\\\c d'
    y = _program("conv1d.tnd").diagram("y")
    text = diagram_dot(dataclasses.replace(y, name='we"ird\\'), 'st"age\n')
    assert 'graph "we\\"ird\\\\.st\\"age " {' in text
    if DOT is not None:
        assert _dot_svg(text)[0].rstrip().endswith(b"</svg>")


@needs_dot
def test_notebooks_show_modules_and_diagrams_as_svg() -> None:
    module = tncompiler.load(EXAMPLES / "conv2d_vjp.tnd")
    assert isinstance(module, types.ModuleType) and module.__all__ == ["y", "gx", "gw", "gb"]
    picture = module._repr_svg_()
    assert picture.startswith("<?xml") and picture.count('<g id="clust') >= 4  # a frame per diagram at least
    assert _program("conv2d_vjp.tnd").diagram("gw")._repr_svg_().rstrip().endswith("</svg>")


def test_without_graphviz_notebooks_say_how_to_get_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot` here
    diagram = _program("conv2d_vjp.tnd").diagram("gw")
    for picture in (diagram._repr_svg_(), tncompiler.load(EXAMPLES / "conv2d_vjp.tnd")._repr_svg_()):
        assert picture.startswith("<svg") and "apt-get install graphviz" in picture and "brew install" in picture
    with pytest.raises(TncError) as caught:
        render(diagram_dot(diagram))
    assert "not installed" in caught.value.message and "conda install graphviz" in str(caught.value.hint)


def _gallery() -> types.ModuleType:
    spec = importlib.util.spec_from_file_location("gallery", ROOT / "docs" / "gallery.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gallery", module)
    spec.loader.exec_module(module)
    return module


def test_the_gallery_is_up_to_date() -> None:
    """gallery.md and the set of its pictures; CI also checks the SVG bytes (`make docs`, then no diff), which depend
    on the version of Graphviz."""
    text, pictures = _gallery().gallery()
    assert (ROOT / "docs" / "gallery.md").read_text(encoding="utf-8") == text, "run `make docs`"
    assert {p.name for p in (ROOT / "docs" / "img").glob("*.svg")} == set(pictures), "run `make docs`"
    assert set(re.findall(r"\(img/([^)]+\.svg)\)", text)) == set(pictures)


def test_the_gallery_shows_every_operation_the_issue_asks_for() -> None:
    text = (ROOT / "docs" / "gallery.md").read_text(encoding="utf-8")
    for title in (
        "1-d convolution",
        "2-d convolution",
        "3-d convolution",
        "Transpose",
        "Grouped",
        "Depthwise",
        "Input VJP",
        "Weight VJP",
        "JVPs",
        "Unfold",
        "KFC",
        "KFAC-reduce",
        "Gradient factors",
        "GGN diagonal",
        "Gram matrix",
        "Sliced",
        "Sampled",
    ):
        assert re.search(rf"^### .*{re.escape(title)}", text, re.MULTILINE), title


def test_the_readme_shows_a_gallery_picture_and_links_the_gallery() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pictures = re.findall(r"\]\((docs/img/[^)]+\.svg)\)", readme)
    assert pictures and all((ROOT / picture).exists() for picture in pictures)
    assert "(docs/gallery.md)" in readme

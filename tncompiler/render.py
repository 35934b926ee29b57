"""Run Graphviz's `dot` on DOT text: pictures for files, and SVG for notebooks."""

from __future__ import annotations

import shutil
import subprocess
from html import escape as xml_escape

from tncompiler.errors import TncError

__all__ = ["INSTALL_GRAPHVIZ", "graphviz", "notebook_svg", "render"]

INSTALL_GRAPHVIZ = "install Graphviz: `apt-get install graphviz`, `brew install graphviz` or `conda install graphviz`"


def graphviz() -> str | None:
    """The path of Graphviz's `dot` program, or None where it is not installed."""
    return shutil.which("dot")


def render(dot_text: str, fmt: str = "svg") -> bytes:
    """The picture of a DOT graph in one of Graphviz's output formats (`svg`, `png`, `pdf`, ...)."""
    program = graphviz()
    if program is None:
        raise TncError("drawing needs Graphviz's `dot` program, which is not installed", hint=INSTALL_GRAPHVIZ)
    try:
        done = subprocess.run([program, f"-T{fmt}"], input=dot_text.encode(), capture_output=True, check=False)
    except OSError as error:
        raise TncError(f"cannot run {program}: {error.strerror or error}", hint=INSTALL_GRAPHVIZ) from None
    if done.returncode != 0:
        said = done.stderr.decode(errors="replace").strip()[-500:] or f"exit status {done.returncode}"
        raise TncError(f"Graphviz's `dot` failed: {said}")
    return done.stdout


def notebook_svg(dot_text: str) -> str:
    """SVG text for a notebook's `_repr_svg_`: the picture, or, without Graphviz, a line saying how to get it."""
    if graphviz() is None:
        return _note(f"Graphviz is not installed, so this cannot be drawn: {INSTALL_GRAPHVIZ.replace('`', '')}")
    return render(dot_text).decode()


def _note(text: str) -> str:
    """One line of text as a small SVG picture."""
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{7 * len(text) + 20}" height="30">'
        f'<text x="10" y="20" font-family="Helvetica,sans-serif" font-size="12">{xml_escape(text)}</text></svg>'
    )

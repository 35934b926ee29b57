"""The stages a diagram goes through on its way to code, each one drawable."""

from __future__ import annotations

from tncompiler.ir.network import Diagram
from tncompiler.passes.pipeline import run_pipeline

__all__ = ["diagram_stages"]


def diagram_stages(diagram: Diagram, rewrite: bool = True) -> list[tuple[str, Diagram]]:
    """(stage name, diagram) pairs in pipeline order; `built` is the network as the file wrote it."""
    return [(stage.name, stage.diagram) for stage in run_pipeline(diagram, rewrite)]

"""tnc: a compiler for tensor-network diagrams of convolutions, from `.tnd` files to PyTorch code."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tncompiler.api import build_program, compile_file, compile_source, load, load_source
from tncompiler.errors import TncError

if TYPE_CHECKING:
    from tncompiler.model import KFAC, KFACOperator, compile_layer, kfac_factors, layer_source, sampled
    from tncompiler.model.curvature import curvature

__all__ = [
    "KFAC",
    "KFACOperator",
    "TncError",
    "build_program",
    "compile_file",
    "compile_layer",
    "compile_source",
    "curvature",
    "kfac_factors",
    "layer_source",
    "load",
    "load_source",
    "sampled",
]
__version__ = "0.1.0"

# Whole models (tncompiler.model) import torch; the compiler and the `tnc` command do not, so they load on first use.
_MODEL_API = frozenset(
    {"KFAC", "KFACOperator", "compile_layer", "curvature", "kfac_factors", "layer_source", "sampled"}
)


def __getattr__(name: str) -> Any:
    if name in _MODEL_API:
        import tncompiler.model

        return getattr(tncompiler.model, name)
    raise AttributeError(f"module 'tncompiler' has no attribute {name!r}")

"""tnc: a compiler for tensor-network diagrams of convolutions, from `.tnd` files to PyTorch code."""

from tncompiler.api import build_program, compile_file, compile_source, load, load_source
from tncompiler.errors import TncError

__all__ = ["TncError", "build_program", "compile_file", "compile_source", "load", "load_source"]
__version__ = "0.1.0"

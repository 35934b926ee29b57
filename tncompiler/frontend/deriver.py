"""The resolver's interface to derivations: what it asks of a deriver, and what a deriver may ask of the file."""

from __future__ import annotations

from typing import Protocol

from tncompiler.errors import Span
from tncompiler.frontend import ast
from tncompiler.ir.network import Diagram

__all__ = ["Deriver", "Definitions"]


class Definitions(Protocol):
    """The file so far, as a deriver sees it (the resolver's scope is one)."""

    def diagram(self, name: ast.Name) -> Diagram:
        """An earlier definition, by name; an error for a later or unknown one."""
        ...

    def register_arguments(self, diagram: Diagram, span: Span) -> None:
        """Make the arguments a derivation added (cotangents, tangents) usable by later definitions."""
        ...


class Deriver(Protocol):
    """Builds the diagram that a transform call (`gx = vjp(y, x)`) stands for, in file order with the definitions,
    so that later definitions can use it. `tncompiler.derive` implements it; the resolver takes one as a parameter
    and imports nothing of the later stages."""

    def __call__(self, call: ast.Call, name: str, source: str, definitions: Definitions) -> Diagram:
        """The diagram `name = call`; `source` is the statement's text."""
        ...

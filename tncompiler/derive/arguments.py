"""A transform call's operands, as the builders of the registry read them."""

from __future__ import annotations

from dataclasses import dataclass

from tncompiler.errors import TncError
from tncompiler.frontend import ast
from tncompiler.ir.network import Diagram

__all__ = ["CallArgs"]


@dataclass(frozen=True)
class CallArgs:
    """A transform call's arguments: the diagram it acts on, its other positional names and its keywords."""

    diagram: Diagram
    names: tuple[ast.Name, ...]
    keywords: dict[str, ast.KwArg]

    def word(self, key: str, default: str | None, choices: tuple[str, ...] | None = None) -> str:
        """A keyword that names something (`batch=n`), its default, or an error where it has none."""
        if key not in self.keywords:
            if default is None:
                raise TncError(f"missing keyword {key}=", None)
            return default
        kwarg = self.keywords[key]
        if not isinstance(kwarg.value, ast.Name):
            raise TncError(f"{key}= takes a name", kwarg.span)
        if choices is not None and kwarg.value.text not in choices:
            raise TncError(f"unknown {key} {kwarg.value.text!r}", kwarg.value.span, "valid: " + ", ".join(choices))
        return kwarg.value.text

    def new_name(self, key: str, default: str) -> str:
        """The name of an argument the derivation adds (`cotangent=`, `tangent=`): not one the diagram has."""
        chosen = self.word(key, default)
        if any(a.name == chosen for a in self.diagram.arguments):
            span = self.keywords[key].span if key in self.keywords else None
            raise TncError(
                f"{chosen!r} is already an argument of {self.diagram.name!r}",
                span,
                f"choose another name with {key}=NAME",
            )
        return chosen

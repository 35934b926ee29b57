"""What a file has declared so far: indices and their sizes, patterns, arguments, definitions, fresh index names."""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

import sympy

from tncompiler.errors import Span, TncError
from tncompiler.frontend import ast
from tncompiler.ir.network import Argument, Diagram
from tncompiler.ir.values import ConvPattern, Layout, Size, SizeRule

__all__ = ["Scope", "DeclaredPattern", "suggest"]


@dataclass(frozen=True)
class DeclaredPattern:
    """A pattern as declared: the names of its legs (i, o, k) and its value."""

    legs: tuple[str, str, str]
    value: ConvPattern


@dataclass
class Scope:
    """What the file has declared so far, and the names the resolver has made up.

    The resolver makes new index names for the summed indices of an inlined definition and for the legs of a slice
    in an index list: `leg~N`, which no `.tnd` name can be. `fresh_index` makes them and records each one's size and
    the declared or derived index it copies, so that nothing needs to read a name to learn what it stands for.
    """

    filename: str
    source: str
    sizes: dict[str, Size] = field(default_factory=dict)  # declared indices, then fresh ones as they are made
    declared_at: dict[str, tuple[str, Span]] = field(default_factory=dict)
    patterns: dict[str, DeclaredPattern] = field(default_factory=dict)
    arguments: dict[str, Argument] = field(default_factory=dict)  # inputs, then new arguments of derivations
    definitions: dict[str, Diagram] = field(default_factory=dict)
    later: dict[str, Span] = field(default_factory=dict)  # every definition of the file, for "defined later"
    open_indices: set[str] = field(default_factory=set)  # declared without a size, not yet given one by a pattern
    rules: list[SizeRule] = field(default_factory=list)
    derived: dict[sympy.Expr, sympy.Symbol] = field(default_factory=dict)  # output-size formula -> its index's symbol
    copies: dict[str, str] = field(default_factory=dict)  # fresh index name -> the index it copies
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def declare(self, name: ast.Name, kind: str) -> None:
        """Claim a name for an index, pattern, input or definition."""
        if name.text in self.declared_at:
            other_kind, span = self.declared_at[name.text]
            raise TncError(
                f"{name.text!r} is already declared as {_article(other_kind)} at line {span.line}",
                name.span,
                "every index, pattern, input and definition needs its own name",
            )
        self.declared_at[name.text] = (kind, name.span)

    def index(self, name: ast.Name) -> Size:
        """The size of a declared index."""
        if name.text not in self.sizes:
            raise TncError(
                f"undeclared index {name.text!r}",
                name.span,
                suggest(name.text, self.sizes, "declare it first: index " + name.text),
            )
        return self.sizes[name.text]

    def fresh_index(self, leg: str, size: Size) -> str:
        """A new index `leg~N` of `size`, for a copy of `leg` (a copy of a copy is numbered from the original)."""
        original = self.copies.get(leg, leg)
        name = f"{original}~{next(self.counter)}"
        self.copies[name] = original
        self.sizes[name] = size
        return name

    def diagram(self, name: ast.Name) -> Diagram:
        """An earlier definition, for a transform to act on."""
        if name.text in self.definitions:
            return self.definitions[name.text]
        if name.text in self.later:
            raise TncError(
                f"{name.text!r} is defined later, at line {self.later[name.text].line}",
                name.span,
                "a transform can only use earlier definitions (no cycles)",
            )
        known = list(self.definitions)
        hint = suggest(name.text, known, "diagrams so far: " + (", ".join(known) or "none"))
        raise TncError(f"unknown diagram {name.text!r}", name.span, hint)

    def register_arguments(self, diagram: Diagram, span: Span) -> None:
        """New arguments (cotangents, tangents) can be used by later definitions, like inputs."""
        for argument in diagram.arguments:
            known = self.arguments.get(argument.name)
            if known is not None and known.layout != argument.layout:
                raise TncError(
                    f"argument name {argument.name!r} already stands for a tensor laid out {known.layout.text()}",
                    span,
                    "choose another name with cotangent= or tangent=",
                )
            self.arguments.setdefault(argument.name, argument)

    def text(self, span: Span) -> str:
        """The source lines of a statement, as lark counts lines."""
        lines = self.source.split("\n")[span.line - 1 : (span.end_line or span.line)]
        return "\n".join(line.rstrip() for line in lines)

    def layout(self, axes: tuple[ast.Axis, ...], what: str) -> Layout:
        """The layout of an input or a definition's left side: declared indices, each at most once."""
        names: list[tuple[str, ...]] = []
        seen: set[str] = set()
        for axis in axes:
            if isinstance(axis, ast.SliceSpec):
                raise TncError(f"the axes of {what} must be indices, not a slice", axis.span)
            for name in axis.names:
                self.index(name)
                if name.text in seen:
                    raise TncError(
                        f"index {name.text!r} appears twice in {what}",
                        name.span,
                        f"give each axis its own index; for a diagonal, use another index and delta({name.text}, ...)",
                    )
                seen.add(name.text)
            names.append(tuple(n.text for n in axis.names))
        return Layout(tuple(names))


def _article(kind: str) -> str:
    return ("an " if kind[0] in "aeiou" else "a ") + kind


def suggest(word: str, choices: Iterable[str], fallback: str) -> str:
    """`did you mean 'x'?` for a close choice, else the fallback."""
    close = difflib.get_close_matches(word, sorted(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else fallback

"""Semantic analysis: check a parsed file, statement by statement, and build the IR `Program`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from tncompiler.errors import TncError
from tncompiler.frontend import ast
from tncompiler.frontend.deriver import Deriver
from tncompiler.frontend.expand import define
from tncompiler.frontend.patterns import declare_pattern
from tncompiler.frontend.scope import Scope
from tncompiler.ir.network import Argument, Program
from tncompiler.ir.values import Size, size_symbol

__all__ = ["resolve"]

_Handler = Callable[[Scope, Any], None]


def resolve(module: ast.Module, filename: str, source: str, deriver: Deriver) -> Program:
    """Check every statement in order and build the program; `deriver` builds the diagrams of transform calls, in
    file order, so later definitions can use them. Errors carry the file and position. The program has no autograd
    specs yet: they are derived from the whole program (`tncompiler.derive.autograd`)."""
    scope = Scope(filename, source)
    for statement in module.statements:
        if isinstance(statement, ast.Definition | ast.TransformDef):
            scope.later.setdefault(statement.name.text, statement.span)
    handlers: dict[type, _Handler] = {**_STATEMENTS, ast.TransformDef: partial(_transform_def, deriver=deriver)}
    try:
        for statement in module.statements:
            handlers[type(statement)](scope, statement)
    except TncError as error:
        raise error.located(filename, source) from None
    rules = tuple(scope.rules)
    diagrams = tuple(replace(d, size_rules=rules) for d in scope.definitions.values())
    return Program(filename, dict(scope.sizes), diagrams, size_rules=rules)


def _index_decl(scope: Scope, decl: ast.IndexDecl) -> None:
    for item in decl.items:
        scope.declare(item.name, "index")
        scope.sizes[item.name.text] = _declared_size(scope, item)


def _declared_size(scope: Scope, item: ast.IndexItem) -> Size:
    if item.size is None:
        scope.open_indices.add(item.name.text)
        return size_symbol(item.name.text)
    if isinstance(item.size, ast.Name):
        return scope.index(item.size)
    if item.size < 1:
        raise TncError(f"index {item.name.text!r} must have a positive size, got {item.size}", item.size_span)
    return item.size


def _input_decl(scope: Scope, decl: ast.InputDecl) -> None:
    scope.declare(decl.name, "input")
    layout = scope.layout(decl.axes, f"input {decl.name.text!r}")
    scope.arguments[decl.name.text] = Argument(decl.name.text, layout, decl.span)


def _definition(scope: Scope, decl: ast.Definition) -> None:
    scope.declare(decl.name, "definition")
    scope.definitions[decl.name.text] = define(scope, decl)


def _transform_def(scope: Scope, decl: ast.TransformDef, deriver: Deriver) -> None:
    scope.declare(decl.name, "definition")
    diagram = deriver(decl.call, decl.name.text, scope.text(decl.span), scope)
    scope.definitions[decl.name.text] = replace(diagram, span=decl.span)


_STATEMENTS: dict[type, _Handler] = {
    ast.IndexDecl: _index_decl,
    ast.PatternDecl: declare_pattern,
    ast.InputDecl: _input_decl,
    ast.Definition: _definition,
}  # and transform statements, through the deriver

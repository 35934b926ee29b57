"""Parse `.tnd` text with lark into the typed syntax tree of `ast.py`."""

from __future__ import annotations

import importlib.resources
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from tncompiler.errors import Span, TncError
from tncompiler.frontend import ast

__all__ = ["parse", "grammar_path"]

_OPENERS = {"(", "["}
_CLOSERS = {")", "]"}
# A line ending in one of these continues on the next line.
_CONTINUES_AFTER = {"=", "*", "/", "+", "-", ",", "("}
# A line beginning with one of these continues the previous line.
_CONTINUES_BEFORE = {"+", "-", "*", "/"}

_READABLE = {
    "RSQB": "']'",
    "LSQB": "'['",
    "RPAR": "')'",
    "LPAR": "'('",
    "COMMA": "','",
    "EQUAL": "'='",
    "COLON": "':'",
    "NAME": "a name",
    "NUMBER": "a number",
    "SIGN": "'+' or '-'",
    "PRODUCT_OP": "'*' or '/'",
    "_NL": "the end of the line",
    "$END": "the end of the file",
    "_INDEX": "'index'",
    "_PATTERN": "'pattern'",
    "_INPUT": "'input'",
}


def grammar_path() -> Path:
    """The grammar shipped with the package, or the one in a source checkout's `grammar/`."""
    try:
        shipped = importlib.resources.files("tncompiler.grammar") / "tnd.lark"
        if shipped.is_file():
            return Path(str(shipped))
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "grammar" / "tnd.lark"


class _Continuations:
    """Post-lexer that drops the newlines that do not end a statement."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth, previous, pending = 0, None, None
        for token in stream:
            if token.type == "_NL":
                if depth == 0 and previous is not None and previous not in _CONTINUES_AFTER:
                    pending = pending or token
                continue
            if pending is not None and str(token) not in _CONTINUES_BEFORE:
                yield pending
            pending = None
            depth += (str(token) in _OPENERS) - (str(token) in _CLOSERS)
            previous = str(token)
            yield token
        if previous is not None:
            # Every statement ends with a newline, also the last one of a file.
            yield pending or Token.new_borrow_pos("_NL", "\n", token)


@cache
def _parser() -> Lark:
    return Lark(
        grammar_path().read_text(),
        parser="lalr",
        lexer="basic",
        postlex=_Continuations(),
        propagate_positions=True,
        maybe_placeholders=True,
    )


def _span(obj: Any) -> Span:
    meta = obj.meta if hasattr(obj, "meta") else obj
    return Span(meta.line, meta.column, meta.end_line, meta.end_column)


def _name(token: Token) -> ast.Name:
    return ast.Name(str(token), _span(token))


def _merge(first: Span, last: Span) -> Span:
    return Span(first.line, first.column, last.end_line, last.end_column)


@v_args(meta=True)
class _ToAst(Transformer):  # type: ignore[type-arg]
    """Builds `ast` nodes bottom-up; spans come from lark's propagated positions."""

    def start(self, meta: Any, children: list[Any]) -> ast.Module:
        return ast.Module(tuple(c for c in children if c is not None))

    def index_decl(self, meta: Any, items: list[ast.IndexItem]) -> ast.IndexDecl:
        return ast.IndexDecl(tuple(items), _span(meta))

    def index_item(self, meta: Any, children: list[Any]) -> ast.IndexItem:
        name, size = children
        if size is None:
            return ast.IndexItem(_name(name), None, None)
        return ast.IndexItem(_name(name), size[0], size[1])

    def size_int(self, meta: Any, children: list[Any]) -> tuple[int | ast.Name, Span]:
        value, span = children[0]
        if not isinstance(value, int):
            raise TncError(f"index size must be an integer, got {value}", span)
        return value, span

    def size_alias(self, meta: Any, children: list[Token]) -> tuple[ast.Name, Span]:
        return _name(children[0]), _span(children[0])

    def signed(self, meta: Any, children: list[Any]) -> tuple[int | float, Span]:
        sign, number = children
        value = _number(number)
        return (-value if sign is not None and str(sign) == "-" else value), _span(meta)

    def pattern_decl(self, meta: Any, children: list[Any]) -> ast.PatternDecl:
        name, legs, kind, args = children
        return ast.PatternDecl(_name(name), tuple(legs or ()), _name(kind), tuple(args or ()), _span(meta))

    def name_list(self, meta: Any, children: list[Token]) -> list[ast.Name]:
        return [_name(c) for c in children]

    def pattern_args(self, meta: Any, children: list[ast.PatternArg]) -> list[ast.PatternArg]:
        return children

    def pattern_arg(self, meta: Any, children: list[Any]) -> ast.PatternArg:
        key, (value, span) = children
        return ast.PatternArg(_name(key), value, span)

    def pint(self, meta: Any, children: list[Any]) -> tuple[int, Span]:
        return _integer(*children[0]), _span(meta)

    def ppair(self, meta: Any, children: list[Any]) -> tuple[tuple[int, int], Span]:
        return (_integer(*children[0]), _integer(*children[1])), _span(meta)

    def pword(self, meta: Any, children: list[Token]) -> tuple[str, Span]:
        return str(children[0]), _span(meta)

    def input_decl(self, meta: Any, children: list[Any]) -> ast.InputDecl:
        name, axes = children
        return ast.InputDecl(_name(name), tuple(axes or ()), _span(meta))

    def definition(self, meta: Any, children: list[Any]) -> ast.Definition:
        name, axes, body = children
        return ast.Definition(_name(name), tuple(axes or ()), body, _span(meta))

    def transform_def(self, meta: Any, children: list[Any]) -> ast.TransformDef:
        return ast.TransformDef(_name(children[0]), children[1], _span(meta))

    def axes(self, meta: Any, children: list[ast.Axis]) -> list[ast.Axis]:
        return children

    def axis_name(self, meta: Any, children: list[Token]) -> ast.AxisNames:
        return ast.AxisNames((_name(children[0]),), False, _span(meta))

    def axis_group(self, meta: Any, children: list[Token]) -> ast.AxisNames:
        return ast.AxisNames(tuple(_name(c) for c in children), True, _span(meta))

    def slice(self, meta: Any, children: list[Any]) -> ast.SliceSpec:
        parts = [None if c is None else _integer(*c) for c in children]
        return ast.SliceSpec(parts[0], parts[1], parts[2], _span(meta))

    def sum(self, meta: Any, children: list[Any]) -> ast.Sum:
        terms, negative = [], children[0] is not None and str(children[0]) == "-"
        for child in children[1:]:
            if isinstance(child, Token):
                negative = str(child) == "-"
            else:
                terms.append(ast.Term(negative, child.factors, child.ops, child.span))
        return ast.Sum(tuple(terms), _span(meta))

    def term(self, meta: Any, children: list[Any]) -> ast.Term:
        return ast.Term(False, tuple(children[0::2]), tuple(str(op) for op in children[1::2]), _span(meta))

    def number(self, meta: Any, children: list[Token]) -> ast.Number:
        return ast.Number(_number(children[0]), _span(meta))

    def tensor_ref(self, meta: Any, children: list[Any]) -> ast.TensorRef:
        return ast.TensorRef(_name(children[0]), tuple(children[1] or ()), _span(meta))

    def call_factor(self, meta: Any, children: list[Any]) -> ast.CallFactor:
        return ast.CallFactor(_name(children[0]), tuple(children[1] or ()), _span(meta))

    def paren(self, meta: Any, children: list[Any]) -> ast.Paren:
        return ast.Paren(children[0], _span(meta))

    def call(self, meta: Any, children: list[Any]) -> ast.Call:
        return ast.Call(_name(children[0]), tuple(children[1:]), _span(meta))

    def arg_name(self, meta: Any, children: list[Token]) -> ast.Name:
        return _name(children[0])

    def kwarg(self, meta: Any, children: list[Any]) -> ast.KwArg:
        return ast.KwArg(children[0], children[1], _span(meta))

    def kw_key(self, meta: Any, children: list[Token]) -> ast.Name:
        return ast.Name(str(children[0]) if children else "", _span(meta))

    def kw_name(self, meta: Any, children: list[Token]) -> ast.Name:
        return _name(children[0])

    def kw_number(self, meta: Any, children: list[Any]) -> int | float:
        value: int | float = children[0][0]
        return value


def _number(token: Token) -> int | float:
    text = str(token)
    return int(text) if text.isdigit() else float(text)


def _integer(value: int | float, span: Span) -> int:
    if not isinstance(value, int):
        raise TncError(f"expected an integer, got {value}", span)
    return value


def parse(source: str, filename: str = "<string>") -> ast.Module:
    """Parse a whole file; syntax errors become `TncError`s that point at the offending token."""
    try:
        tree = _parser().parse(source)
        module: ast.Module = _ToAst().transform(tree)
        return module
    except VisitError as error:
        if isinstance(error.orig_exc, TncError):
            raise error.orig_exc.located(filename, source) from None
        raise
    except UnexpectedInput as error:
        raise _syntax_error(error).located(filename, source) from None


def _syntax_error(error: UnexpectedInput) -> TncError:
    span = Span(error.line, error.column, error.line, error.column + 1)
    if isinstance(error, UnexpectedCharacters):
        char = error.char
        shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
        return TncError(
            f"unexpected character {shown}",
            span,
            "a .tnd file holds names, numbers, brackets, commas, ':', '=', '+', '-', '*', '/' and #-comments",
        )
    if isinstance(error, UnexpectedEOF):
        return TncError("unexpected end of file", span, _expected(set(error.expected)))
    if isinstance(error, UnexpectedToken):
        token = error.token
        span = Span(token.line or 1, token.column or 1, token.end_line, token.end_column)
        what = "end of line" if token.type == "_NL" else ("end of file" if token.type == "$END" else repr(str(token)))
        return TncError(f"unexpected {what}", span, _expected(error.accepts or error.expected))
    return TncError("syntax error", span)


def _expected(names: set[str] | None) -> str | None:
    if not names:
        return None
    readable = sorted({_READABLE.get(n, n.lower()) for n in names})
    return "expected " + (readable[0] if len(readable) == 1 else "one of " + ", ".join(readable))

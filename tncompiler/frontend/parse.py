"""Parse `.tnd` text with lark into the typed syntax tree of `ast.py`."""

from __future__ import annotations

import difflib
import importlib.resources
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError
from lark.visitors import Transformer_NonRecursive

from tncompiler.errors import Span, TncError
from tncompiler.frontend import ast

__all__ = ["parse", "require_definitions", "grammar_path", "MAX_NESTING", "KEYWORDS"]

# Brackets nested deeper than this are rejected at the bracket, long before Python's recursion limit.
MAX_NESTING = 100
# The words that start a declaration (a misspelt one gets a suggestion).
KEYWORDS = ("index", "pattern", "input")
_CLOSER_OF = {"(": ")", "[": "]"}
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
    """Post-lexer that drops the newlines that do not end a statement, and limits bracket nesting."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        brackets: list[Token] = []
        previous, pending, token = None, None, None
        for token in stream:
            if token.type == "_NL":
                if not brackets and previous is not None and previous not in _CONTINUES_AFTER:
                    pending = pending or token
                continue
            if pending is not None and str(token) not in _CONTINUES_BEFORE:
                yield pending
            pending = None
            _track(brackets, token)
            previous = str(token)
            yield token
        if token is not None and previous is not None:
            # Every statement ends with a newline, also the last one of a file.
            yield pending or Token.new_borrow_pos("_NL", "\n", token)


def _track(brackets: list[Token], token: Token) -> None:
    """Keep the stack of open brackets; too deep a nesting is an error at the bracket that goes too deep."""
    if str(token) in _CLOSER_OF:
        brackets.append(token)
        if len(brackets) > MAX_NESTING:
            raise TncError(
                f"brackets nested more than {MAX_NESTING} deep",
                _token_span(token),
                "split the expression into several definitions",
            )
    elif str(token) in _CLOSER_OF.values() and brackets:
        brackets.pop()


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
class _ToAst(Transformer_NonRecursive):  # type: ignore[type-arg]
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
    if text.isdigit():
        if len(text.lstrip("0")) > len(str(_LARGEST_INTEGER)) or int(text) > _LARGEST_INTEGER:
            raise TncError(f"integer {_short(text)} is too large", _token_span(token), "integers fit in 64 bits")
        return int(text)
    value = float(text)
    if math.isinf(value):
        raise TncError(f"number {_short(text)} is too large", _token_span(token), "floats go up to about 1e308")
    return value


_LARGEST_INTEGER = 2**63 - 1


def _short(text: str) -> str:
    return text if len(text) <= 30 else f"{text[:12]}...{text[-6:]} ({len(text)} digits)"


def _integer(value: int | float, span: Span) -> int:
    if not isinstance(value, int):
        raise TncError(f"expected an integer, got {value}", span)
    return value


def parse(source: str, filename: str = "<string>") -> ast.Module:
    """Parse a whole file; syntax errors become `TncError`s that point at the offending token."""
    text = " " + source[1:] if source.startswith("\ufeff") else source  # a byte-order mark counts as a blank
    try:
        tree = _parser().parse(text)
        module: ast.Module = _ToAst().transform(tree)
        return module
    except TncError as error:
        raise error.located(filename, source) from None
    except VisitError as error:
        if isinstance(error.orig_exc, TncError):
            raise error.orig_exc.located(filename, source) from None
        raise
    except UnexpectedInput as error:
        raise _syntax_error(error, text).located(filename, source) from None


def require_definitions(module: ast.Module) -> None:
    """A file with nothing to compile is a mistake (an empty file, or the wrong file)."""
    if any(isinstance(s, ast.Definition | ast.TransformDef) for s in module.statements):
        return
    example = "y[n, d] = x[n, c] * w[d, c]"
    if not module.statements:
        raise TncError("no definitions: the file is empty", Span(1, 1), f"write at least one definition: {example}")
    last = module.statements[-1]
    raise TncError(
        "no definitions: the file only declares indices, patterns or inputs, so there is nothing to compile",
        Span(last.span.line, 1),
        f"add a definition that uses them, like {example}",
    )


def _token_span(token: Token) -> Span:
    line, column = token.line or 1, token.column or 1
    return Span(line, column, token.end_line or line, token.end_column or column + 1)


def _syntax_error(error: UnexpectedInput, source: str) -> TncError:
    if isinstance(error, UnexpectedCharacters):
        return _bad_character(error)
    if isinstance(error, UnexpectedToken):
        return _unexpected_token(error, source)
    if isinstance(error, UnexpectedEOF):
        return TncError("unexpected end of file", _eof_span(source), _expected(set(error.expected)))
    return TncError("syntax error", Span(error.line, error.column))


def _bad_character(error: UnexpectedCharacters) -> TncError:
    char = error.char
    shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
    return TncError(
        f"unexpected character {shown}",
        Span(error.line, error.column, error.line, error.column + 1),
        "a .tnd file holds names, numbers, brackets, commas, ':', '=', '+', '-', '*', '/' and #-comments",
    )


@dataclass(frozen=True)
class _Context:
    """Where a syntax error happened: the token, what the parser would have taken, and what came before."""

    token: Token
    accepts: frozenset[str]
    brackets: tuple[Token, ...]  # still open, innermost last
    previous: Token | None  # the token before, on any line
    continued: Token | None  # the last line-end token (`=`, `,`, ...) that made this statement go on

    @property
    def on_new_line(self) -> bool:
        return self.token.type in ("$END", "_NL") or (
            self.previous is not None and (self.token.line or 0) > (self.previous.line or 0)
        )


def _unexpected_token(error: UnexpectedToken, source: str) -> TncError:
    context = _context(source, error.token, frozenset(error.accepts or error.expected))
    for rule in _SYNTAX_RULES:
        found = rule(context)
        if found is not None:
            return found
    token = context.token
    at_end = token.type == "$END" or (token.type == "_NL" and not _code(source[token.end_pos or 0 :]))
    what = "end of file" if at_end else ("end of line" if token.type == "_NL" else repr(str(token)))
    span = _eof_span(source) if token.type == "$END" else _token_span(token)
    return TncError(f"unexpected {what}", span, _hint(context))


def _hint(context: _Context) -> str | None:
    """What the parser expected, and why a statement went on where the user may think it ended."""
    hint = _expected(set(context.accepts))
    if context.brackets and _TOKEN_OF[_CLOSER_OF[str(context.brackets[-1])]] in context.accepts:
        opener = context.brackets[-1]
        hint = f"{hint} ({str(opener)!r} at line {opener.line}, column {opener.column} is still open)"
    elif context.continued is not None and context.token.type != "$END":
        last = context.continued
        hint = f"{hint}; line {last.line} ends with {str(last)!r}, so the next line continues that statement"
    return hint


def _code(text: str) -> bool:
    """Whether text holds anything but blanks and comments."""
    return any(line.split("#", 1)[0].strip() for line in text.split("\n"))


def _eof_span(source: str) -> Span:
    lines = source.split("\n")
    while len(lines) > 1 and not _code(lines[-1]):
        lines.pop()
    return Span(len(lines), len(lines[-1].rstrip()) + 1)


def _context(source: str, until: Token, accepts: frozenset[str]) -> _Context:
    """Lex the text again up to the error, keeping the open brackets and the statement's line ends."""
    brackets: list[Token] = []
    previous = continued = None
    end = until.start_pos if until.type != "$END" and until.start_pos is not None else len(source)
    for token in _parser().lex(source):
        if (token.start_pos or 0) >= end:
            break
        if token.type == "_NL":  # after the post-lexer, a newline ends a statement
            continued = None
            continue
        if previous is not None and (token.line or 0) > (previous.line or 0) and str(previous) in _CONTINUES_AFTER:
            continued = previous
        _track(brackets, token)
        previous = token
    if previous is not None and (until.line or 0) > (previous.line or 0) and str(previous) in _CONTINUES_AFTER:
        continued = previous
    return _Context(until, accepts, tuple(brackets), previous, continued)


def _never_closed(context: _Context) -> TncError | None:
    """`input x[n` then a new line: the statement ran on into the next line, so say which bracket is open."""
    if not context.brackets or context.previous is None or not context.on_new_line:
        return None
    opener, token, line = context.brackets[-1], context.token, context.previous.line
    closer = _CLOSER_OF[str(opener)]
    if _TOKEN_OF[closer] not in context.accepts and token.type not in _KEYWORD_TOKENS:
        return None
    if token.type in ("$END", "_NL"):
        where = f"add {closer!r} where the statement ends, at the end of line {line}"
    else:
        where = (
            f"add {closer!r} at the end of line {line}: inside brackets a statement goes on to the "
            f"next line, so line {token.line} was read as part of it"
        )
    return TncError(f"{str(opener)!r} is never closed", _token_span(opener), where)


def _wrong_closer(context: _Context) -> TncError | None:
    """A `)` or `]` that closes nothing, or closes the other kind of bracket."""
    token = context.token
    if str(token) not in _CLOSER_OF.values():
        return None
    if not context.brackets:
        return TncError(f"unmatched {str(token)!r}", _token_span(token), "delete it, or add the bracket it closes")
    opener = context.brackets[-1]
    expected = _CLOSER_OF[str(opener)]
    if expected == str(token):
        return None
    return TncError(
        f"{str(token)!r} does not match {str(opener)!r} at line {opener.line}, column {opener.column}",
        _token_span(token),
        f"close {str(opener)!r} with {expected!r}",
    )


def _misspelt_keyword(context: _Context) -> TncError | None:
    """`indx n`: a statement that starts with a name but goes on like a declaration."""
    word, token = context.previous, context.token
    if context.accepts != {"LSQB", "EQUAL"} or word is None or word.type != "NAME":
        return None
    close = difflib.get_close_matches(str(word).lower(), KEYWORDS, n=1, cutoff=0.6)
    if close:
        return TncError(f"unknown keyword {str(word)!r}", _token_span(word), f"did you mean {close[0]!r}?")
    alone = token.type in ("_NL", "$END")
    return TncError(
        f"{str(word)!r} alone is not a statement" if alone else f"unexpected {str(token)!r} after {str(word)!r}",
        _token_span(word if alone else token),
        "a statement starts with index, pattern or input, or is a definition NAME[...] = ... "
        "or a transform NAME = vjp(...)",
    )


_TOKEN_OF = {")": "RPAR", "]": "RSQB"}
_KEYWORD_TOKENS = {"_INDEX", "_PATTERN", "_INPUT"}
# Tried in order on an unexpected token; the first that recognises the mistake names it.
_SYNTAX_RULES: tuple[Callable[[_Context], TncError | None], ...] = (_never_closed, _wrong_closer, _misspelt_keyword)


def _expected(names: set[str] | None) -> str | None:
    if not names:
        return None
    readable = sorted({_READABLE.get(n, n.lower()) for n in names})
    return "expected " + (readable[0] if len(readable) == 1 else "one of " + ", ".join(readable))

"""The compiler's one error type: a message anchored at a position of a `.tnd` file."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["Span", "TncError", "escape_name", "escape_text", "render_caret"]


@dataclass(frozen=True)
class Span:
    """A 1-based line and column range in a source file."""

    line: int
    column: int
    end_line: int | None = None
    end_column: int | None = None


class TncError(Exception):
    """A user-facing error; `str()` gives `FILE:LINE:COL: message`, the source line and a caret."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.span = span
        self.hint = hint
        self.filename = "<string>"
        self.source: str | None = None

    def located(self, filename: str, source: str) -> TncError:
        """Attach the file the error belongs to (first attachment wins)."""
        if self.source is None:
            self.filename, self.source = filename, source
        return self

    def __str__(self) -> str:
        """The report as printed: control characters made visible, so neither a file name nor the file's text can
        drive the terminal (colours, a cleared screen, a forged line)."""
        where = escape_name(self.filename)
        if self.span is not None:
            where += f":{self.span.line}:{self.span.column}"
        text = f"{where}: error: {escape_text(self.message)}"
        caret = render_caret(self.source, self.span) if self.span is not None and self.source is not None else ""
        if caret:
            text += "\n" + caret
        if self.hint:
            text += f"\nhint: {escape_text(self.hint)}"
        return text


# What a terminal acts on instead of showing: C0 (but newline and tab), DEL, C1, the bidirectional marks, overrides and
# isolates that reorder what is shown (the "Trojan Source" characters), and lone surrogates (a file name's bytes that
# were not UTF-8), which cannot be written as text at all.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(char: str) -> str:
    """`\\x1b` for ESC; a byte that was not UTF-8 in a file name (decoded as a lone surrogate) as the byte, `\\xff`."""
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def escape_text(text: str) -> str:
    """Text of a message with every terminal control character shown as an escape; lines and tabs kept."""
    return _CONTROL.sub(lambda found: _escape(found[0]), text)


def escape_name(name: object) -> str:
    """A file name as a message shows it: everything not printable (newlines and tabs too) as an escape."""
    return "".join(char if char.isprintable() else _escape(char) for char in str(name))


# Longer source lines are shown as a window of this many characters around the caret.
_WIDTH = 160


def render_caret(source: str, span: Span) -> str:
    """The span's source line, then a caret line under the span (tabs kept so carets align).

    A character the terminal would act on is shown as its escape (`\\x1b`), and the carets widen to cover it.
    """
    lines = source.split("\n")  # lark counts lines by "\n" only, not by str.splitlines()'s separators
    if not 1 <= span.line <= len(lines):
        return ""
    line = lines[span.line - 1].rstrip("\r")
    if not line.strip():
        return ""
    start = min(max(span.column - 1, 0), len(line))
    width = 1
    if span.end_line == span.line and span.end_column is not None:
        width = max(span.end_column - span.column, 1)
    shift, prefix, suffix = 0, "", ""
    if len(line) > _WIDTH:
        shift = max(0, min(start - _WIDTH // 2, len(line) - _WIDTH))
        prefix, suffix = ("... " if shift else ""), (" ..." if shift + _WIDTH < len(line) else "")
        line, start = line[shift : shift + _WIDTH], start - shift
    shown = [char if char.isprintable() or char == "\t" else _escape(char) for char in line]
    pad = " " * len(prefix) + "".join(char if char == "\t" else " " * len(char) for char in shown[:start])
    carets = sum(len(char) for char in shown[start : start + width]) or 1
    return f"    {prefix}{''.join(shown)}{suffix}\n    {pad}{'^' * carets}"

"""The compiler's one error type: a message anchored at a position of a `.tnd` file."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Span", "TncError", "render_caret"]


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
        where = self.filename
        if self.span is not None:
            where += f":{self.span.line}:{self.span.column}"
        text = f"{where}: error: {self.message}"
        caret = render_caret(self.source, self.span) if self.span is not None and self.source is not None else ""
        if caret:
            text += "\n" + caret
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


# Longer source lines are shown as a window of this many characters around the caret.
_WIDTH = 160


def render_caret(source: str, span: Span) -> str:
    """The span's source line, then a caret line under the span (tabs kept so carets align)."""
    lines = source.split("\n")  # lark counts lines by "\n" only, not by str.splitlines()'s separators
    if not 1 <= span.line <= len(lines):
        return ""
    line = "".join(ch if ch.isprintable() or ch == "\t" else " " for ch in lines[span.line - 1].rstrip("\r"))
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
    pad = " " * len(prefix) + "".join(ch if ch == "\t" else " " for ch in line[:start])
    return f"    {prefix}{line}{suffix}\n    {pad}{'^' * max(min(width, len(line) - start), 1)}"

"""Text that generated code quotes (docstrings, comments): escaped so that nothing a file says can break out."""

from __future__ import annotations

__all__ = ["comment_text", "docstring", "docstring_text"]


def comment_text(text: str) -> str:
    """Text safe to put after `#`: one line, printable characters only."""
    return "".join(ch if ch.isprintable() else " " for ch in " ".join(text.split()))


def docstring_text(text: str) -> str:
    """Text safe inside a triple-quoted string: backslashes and quotes escaped, other characters as escapes.

    Every `"` is escaped, so no run of quotes (also one next to the closing quotes) can end the string early;
    line breaks other than "\\n" (carriage returns, U+2028, form feeds) become escapes too.
    """
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return "".join(ch if ch.isprintable() or ch == "\n" else repr(ch)[1:-1] for ch in escaped)


def docstring(text: str, indent: str) -> str:
    """A triple-quoted docstring that no text can break out of."""
    lines = docstring_text(text).split("\n")
    body = "\n".join((indent + line).rstrip() for line in lines[1:])
    if len(lines) == 1:
        return f'{indent}"""{lines[0]}"""'
    return f'{indent}"""{lines[0]}\n{body}\n{indent}"""'

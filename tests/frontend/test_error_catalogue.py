"""The catalogue of mistakes people make in .tnd files (docs/errors.md): each gives a precise message, at the
right line and column, with the line, a caret and a hint; and files that are not .tnd text. From the command line
(exit status 1, no traceback, nothing written) and for output files: tests/e2e/test_cli_errors.py."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

import tncompiler
from tncompiler import TncError
from tncompiler.api import MAX_SOURCE_BYTES
from tncompiler.frontend.parse import MAX_NESTING

ROOT = Path(__file__).resolve().parents[2]
HEAD = "index n, c = 3, d = 4, i = 8, k = 3\ninput x[n, c, i]\ninput w[d, c, k]\n"
CONV = "index i = 8, k = 3\npattern p(i, o, k) = conv({})\ninput x[i]\ny[o] = x[i] * p(i, o, k) * delta(k)\n"
DEFINED = HEAD + "y[n, d] = x[n, c, i] * w[d, c, k] * delta(i) * delta(k)\n"


@dataclass(frozen=True)
class Entry:
    """One mistake: the file, where the error points (line, column, caret width) and what it says."""

    name: str
    source: str
    line: int
    column: int
    message: str
    hint: str | None
    width: int = 1


# Three definitions of ten factors each, nested: c[n] stands for 1000 factors of x (the product limit's edge).
_LARGE = "index n\ninput x[n]\n" + "".join(
    f"{a}[n] = " + " * ".join([f"{b}[n]"] * 10) + "\n" for a, b in zip("abc", "xab")
)

CATALOGUE = [
    # -- brackets ---------------------------------------------------------------------------------------------
    Entry("missing-bracket", "index n\ninput x[n\ninput w[n]\ny[n] = x[n] * w[n]\n", 2, 8,
          "'[' is never closed", "add ']' at the end of line 2"),
    Entry("missing-bracket-at-end", "index n\ninput w[n]\ny[n] = w[n\n", 3, 9,
          "'[' is never closed", "add ']' where the statement ends, at the end of line 3"),
    Entry("missing-paren", HEAD + "y[n, d] = (x[n, c, i] * w[d, c, k]\nz[n] = x[n, c, i] * delta(c, i)\n", 4, 11,
          "'(' is never closed", "add ')' at the end of line 4"),
    Entry("missing-paren-same-line", "index i = 8, k = 3\npattern p(i, o, k = conv()\n", 2, 19,
          "unexpected '='", "'(' at line 2, column 10 is still open"),
    Entry("wrong-closer", "index n\ninput x[n)\n", 2, 10, "')' does not match '[' at line 2, column 8",
          "close '[' with ']'"),
    Entry("unmatched-closer", "index n\ninput x[n]]\n", 2, 11, "unmatched ']'", "delete it"),
    Entry("deep-nesting", "index n\ninput x[n]\ny[n] = " + "(" * (MAX_NESTING + 1) + "x[n]" + ")" * (MAX_NESTING + 1),
          3, 8 + MAX_NESTING, f"brackets nested more than {MAX_NESTING} deep", "split the expression"),
    # -- words ------------------------------------------------------------------------------------------------
    Entry("misspelt-index", "indx n\n", 1, 1, "unknown keyword 'indx'", "did you mean 'index'?", 4),
    Entry("misspelt-input", "index n\ninpt x[n]\n", 2, 1, "unknown keyword 'inpt'", "did you mean 'input'?", 4),
    Entry("misspelt-pattern", "index i = 8, k = 3\npatern p(i, o, k) = conv()\n", 2, 1,
          "unknown keyword 'patern'", "did you mean 'pattern'?", 6),
    Entry("capitalised-keyword", "Index n\n", 1, 1, "unknown keyword 'Index'", "did you mean 'index'?", 5),
    Entry("unknown-statement", "index n\nfoo n\n", 2, 5, "unexpected 'n' after 'foo'",
          "a statement starts with index, pattern or input"),
    Entry("unexpected-character", "index n\ninput x[n]\ny[n] = x[n] × 2\n", 3, 13, "unexpected character '×'",
          "a .tnd file holds names, numbers"),
    Entry("continued-line", "index n\ninput x[n]\ny[n] =\nz[n] = x[n]\n", 4, 6, "unexpected '='",
          "line 3 ends with '=', so the next line continues that statement"),
    Entry("unfinished-statement", "index n\ninput x[n]\ny[n] = x[n] *\n", 3, 14, "unexpected end of file",
          "expected one of '(', a name, a number"),
    # -- declarations -----------------------------------------------------------------------------------------
    Entry("undeclared-index", "index n\ninput x[n, q]\ny[n] = x[n, q]\n", 2, 12, "undeclared index 'q'",
          "declare it first: index q"),
    Entry("undeclared-index-near-name", HEAD + "y[n, d] = x[n, cc, i] * w[d, c, k]\n", 4, 16,
          "undeclared index 'cc'", "did you mean 'c'?", 2),
    Entry("duplicate-name", "index n\nindex n = 2\n", 2, 7, "'n' is already declared as an index at line 1",
          "every index, pattern, input and definition needs its own name"),
    Entry("pattern-with-two-legs", "index i = 8, k = 3\npattern p(i, k) = conv()\n", 2, 1,
          "pattern 'p' has 2 legs; a conv pattern has three: (i, o, k)", "write pattern p(i, o, k) = conv(...)",
          24),
    Entry("unknown-pattern-argument", CONV.format("strides=2"), 2, 27, "unknown argument 'strides' of conv",
          "valid arguments: stride, padding, dilation", 7),
    Entry("stride-zero", CONV.format("stride=0"), 2, 34, "stride must be at least 1, got 0",
          "stride=1 means no stride"),
    Entry("negative-padding", CONV.format("padding=-1"), 2, 35, "padding must not be negative",
          "0 or more", 2),
    Entry("kernel-larger-than-input", "index i = 4, k = 7\npattern p(i, o, k) = conv()\n", 2, 1,
          "pattern 'p' has output size -2: the kernel (dilated extent 7) is larger than the padded input (4 + 0)",
          "use a kernel of at most 4, more padding, or a larger input", 27),
    # -- definitions ------------------------------------------------------------------------------------------
    Entry("size-clash", HEAD + "y[n, d] = x[n, d, i] * w[d, c, k] * delta(i) * delta(k)\n", 4, 16,
          "size clash: 'd' at axis 1 of input 'x' (declared as c) has size 4, expected 3",
          "an index has one size wherever it is used"),
    Entry("size-clash-pattern-output", "index i = 8, k = 3, o = 7\npattern p(i, o, k) = conv(stride=1)\n", 2, 14,
          "size clash: pattern 'p' gives 'o' size 6, but it is declared with size 7", "declare o = 6"),
    Entry("size-clash-pattern-leg", HEAD + "pattern p(i, o, k) = conv()\ny[n, c, o] = x[n, c, i] * p(i, o, d)\n",
          5, 35, "size clash: index 'd' used as 'k' of pattern 'p' has size 4, expected 3", "an index has one size"),
    Entry("free-index-missing-on-the-left", HEAD + "y[n, d] = x[n, c, i] * w[d, c, k]\n", 4, 11,
          "index 'i' appears once on the right and not on the left of 'y'",
          "add 'i' to the left side, or multiply by delta(i) to sum over it", 10),
    Entry("index-twice-on-the-left", HEAD + "y[n, n] = x[n, c, i] * x[n, c, i]\n", 4, 6,
          "index 'n' appears twice in the left side of 'y'", "give each axis its own index"),
    Entry("unknown-tensor", HEAD + "y[n] = z[n, c]\n", 4, 8, "unknown tensor 'z'",
          "inputs and definitions so far: x, w"),
    Entry("cyclic-definition", HEAD + "y[n] = z[n] * delta(n)\nz[n] = y[n]\n", 4, 8, "'z' is defined later, at line 5",
          "a definition can only use inputs and earlier definitions (no cycles)"),
    Entry("self-reference", HEAD + "y[n] = y[n] * delta(n)\n", 4, 8, "'y' refers to itself",
          "a definition can only use earlier ones"),
    Entry("definition-named-like-python", HEAD + "print[n] = x[n, c, i] * delta(c) * delta(i)\n", 4, 1,
          "'print' cannot name a function of the generated module: it is a Python builtin",
          "rename the definition", 5),
    Entry("definition-named-like-a-class", DEFINED + "gw = sample(vjp(y, w), index=n, p=0.5)\n"
          "y_sampled_autograd[n] = x[n, c, i] * delta(c) * delta(i)\n", 6, 1,
          "'y_sampled_autograd' cannot name a function of the generated module: it is the autograd class tnc "
          "generates for 'y'", "rename the definition", 18),
    Entry("size-keyword-not-a-name", "index n, lambda\ninput x[n]\ny[n, lambda] = x[n]\n", 3, 1,
          "'y' takes the size of index 'lambda' as a keyword argument, but 'lambda' cannot be one",
          "rename the index 'lambda', or give it a size in the file", 19),
    # -- transforms -------------------------------------------------------------------------------------------
    Entry("transform-unknown-diagram", DEFINED + "g = vjp(yy, x)\n", 5, 9, "unknown diagram 'yy'",
          "did you mean 'y'?", 2),
    Entry("transform-later-diagram", HEAD + "g = vjp(y, x)\n" + DEFINED.removeprefix(HEAD), 4, 9,
          "'y' is defined later, at line 5", "a transform can only use earlier definitions"),
    Entry("transform-unknown-argument", DEFINED + "g = vjp(y, q)\n", 5, 12,
          "'q' is not an argument of 'y'; its arguments: x, w", None),
    Entry("unknown-transform", DEFINED + "g = vpj(y, x)\n", 5, 5, "unknown transform 'vpj'",
          "transforms: vjp, jvp", 3),
    Entry("sample-p-and-count", DEFINED + "g = sample(vjp(y, w), index=i, p=0.5, count=2)\n", 5, 39,
          "sample() takes p= or count=, not both", "count= keeps exactly count entries", 7),
    Entry("sample-count-not-whole", DEFINED + "g = sample(vjp(y, w), index=i, count=2.5)\n", 5, 32,
          "count= takes a whole number of entries, at least 1", None, 9),
    Entry("sample-count-too-large", DEFINED + "g = sample(vjp(y, w), index=i, count=9)\n", 5, 32,
          "count=9 is more than the 8 entries of 'i'", "count is at most |i| = 8 (count=8 is exact)", 7),
    # -- memory -----------------------------------------------------------------------------------------------
    Entry("over-memory-limit", "index n = 100000, c = 100000, d = 100000\ninput x[n, c]\ninput w[c, d]\n"
          "y[n, c, d] = x[n, c] * w[c, d]\n", 4, 1, "diagram 'y' needs about 7.1 PiB",
          "make the sizes smaller, or raise the limit with --max-memory", 30),
    # -- size limits --------------------------------------------------------------------------------------------
    Entry("product-too-large", _LARGE + "y[n] = c[n] * x[n]\n", 6, 15, "this product passes 1000 factors here",
          "does not help", 4),
    Entry("sum-too-large", _LARGE + "y[n] = " + " + ".join(["c[n]"] * 11) + "\n", 6, 78,
          "this sum passes 10000 factors here", "add what they return in Python", 4),
    Entry("expansion-too-large", "index n\ninput u[n]\ninput v[n]\ns[n] = u[n] + v[n]\ny[n] = "
          + " * ".join(["s[n]"] * 11) + "\n", 5, 78, "expanding this product passes 1024 terms here",
          "multiply fewer sums", 4),
    # -- whole files ------------------------------------------------------------------------------------------
    Entry("empty-file", "", 1, 1, "no definitions: the file is empty", "write at least one definition"),
    Entry("only-comments", "# to do\n\n", 1, 1, "no definitions: the file is empty", "write at least one definition"),
    Entry("no-definitions", "index n\ninput x[n]\n", 2, 1, "no definitions: the file only declares",
          "add a definition that uses them"),
]
IDS = [entry.name for entry in CATALOGUE]


LIMIT = 16 * 2**30  # --max-memory for every entry, so that over-memory-limit's report is the same on any machine


def error_of(source: str) -> TncError:
    with pytest.raises(TncError) as caught:
        tncompiler.compile_source(source, "bad.tnd", max_memory=LIMIT)
    return caught.value


def test_the_names_are_unique() -> None:
    assert len(set(IDS)) == len(IDS)


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
def test_catalogue(entry: Entry) -> None:
    error = error_of(entry.source)
    text = str(error)
    lines = text.split("\n")
    assert lines[0] == f"bad.tnd:{entry.line}:{entry.column}: error: {error.message}", text
    assert entry.message in error.message, text
    source_line = entry.source.split("\n")[entry.line - 1]
    if source_line.strip():
        shown, caret = lines[1], lines[2]
        assert shown.startswith("    ") and shown[4:] in source_line or "..." in shown, text
        if "..." not in shown:
            assert caret == "    " + " " * (entry.column - 1) + "^" * entry.width, text
    if entry.hint is None:
        assert error.hint is None and not lines[-1].startswith("hint:"), text
    else:
        assert lines[-1] == f"hint: {error.hint}" and entry.hint in (error.hint or ""), text


DOCS = ROOT / "docs" / "errors.md"
WIDEST_EXAMPLE = 120  # docs/errors.md may abbreviate an example with a longer line (its report is still exact)


def docs_entries() -> dict[str, str]:
    """docs/errors.md's entries: the name of each `### `name`` heading and its text, up to the next heading (a line
    starting with '#' outside a fenced block)."""
    entries: dict[str, list[str]] = {}
    current: list[str] | None = None
    fenced = False
    for line in DOCS.read_text().split("\n"):
        fenced ^= line.startswith("```")
        heading = not fenced and line.startswith("#")
        if heading and (named := re.fullmatch(r"### `([^`]+)`", line)):
            assert named[1] not in entries, f"docs/errors.md has two entries {named[1]!r}"
            current = entries[named[1]] = []
        elif heading:
            current = None
        elif current is not None:
            current.append(line)
    return {name: "\n".join(lines) for name, lines in entries.items()}


@pytest.mark.parametrize("entry", CATALOGUE, ids=IDS)
def test_the_docs_show_every_entry(entry: Entry) -> None:
    """Under its name, docs/errors.md shows the entry's file and the exact report the compiler prints for it."""
    docs = docs_entries()
    assert entry.name in docs, f"docs/errors.md has no entry ### `{entry.name}`"
    shown = docs[entry.name]
    assert f"```text\n{error_of(entry.source)}\n```" in shown, f"{entry.name}: the report differs from the compiler's"
    if max(map(len, entry.source.split("\n"))) <= WIDEST_EXAMPLE:
        source = entry.source if entry.source.endswith("\n") else entry.source + "\n"
        assert f"```\n{source}```" in shown, f"{entry.name}: the example differs from the catalogue's"


# -- files that are not .tnd text --------------------------------------------------------------------------------
def file_error(path: Path) -> str:
    with pytest.raises(TncError) as caught:
        tncompiler.compile_file(path)
    return str(caught.value)


def test_binary_file(tmp_path: Path) -> None:
    path = tmp_path / "model.tnd"
    path.write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00index n\n")
    assert file_error(path) == f"{path}: error: this is a binary file, not a .tnd text file\n" \
        "hint: give the .tnd file, not a compiled or binary one"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.tnd"
    path.write_bytes("index n  # Größe\n".encode("latin-1"))
    assert file_error(path) == (
        f"{path}:1:14: error: not UTF-8 text: byte 0xF6 is not part of a UTF-8 character\n"
        "    index n  # Gr\ufffd\ufffde\n"
        "                 ^\n"
        "hint: save the file as UTF-8"
    )


def test_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "huge.tnd"
    with path.open("wb") as stream:
        stream.truncate(100 * 2**20)  # sparse: 100 MB that take no disk space
    text = file_error(path)
    assert text.startswith(f"{path}: error: file too large: 100.0 MB, and the limit is 10 MB"), text
    assert "hint: " in text
    with pytest.raises(TncError, match="file too large"):
        tncompiler.compile_source("#" * (MAX_SOURCE_BYTES + 1))


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.tnd"
    path.write_bytes("\ufeffindex n\ninput x[n]\ny[n] = x[n]\n".encode())
    assert "def y(x):" in tncompiler.compile_file(path)
    assert "def y(x):" in tncompiler.compile_source("\ufeffindex n\ninput x[n]\ny[n] = x[n]\n")


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    assert "cannot read" in file_error(tmp_path)


def test_lines_are_counted_as_the_parser_counts_them() -> None:
    """Form feeds and U+2028 in comments are not line breaks: the caret shows the right line."""
    error = error_of("index n  # a\u2028b\x0cc\ninput x[n, q]\ny[n] = x[n, q]\n")
    assert str(error).split("\n")[1] == "    input x[n, q]"


def test_a_long_line_is_shown_around_the_caret() -> None:
    source = "index n\ninput x[n]\ny[n] = x[n]" + " * x[n]" * 60 + " * x[q]\n"
    lines = str(error_of(source)).split("\n")
    assert lines[0].startswith("bad.tnd:3:") and "undeclared index 'q'" in lines[0]
    assert lines[1].startswith("    ... ") and len(lines[1]) < 200
    assert lines[1][lines[2].index("^")] == "q"

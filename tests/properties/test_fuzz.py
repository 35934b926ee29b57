"""Fuzzing: any text either compiles to a module that imports, or fails with a `TncError`; never anything else.

Two sources of text: small well-formed programs drawn from a grammar-shaped strategy, and the examples in
`examples/` with characters and tokens deleted, inserted, duplicated or swapped. The runs are derandomised, so CI
sees the same cases every time; set TNC_FUZZ_EXAMPLES to run more of them locally.
"""

from __future__ import annotations

import ast
import builtins
import os
import re
import types
from collections.abc import Callable
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tncompiler
from tncompiler import TncError
from tncompiler.dot import diagram_dot
from tncompiler.stages import diagram_stages

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.tnd"))
# Each example as written, and without its comments (so that more edits land in the code).
TEXTS = [path.read_text() for path in EXAMPLES]
TEXTS += [re.sub(r"(?m)^#.*\n|\s*#.*$", "", text) for text in TEXTS]
LOCAL = os.environ.get("TNC_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(LOCAL or "150"),
    deadline=None,
    derandomize=LOCAL is None,
    suppress_health_check=list(HealthCheck),
    database=None,
)
# Cases that have previously failed (kept so that they stay fixed).
KNOWN = [
    "",
    "# only a comment\n",
    "index n\n",
    "index n\ninput x[n]\ny[n] = " + "(" * 101 + "x[n]" + ")" * 101 + "\n",
    "index n\ninput x[n\n",
    "index n\ninput x[n]\ny[n] = x[n]\nz = vjp(y, x, cotangent=x)\n",
    "index n = 0\ninput x[n]\ny[n] = x[n]\n",
    "index n\ninput x[n]\ny[n] = x[n] / 0\n",
    "index n\ninput x[n]\ny[n] = x[n] * 1e400\n",  # was `result * (oo)`: a NameError at call time
    "index n\ninput x[n]\ny[n] = x[n] * 1e300 * 1e300\n",  # was `result * (inf)`
    "index n = " + "9" * 5000 + "\ninput x[n]\ny[n] = x[n]\n",  # was a ValueError from int()
    "index n\ninput x[n]\ny[n] = x[n] * 0\n",
    "index n\ninput x[]\ny[n] = x[]\n",
    "index n = 99999999999999999999\ninput x[n]\ny[n] = x[n]\n",
    "index i = 8, k = 99999999999999999999\npattern p(i, o, k) = conv()\n",
    "index i = 8, k = 3\npattern p(i, o, k) = conv(stride=99999999999999999999)\n",
    # a Jacobian has no arguments, so a size bound at call time cannot be bound (was a KeyError in codegen)
    "index a, b\ninput x0[a]\ny[a] = x0[a]\ng = jacobian(y, x0)\n",
    # size(a) of an index that no argument carries (was a KeyError in codegen)
    "index b, a\ninput x0[b]\ny[b] = size(a) * x0[b]\n",
]

# -- well-formed programs ------------------------------------------------------------------------------------
NAMES = ["a", "b", "c", "n", "lambda", "print", "device", "result", "t1", "torch"]


@st.composite
def programs(draw: st.DrawFn) -> str:
    """A small program: indices, maybe a pattern, inputs, one or two definitions, maybe a transform."""
    names = draw(st.lists(st.sampled_from(NAMES), min_size=2, max_size=5, unique=True))
    sizes = {name: draw(st.one_of(st.none(), st.integers(1, 5))) for name in names}
    lines = ["index " + ", ".join(n if s is None else f"{n} = {s}" for n, s in sizes.items())]
    known = [n for n, s in sizes.items() if s is not None]
    pattern = None
    if len(known) >= 2 and draw(st.booleans()):
        i, k = known[:2]
        args = draw(st.sampled_from(["", "stride=2", "padding=1", "padding=same", "dilation=2", "padding=(1, 0)"]))
        lines.append(f"pattern p({i}, o, {k}) = conv({args})")
        pattern = (i, "o", k)
    inputs = {}
    for position in range(draw(st.integers(1, 3))):
        legs = draw(st.lists(st.sampled_from(names), min_size=1, max_size=3, unique=True))
        axes = [f"({legs[0]} {legs[1]})", *legs[2:]] if len(legs) > 1 and draw(st.booleans()) else legs
        inputs[f"x{position}"] = axes
        lines.append(f"input x{position}[{', '.join(axes)}]")
    factors = [f"{name}[{', '.join(axes)}]" for name, axes in inputs.items()]
    factors = draw(st.lists(st.sampled_from(factors), min_size=1, max_size=3))
    if pattern is not None and draw(st.booleans()):
        factors.append(f"p({', '.join(pattern)})")
    counts: dict[str, int] = {}
    for factor in factors:
        for leg in re.findall(r"\w+", factor.split("[", 1)[-1].split("(", 1)[-1]):
            counts[leg] = counts.get(leg, 0) + 1
    left = [leg for leg, count in counts.items() if count == 1 or draw(st.booleans())]
    scalar = draw(st.sampled_from(["", "2 * ", "size(a) * ", "-", "0.5 * "]))
    lines.append(f"y[{', '.join(left)}] = {scalar}{' * '.join(factors)}")
    if draw(st.booleans()):
        lines.append(f"z[{', '.join(left)}] = y[{', '.join(left)}] + y[{', '.join(left)}]")
    for position in range(draw(st.integers(0, 2))):
        lines.append(f"g{position} = {draw(transforms(list(inputs), left, names))}")
    return "\n".join(lines) + "\n"


def transforms(inputs: list[str], left: list[str], names: list[str]) -> st.SearchStrategy[str]:
    """A transform of `y`, with arguments that may or may not make sense for it."""
    x, leg, name = st.sampled_from(inputs), st.sampled_from(left or names), st.sampled_from(names)
    return st.one_of(
        st.builds("vjp(y, {})".format, x),
        st.builds("jvp(y, {})".format, x),
        st.builds("jacobian(y, {})".format, x),
        st.builds("kfac(y, {}, batch={}, approx={})".format, x, name, st.sampled_from(["expand", "reduce"])),
        st.builds("kfac_grad(y, {}, batch={})".format, x, name),
        st.builds("slice(y, {}={})".format, leg, st.sampled_from(["0:1", "1:", "::2", "0:8:3", "5:2"])),
        st.builds("sample(y, index={}, p={})".format, name, st.sampled_from(["0.5", "1", "0", "2"])),
        st.builds("sample(vjp(y, {}), index={}, p=0.25)".format, x, name),
    )


# -- mutated examples ----------------------------------------------------------------------------------------
PIECES = ["[", "]", "(", ")", ",", "=", "*", "+", "-", "/", ":", "#", "\n", " ", "0", "-1", "3", "99", "n", "x",
          "index", "input", "pattern", "conv", "vjp(", "delta(", "size(", '"""', "\\", "\u2028", "\x00", "\t"]


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """An example with a few random edits: characters and tokens deleted, inserted, duplicated, swapped or
    replaced; numbers and names replaced by others (which keeps the syntax and tests the checks)."""
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 3))):
        if not text:
            break
        edit = draw(st.sampled_from(EDITS))
        text = edit(draw, text)
    return text


def _span(draw: st.DrawFn, text: str) -> tuple[int, int]:
    start = draw(st.integers(0, len(text) - 1))
    return start, min(len(text), start + draw(st.integers(1, 12)))


def _delete(draw: st.DrawFn, text: str) -> str:
    start, end = _span(draw, text)
    return text[:start] + text[end:]


def _insert(draw: st.DrawFn, text: str) -> str:
    start, _ = _span(draw, text)
    return text[:start] + draw(st.sampled_from(PIECES)) + text[start:]


def _duplicate(draw: st.DrawFn, text: str) -> str:
    start, end = _span(draw, text)
    return text[:end] + text[start:end] + text[end:]


def _swap(draw: st.DrawFn, text: str) -> str:
    a, b = sorted((draw(st.integers(0, len(text) - 1)), draw(st.integers(0, len(text) - 1))))
    return text[:a] + text[b] + text[a + 1 : b] + text[a] + text[b + 1 :] if a != b else text


def _token(draw: st.DrawFn, text: str) -> str:
    tokens = re.split(r"(\W)", text)
    k = draw(st.integers(0, len(tokens) - 1))
    tokens[k] = draw(st.sampled_from(PIECES + ["0", "100000", "1.5", "same", "valid", ""]))
    return "".join(tokens)


def _replace_matching(pattern: str, choices: st.SearchStrategy[str]) -> Callable[[st.DrawFn, str], str]:
    def edit(draw: st.DrawFn, text: str) -> str:
        found = list(re.finditer(pattern, text))
        if not found:
            return text
        match = draw(st.sampled_from(found))
        return text[: match.start()] + draw(choices) + text[match.end() :]

    return edit


EDITS = [
    _delete,
    _insert,
    _duplicate,
    _swap,
    _token,
    _replace_matching(r"(?<![\w.])\d+(?![\w.])", st.sampled_from(["0", "1", "2", "3", "5", "-1", "64"])),
    _replace_matching(r"(?<=[\[(, ])[a-z]\w*(?=[\]),])", st.sampled_from(["n", "c", "d", "g", "i1", "o1", "k1", "x"])),
]


def compiles_or_fails_cleanly(text: str) -> None:
    """The property: a module that imports and DOT text, or a TncError (whose message renders); nothing else."""
    try:
        code = tncompiler.compile_source(text, "fuzz.tnd")
        program = tncompiler.build_program(text, "fuzz.tnd")
    except TncError as error:
        assert str(error).startswith("fuzz.tnd")
        return
    for diagram in program.diagrams:
        for stage, staged in diagram_stages(diagram):
            assert diagram_dot(staged, stage).startswith("graph ")
    assert not undefined_names(code), undefined_names(code)
    module = types.ModuleType("fuzzed")
    exec(compile(code, "<fuzzed>", "exec"), module.__dict__)
    assert module.__all__ and all(callable(getattr(module, name)) for name in module.__all__)


def undefined_names(code: str) -> set[str]:
    """Names the module reads but nothing defines (like `inf` for an overflowing scalar): NameErrors at call time."""
    tree = ast.parse(code)
    defined = set(dir(builtins))
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else defined).add(node.id)
        elif isinstance(node, ast.FunctionDef):
            defined.add(node.name)
        elif isinstance(node, ast.arg):
            defined.add(node.arg)
        elif isinstance(node, ast.alias):
            defined.add((node.asname or node.name).split(".")[0])
    return used - defined


def test_known_cases() -> None:
    for text in KNOWN:
        compiles_or_fails_cleanly(text)


@FUZZ
@given(programs())
def test_well_formed_programs(text: str) -> None:
    compiles_or_fails_cleanly(text)


@FUZZ
@given(mutated())
def test_mutated_examples(text: str) -> None:
    compiles_or_fails_cleanly(text)


@FUZZ
@given(st.text(alphabet="[](),=*+-/:#\n abcnxyz0123456789.ie", max_size=80))
def test_random_text(text: str) -> None:
    compiles_or_fails_cleanly(text)

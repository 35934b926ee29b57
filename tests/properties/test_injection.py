"""Safe generation: no text from a .tnd file (or its file name) reaches the generated module except as sanitised
names and escaped docstrings or comments, so nothing in a file can break out of them and run; and the compiler
never evaluates user text."""

from __future__ import annotations

import ast
import inspect
import types
from pathlib import Path

import pytest
import torch

import tncompiler

PACKAGE = Path(tncompiler.__file__).resolve().parent
MARKER = "raise SystemExit('injected')"
# Texts that would end a docstring, a string or a comment, or start a new line of code, if they were not escaped.
PAYLOADS = [
    f'"""; {MARKER}; """',
    f"'''; {MARKER}; '''",
    f'"; {MARKER}; "',
    '"',
    '""',
    "\\",
    '\\"""',
    f"\\n{MARKER}",
    f"\\\n{MARKER}",
    f"\r{MARKER}",
    f"\u2028{MARKER}",
    f"\u2029{MARKER}",
    f"\x0b{MARKER}",
    f"\x0c{MARKER}",
    f"\x85{MARKER}",
    f"\x00{MARKER}",
    "# -*- coding: latin-1 -*-",
    "{MARKER} {0} %s",
]
IDS = [repr(p)[:24] for p in PAYLOADS]
SIMPLE = "index n, c = 3\ninput x[n, c]\ninput w[c]\ny[n] = x[n, c] * w[c]  # {comment}\n"


def module_of(code: str) -> types.ModuleType:
    """Import generated code; the marker, if it ever ran, would raise SystemExit here."""
    tree = ast.parse(code)
    assert not any(isinstance(node, ast.Name) and node.id == "SystemExit" for node in ast.walk(tree))
    module = types.ModuleType("generated")
    exec(compile(code, "<generated>", "exec"), module.__dict__)
    return module


def public_names(module: types.ModuleType) -> set[str]:
    return {name for name in vars(module) if not name.startswith("_") and name not in ("torch", "functools")}


# -- names ------------------------------------------------------------------------------------------------------
RESERVED = """
index lambda, device = 2, dtype = 3, result = 2, t1 = 3, torch = 2, functools = 2, True = 2
pattern class(dtype, o, t1) = conv(padding=1)
input len[lambda, device, dtype]
input print[device, result]
input print_[result]
input None[True]
first[lambda, o] = len[lambda, device, dtype] * class(dtype, o, t1) * delta(t1) * print[device, result] * print_[result]
second[lambda, True] = first[lambda, o] * None[True] * delta(o) * 2
"""


def test_keywords_builtins_and_generated_locals_as_names() -> None:
    """Indices, patterns and inputs may take any name: inside a function they are renamed where they must be."""
    module = module_of(tncompiler.compile_source(RESERVED, "reserved.tnd"))
    assert module.__all__ == ["first", "second"]
    assert public_names(module) == {"first", "second"}
    args = (
        torch.randn(4, 2, 3, dtype=torch.float64),
        torch.randn(2, 2, dtype=torch.float64),
        torch.randn(2, dtype=torch.float64),
        torch.randn(2, dtype=torch.float64),
    )
    x, p, q, none = args
    pattern = torch.zeros(3, 3, 3, dtype=torch.float64)  # i = o + k - 1 (padding 1)
    for i in range(3):
        for o in range(3):
            for k in range(3):
                pattern[i, o, k] = float(i == o + k - 1)
    expected = torch.einsum("ldc,cok,dr,r->lo", x, pattern, p, q)
    torch.testing.assert_close(module.first(x, p, q), expected)
    torch.testing.assert_close(module.second(x, p, q, none), 2 * expected.sum(1)[:, None] * none)


@pytest.mark.parametrize("name", ["def", "print", "torch", "max", "y_sampled_autograd"])
def test_a_definition_is_reachable_under_its_own_name_or_the_compile_fails_where_it_is(name: str) -> None:
    """`print_` used to be renamed `print__2` beside a `print` renamed `print_`, which then returned the wrong
    definition; a definition named like the autograd class of another was silently replaced by the class."""
    source = (
        "index n, o1\ninput x[n, o1]\ninput w[o1]\ny[n] = x[n, o1] * w[o1]\n"
        f"gy = sample(vjp(y, w), index=n, p=0.5)\n{name}[n] = x[n, o1] * w[o1]\n"
    )
    with pytest.raises(tncompiler.TncError) as caught:
        tncompiler.compile_source(source, "names.tnd")
    error = caught.value
    assert error.span is not None and (error.span.line, error.span.column) == (6, 1)
    assert f"{name!r} cannot name a function" in error.message and "rename the definition" in str(error)


def test_generated_names_never_meet_each_other_or_the_files() -> None:
    """Private exact VJPs `_{y}_vjp_{x}` of two definitions could be spelt alike (was: internal error: KeyError);
    an input named `generator` in a sampled function (was: SyntaxError: duplicate argument)."""
    source = """index n, c = 2
input x[n, c]
input vjp_x[n, c]
input generator[c]
a[n] = vjp_x[n, c] * generator[c]
a_vjp[n] = x[n, c] * generator[c]
g = sample(vjp(a, generator), index=n, p=0.5)
h = sample(vjp(a_vjp, generator), index=n, p=0.5)
k = sample(a, index=c, p=1)
"""
    module = module_of(tncompiler.compile_source(source))
    assert str(inspect.signature(module.k)) == "(vjp_x, generator_2, *, p=1.0, generator=None)"
    assert "generator_2: the file's 'generator', [c]" in (module.k.__doc__ or "")
    x, v = (torch.randn(3, 2, dtype=torch.float64, requires_grad=True) for _ in range(2))
    w = torch.randn(2, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(module.k(v, w), v @ w)
    module.a_sampled_autograd.apply(v, w, None).sum().backward()  # the exact VJPs: _a_vjp_vjp_x and its twin
    module.a_vjp_sampled_autograd.apply(x, w, None).sum().backward()
    torch.testing.assert_close(v.grad, w.detach().expand(3, 2))
    torch.testing.assert_close(x.grad, w.detach().expand(3, 2))


def test_an_input_named_like_a_local_keeps_its_value() -> None:
    """`device` and `dtype` are locals of every generated function; an input with that name is renamed."""
    source = "index n = 2\ninput device[n]\ninput dtype[n]\ny[n] = device[n] * dtype[n]\n"
    module = module_of(tncompiler.compile_source(source))
    a, b = torch.randn(2), torch.randn(2)
    torch.testing.assert_close(module.y(a, b), a * b)


# -- docstrings, comments and file names --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload", [p for p in PAYLOADS if "\n" not in p], ids=[i for i, p in zip(IDS, PAYLOADS) if "\n" not in p]
)
def test_comments_cannot_break_out_of_the_docstring(payload: str) -> None:
    """The docstring quotes the definition's lines, comments included."""
    source = SIMPLE.format(comment=f"<{payload}>")
    module = module_of(tncompiler.compile_source(source, "comment.tnd"))
    assert module.__all__ == ["y"] and public_names(module) == {"y"}
    assert f"<{payload}>" in (module.y.__doc__ or ""), "the comment is quoted, escaped but whole"


def test_comments_on_every_line_of_a_long_definition() -> None:
    lines = [f"  * w[c]  # <{p}>" for p in PAYLOADS if "\n" not in p]
    source = "index n, c = 3\ninput x[n, c]\ninput w[c]\ny[n] = x[n, c]  # first\n" + "\n".join(lines) + "\n"
    module = module_of(tncompiler.compile_source(source))
    assert module.__all__ == ["y"]


@pytest.mark.parametrize("payload", PAYLOADS, ids=IDS)
def test_file_names_cannot_break_out(payload: str) -> None:
    source = SIMPLE.format(comment="")
    for filename in (f"a{payload}.tnd", f"dir{payload}/b.tnd", payload):
        module = module_of(tncompiler.compile_source(source, filename))
        assert module.__all__ == ["y"] and public_names(module) == {"y"}
        assert module.__doc__ is not None and module.__doc__.startswith("Tensor-network functions compiled by tnc")


def test_a_file_name_with_quotes_loads(tmp_path: Path) -> None:
    path = tmp_path / 'we"ird """name.tnd'
    path.write_text(SIMPLE.format(comment='"""'))
    module = tncompiler.load(path)
    assert module.__all__ == ["y"]


def test_errors_quote_names_safely() -> None:
    """Error messages are for people, not code; still, a name is shown with repr (quotes escaped)."""
    with pytest.raises(tncompiler.TncError) as caught:
        tncompiler.compile_source('index n\ninput x[n]\ny[n] = x[n]  # """\nz[n] = q[n]\n', 'x"""y.tnd')
    assert "unknown tensor 'q'" in str(caught.value)


# -- the compiler never evaluates user text -------------------------------------------------------------------------
DANGEROUS = {"eval", "exec", "compile", "__import__", "execfile", "input"}


def _calls(path: Path) -> list[tuple[str, int, str]]:
    found = []
    tree = ast.parse(path.read_text(), str(path))
    functions = [node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in DANGEROUS and not (isinstance(func, ast.Attribute) and name == "compile"):
                owner = next((f.name for f in functions if f.lineno <= node.lineno <= (f.end_lineno or 0)), "")
                found.append((path.relative_to(PACKAGE).as_posix(), node.lineno, f"{owner}:{name}"))
    return found


def test_no_eval_or_exec_of_user_text() -> None:
    """The only exec in the package runs the compiler's own output: in generated.make_module, which load_source and
    the model API's disk cache (a module the compiler wrote there, verified against its source and the compiler's own
    files) call."""
    calls = [call for path in sorted(PACKAGE.rglob("*.py")) for call in _calls(path)]
    assert sorted((file, what) for file, _, what in calls) == [
        ("generated.py", "make_module:compile"),
        ("generated.py", "make_module:exec"),
    ], calls
    imported = {alias.name for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
                if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names}
    imported |= {node.module for path in PACKAGE.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
                 if isinstance(node, ast.ImportFrom) and node.module}
    unpickling = {"pickle", "marshal", "shelve", "dill"}
    assert not imported & unpickling, "nothing is unpickled: a compiled module pickles as its recipe"

"""The runtime helpers live in a real module, tncompiler/backend/helpers.py, and generated modules carry copies of
their source without the type hints: every helper of the table is there, each copy compiles, defines exactly its
names, reads only torch, builtins and the helpers it declares it needs, and is the module's code less its hints."""

from __future__ import annotations

import ast
import builtins
import inspect
import itertools
from pathlib import Path

import pytest
import torch

from tncompiler.backend import helpers, runtime
from tncompiler.backend.runtime import HELPERS, helper_source

CPU, FLOAT64 = torch.device("cpu"), torch.float64
SOURCE = ast.parse(Path(inspect.getfile(helpers)).read_text(encoding="utf-8"))


def parts(name: str) -> tuple[str, ...]:
    return runtime._PARTS.get(name, (name,))


def defined(tree: ast.Module) -> list[str]:
    """The names a module's top-level statements define."""
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [target.id for target in targets if isinstance(target, ast.Name)]
    return names


def copy_of(name: str) -> str:
    """The helper's own block in generated code (helper_source also returns the helpers it needs)."""
    blocks = helper_source({name})
    (block,) = [b for b in blocks if name in defined(ast.parse(b))]
    return block


class _Unhinted(ast.NodeTransformer):
    """The module's code as its copies should read: every hint left out."""

    def visit_arg(self, node: ast.arg) -> ast.arg:
        node.annotation = None
        return node

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.FunctionDef:
        node.returns = None
        self.generic_visit(node)
        return node

    def visit_AnnAssign(self, node: ast.AnnAssign) -> ast.Assign:
        assert node.value is not None
        return ast.Assign(targets=[node.target], value=node.value, lineno=node.lineno)


@pytest.mark.parametrize("name", HELPERS)
def test_every_helper_of_the_table_is_defined_in_the_module(name: str) -> None:
    for part in parts(name):
        assert hasattr(helpers, part), part
    if not name.isupper():
        assert callable(getattr(helpers, name))


@pytest.mark.parametrize("name", HELPERS)
def test_each_copy_compiles_and_defines_exactly_its_names(name: str) -> None:
    block = copy_of(name)
    compile(block, f"<{name}>", "exec")
    assert defined(ast.parse(block)) == list(parts(name))


@pytest.mark.parametrize("name", HELPERS)
def test_each_copy_is_the_module_code_without_hints(name: str) -> None:
    """Leaving the hints out changes nothing else: the copy's syntax tree is the module's, its hints removed."""
    copied = ast.parse(copy_of(name)).body
    original = [node for node in SOURCE.body if set(defined(ast.Module([node], []))) & set(parts(name))]
    unhinted = [_Unhinted().visit(ast.parse(ast.unparse(node)).body[0]) for node in original]  # a copy, then edited
    assert [ast.dump(node) for node in copied] == [ast.dump(node) for node in unhinted]
    hinted = [node for node in ast.walk(ast.Module(copied, [])) if isinstance(node, ast.AnnAssign)]
    hinted += [node for node in ast.walk(ast.Module(copied, [])) if isinstance(node, ast.arg) and node.annotation]
    assert not hinted


@pytest.mark.parametrize("name", HELPERS)
def test_each_copy_reads_only_torch_builtins_and_the_helpers_it_needs(name: str) -> None:
    """A generated module imports only torch: a helper may use nothing else, and _NEEDS lists what it calls."""
    carried = "\n\n\n".join(helper_source({name}))
    tree = ast.parse(carried)
    bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    bound |= {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)} | set(defined(tree))
    bound |= {f.name for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)}
    read = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    assert read - bound - set(dir(builtins)) <= {"torch"}, read - bound - set(dir(builtins))
    assert not any(isinstance(node, (ast.Import, ast.ImportFrom)) for node in ast.walk(tree))


def test_the_module_imports_only_torch_and_the_standard_library() -> None:
    imported = {alias.name for node in SOURCE.body if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module or "" for node in SOURCE.body if isinstance(node, ast.ImportFrom)}
    assert imported == {"__future__", "collections.abc", "torch"}


def test_the_constants_copy_keeps_the_comment_block_above_it() -> None:
    block = copy_of("_CONSTANTS")
    assert block.startswith("# Index patterns, copy tensors and fused constants")
    assert "_CONSTANTS = {}  # key -> tensor, the least recently used first\n" in block


def test_an_unknown_helper_is_named() -> None:
    with pytest.raises(ValueError, match="no runtime helper _nope"):
        helper_source({"_conv_pattern", "_nope"})


def test_a_wrapped_header_is_rebuilt_on_one_line_with_its_comment() -> None:
    source = (
        "def f(\n"
        "    a: int, b: dict[str, int],\n"
        ") -> int:  # the comment stays: é\n"
        '    """é"""\n'
        "    def g(x: str = 'é') -> str:  # é\n"
        "        return x\n"
        "    c: list[int] = [a]  # é\n"
        "    return c[0]\n"
    )
    tree = ast.parse(source)
    with pytest.raises(ValueError, match=r"line 5: g\(\) may take only plain positional parameters"):
        runtime._without_hints(source.splitlines(), tree)
    source = source.replace(" = 'é'", "")
    lines = runtime._without_hints(source.splitlines(), ast.parse(source))
    assert [line for line in lines if line is not None] == [
        "def f(a, b):  # the comment stays: é",
        '    """é"""',
        "    def g(x):  # é",
        "        return x",
        "    c = [a]  # é",
        "    return c[0]",
    ]


# -- the helpers called directly -------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an empty constants cache: the module's is global."""
    monkeypatch.setattr(helpers, "_CONSTANTS", {})


@pytest.mark.parametrize(
    ("size", "K", "stride", "pad_left", "dilation"), [(7, 3, 1, 1, 1), (9, 3, 2, 0, 2), (5, 2, 3, 2, 1)]
)
def test_conv_pattern_matches_its_definition(size: int, K: int, stride: int, pad_left: int, dilation: int) -> None:
    """Pi[i, o, k] = 1 iff i = o*stride + k*dilation - pad_left, entry by entry (padding on both sides)."""
    out = (size + 2 * pad_left - dilation * (K - 1) - 1) // stride + 1
    expected = torch.zeros(size, out, K, dtype=FLOAT64)
    for i, o, k in itertools.product(range(size), range(out), range(K)):
        expected[i, o, k] = float(i == o * stride + k * dilation - pad_left)
    pattern = helpers._conv_pattern(size, out, K, stride, pad_left, dilation, CPU, FLOAT64)
    assert pattern.dtype == FLOAT64 and torch.equal(pattern, expected)
    assert helpers._conv_pattern(size, out, K, stride, pad_left, dilation, CPU, FLOAT64) is pattern  # cached


def test_check_arguments_accepts_matching_tensors() -> None:
    x, w = torch.zeros(2, 3, dtype=FLOAT64), torch.zeros(3, dtype=FLOAT64)
    helpers._check_arguments("y", (("x", x, ("n", "c")), ("w", w, ("c",))))


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ([[1.0, 2.0]], TypeError, "argument 'x' must be a torch.Tensor, got list"),
        (torch.zeros(2, 2, dtype=FLOAT64).to_sparse(), TypeError, "must be a dense \\(strided\\) tensor"),
        (torch.zeros(2, dtype=FLOAT64), ValueError, "must have 2 axes \\[n, c\\], got shape \\(2,\\)"),
        (torch.zeros(2, 2, dtype=torch.int64), ValueError, "must have a real floating dtype"),
        (torch.zeros(2, 2, dtype=torch.complex128), ValueError, "complex arguments are not supported"),
        (torch.zeros(2, 2, dtype=torch.float32), ValueError, "argument 'x' has dtype torch.float32, but 'w' has"),
    ],
)
def test_check_arguments_names_the_argument_at_fault(value: object, error: type[Exception], message: str) -> None:
    w = torch.zeros(3, dtype=FLOAT64)
    with pytest.raises(error, match=f"^y\\(\\): .*{message}"):
        helpers._check_arguments("y", (("w", w, ("c",)), ("x", value, ("n", "c"))))

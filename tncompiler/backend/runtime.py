"""Which runtime helpers a generated module may carry, what each needs, and their source text: copied from
`helpers.py` (a real module, linted and type-checked) so that a module carries only the helpers it uses. The copies
leave the type hints out, as the rest of the generated code has none; everything else, comments included, is copied
as written. Reading the source here, rather than importing the module, keeps torch out of the compiler."""

from __future__ import annotations

import ast
import functools
import importlib.resources

__all__ = ["HELPERS", "helper_source"]

# The helpers, in the order a module carries them.
HELPERS = (
    "_CONSTANTS",
    "_conv_pattern",
    "_delta",
    "_select",
    "_keep",
    "_choose",
    "_keep_probability",
    "_keep_count",
    "_window_sum",
    "_take",
    "_pad",
    "_cached",
    "_check_arguments",
    "_check_size",
    "_check_shapes",
    "_nonzero",
    "_bind_size",
    "_size_keyword",
    "_out_size",
    "_in_size",
    "_check_out_size",
    "_device_keyword",
    "_dtype_keyword",
    "_generator_keyword",
)
# The consecutive definitions in helpers.py a helper copies, where not just its own (with the comments right above).
_PARTS = {"_CONSTANTS": ("_CONSTANTS", "_CONSTANTS_LIMIT", "_constant")}  # the cache and the function that fills it
_NEEDS = {
    "_conv_pattern": ("_CONSTANTS",),
    "_delta": ("_CONSTANTS",),
    "_select": ("_CONSTANTS",),
    "_cached": ("_CONSTANTS",),
}
_SOURCE = "tncompiler/backend/helpers.py"  # for messages


def _closure(used: set[str]) -> set[str]:
    """The used helpers and every helper they need."""
    closure, todo = set(used), list(used)
    while todo:
        for needed in _NEEDS.get(todo.pop(), ()):
            if needed not in closure:
                closure.add(needed)
                todo.append(needed)
    return closure


def helper_source(used: set[str]) -> list[str]:
    """Source blocks of the used helpers and what they need, in a fixed order."""
    unknown = used - set(HELPERS)
    if unknown:
        raise ValueError(f"no runtime helper {', '.join(sorted(unknown))}: {_SOURCE} has {', '.join(HELPERS)}")
    closure = _closure(used)
    blocks = _blocks()
    return [blocks[name] for name in HELPERS if name in closure]


@functools.cache
def _blocks() -> dict[str, str]:
    """Each helper's source text, hints left out."""
    source = importlib.resources.files("tncompiler.backend").joinpath("helpers.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    # ast counts lines at "\n" only (read_text made every line end one), where splitlines() also splits at "\f" etc.
    lines = _without_hints(source.split("\n"), tree)
    where = {name: position for position, node in enumerate(tree.body) for name in _defined(node)}
    return {name: _block(lines, tree, where, _PARTS.get(name, (name,))) for name in HELPERS}


def _defined(node: ast.stmt) -> tuple[str, ...]:
    """The name a top-level statement defines, if it is a function or an assignment to one name."""
    if isinstance(node, ast.FunctionDef):
        return (node.name,)
    targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
    return (targets[0].id,) if len(targets) == 1 and isinstance(targets[0], ast.Name) else ()


def _block(lines: list[str | None], tree: ast.Module, where: dict[str, int], parts: tuple[str, ...]) -> str:
    """The text of consecutive top-level definitions and of the comment lines right above the first."""
    missing = [part for part in parts if part not in where]
    if missing:
        raise LookupError(f"{_SOURCE} defines no {', '.join(missing)}, which runtime.py copies")
    positions = [where[part] for part in parts]
    if positions != list(range(positions[0], positions[0] + len(parts))):
        raise LookupError(f"{_SOURCE}: {', '.join(parts)} must follow one another, as they are copied together")
    start, end = tree.body[positions[0]].lineno, tree.body[positions[-1]].end_lineno or 0
    while start > 1 and (lines[start - 2] or "").startswith("#"):
        start -= 1
    return "\n".join(line for line in lines[start - 1 : end] if line is not None)


def _without_hints(lines: list[str], tree: ast.Module) -> list[str | None]:
    """The source lines with the type hints left out: each def's header on one line as `def name(a, b):` (lines it
    no longer needs become None) and `name: hint = value` as `name = value`."""
    edited: list[str | None] = list(lines)
    for node in ast.walk(tree):
        if isinstance(node, ast.AsyncFunctionDef):
            raise ValueError(f"{_SOURCE} line {node.lineno}: async def {node.name}() cannot be copied without hints")
        if isinstance(node, ast.FunctionDef):
            header = _header(lines, node)
            edited[node.lineno - 1 : node.lineno - 1 + len(header)] = header
        elif isinstance(node, ast.AnnAssign):
            edited[node.lineno - 1] = _assignment(lines[node.lineno - 1], node)
    return edited


def _header(lines: list[str], node: ast.FunctionDef) -> list[str | None]:
    """The def's header on one line without hints, then None for each further line the header spanned."""
    arguments = node.args
    if (
        node.decorator_list
        or arguments.posonlyargs
        or arguments.vararg
        or arguments.kwonlyargs
        or arguments.kwarg
        or arguments.defaults
    ):
        raise ValueError(
            f"{_SOURCE} line {node.lineno}: {node.name}() may take only plain positional parameters (no defaults, "
            "* or ** parameters, or decorators): its copy rebuilds the header from their names"
        )
    # The header ends with the return hint, which every helper has (mypy --strict); then come ":" and any comment.
    hint = node.returns
    if hint is None or hint.end_lineno is None or hint.end_col_offset is None:
        raise ValueError(f"{_SOURCE} line {node.lineno}: {node.name}() needs a return hint, where its header ends")
    last = lines[hint.end_lineno - 1].encode()  # ast columns count UTF-8 bytes
    signature = lines[node.lineno - 1 : hint.end_lineno - 1] + [last[: hint.end_col_offset].decode()]
    if any("#" in line for line in signature):
        raise ValueError(f"{_SOURCE} line {node.lineno}: a comment inside {node.name}()'s header would be lost")
    indent = signature[0][: len(signature[0]) - len(signature[0].lstrip())]
    names = ", ".join(argument.arg for argument in arguments.args)
    return [f"{indent}def {node.name}({names}){last[hint.end_col_offset :].decode()}"] + [None] * (len(signature) - 1)


def _assignment(line: str, node: ast.AnnAssign) -> str:
    """`name: hint = value` as `name = value` (ast columns count UTF-8 bytes)."""
    hint = node.annotation
    if node.value is None or hint.end_col_offset is None or hint.end_lineno != node.target.lineno:
        raise ValueError(f"{_SOURCE} line {node.lineno}: only `name: hint = value` on one line can lose its hint")
    encoded = line.encode()
    return (encoded[: node.target.end_col_offset] + encoded[hint.end_col_offset :]).decode()

"""The generated module as text: a docstring, `import torch`, `__all__`, the runtime helpers its functions use,
then each function (after the plan choosers it calls) and each autograd class."""

from __future__ import annotations

from pathlib import PurePath

from tncompiler.backend.printer import definition_text
from tncompiler.backend.runtime import helper_source
from tncompiler.backend.text import comment_text, docstring_text
from tncompiler.schedule.ops import ClassDef, Function

__all__ = ["module_text"]


def module_text(filename: str, functions: tuple[Function, ...], classes: tuple[ClassDef, ...]) -> str:
    """The module's source: byte-for-byte the same for the same schedule."""
    names = [f.name for f in functions]
    exported = [name for name in names if not name.startswith("_")] + [cls.name for cls in classes]
    head = [
        f'"""Tensor-network functions compiled by tnc from {docstring_text(comment_text(PurePath(filename).name))}: '
        f"{comment_text(', '.join(names))}.",
        "",
        'Generated code: edit the .tnd file and recompile."""',
        "",
    ]
    choosers = any(f.choosers for f in functions)
    imports = ["import functools", ""] if choosers else []
    imports += ["import torch", "", f"__all__ = [{', '.join(repr(n) for n in exported)}]"]
    helpers = set().union(*(f.helpers for f in functions)) if functions else set()
    definitions = [d for function in functions for d in (*function.choosers, function)] + list(classes)
    blocks = [definition_text(d) for d in definitions]
    parts = ["\n".join(head + imports)] + helper_source(helpers) + blocks
    return "\n\n\n".join(part.rstrip("\n") for part in parts) + "\n"

"""Generated modules as Python modules: one naming scheme for `load`, `load_source` and `compile_layer`.

Each module gets a unique, stable name (`tnc_<stem>_<hash of what built it>`) and is registered in `sys.modules` before
its code runs, so TorchDynamo can resolve its functions' globals and pickle can find its classes by name. A module
copies as itself (its code never changes) and pickles as the recipe that builds it again, so a model that holds one
survives `copy.deepcopy`, `pickle` and `torch.save`/`torch.load`.
"""

from __future__ import annotations

import hashlib
import re
import sys
import types
from collections.abc import Callable
from typing import Any

__all__ = ["GeneratedModule", "NAME_LENGTH", "identifier", "module_name", "make_module"]

NAME_LENGTH = 40  # of a stem in a module or cache file name

Recipe = tuple[Callable[..., types.ModuleType], tuple[Any, ...]]


class GeneratedModule(types.ModuleType):
    """A module of generated code; `__tnc_recipe__` is the call that builds it again (in another process too)."""

    __tnc_recipe__: Recipe

    def __reduce__(self) -> Recipe:
        return self.__tnc_recipe__

    def __copy__(self) -> GeneratedModule:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> GeneratedModule:
        return self


def module_name(stem: str, *parts: str) -> str:
    """`tnc_<stem>_<12 hex digits>`: the stem reduced to an identifier, the digits a hash of `parts` (the text and
    options that made the code), so equal inputs share a name and different ones never do."""
    digest = hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"tnc_{identifier(stem)}_{digest}"


def identifier(stem: str) -> str:
    """`stem` as a name no file system or import can misread: only [A-Za-z0-9_], at most NAME_LENGTH characters,
    never empty."""
    return re.sub(r"\W", "_", stem, flags=re.ASCII)[:NAME_LENGTH].strip("_") or "module"


def make_module(
    code: str, name: str, filename: str, recipe: Recipe, kind: type[GeneratedModule] = GeneratedModule
) -> GeneratedModule:
    """Run generated `code` as module `name`, registered in `sys.modules` first (its classes then carry a name that
    resolves) and left there while the process lives, as an imported module is. Equal code has an equal name: the
    latest module made of it answers to the name (its functions are the same as the earlier one's)."""
    module = kind(name)
    module.__file__ = filename
    module.__tnc_recipe__ = recipe
    sys.modules[name] = module
    try:
        exec(compile(code, filename, "exec"), module.__dict__)  # the compiler's own output, never user text
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module

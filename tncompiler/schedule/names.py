"""Safe, deterministic Python names for generated code: the module's names, decided in one place before any code
is written, and each function's parameters and locals."""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Mapping
from dataclasses import dataclass

from tncompiler.errors import Span, TncError
from tncompiler.ir.network import Diagram, Program

__all__ = [
    "Namespace",
    "ModuleNames",
    "check_keywords",
    "module_names",
    "sampler_keywords",
    "sampling_keywords",
    "safe_identifier",
]

_RESERVED = (
    frozenset(keyword.kwlist)
    | frozenset(keyword.softkwlist)
    | frozenset(dir(builtins))
    | {"torch", "functools", "math"}
)


def safe_identifier(text: str) -> str:
    """A valid identifier close to `text` that shadows no keyword, builtin or module the code imports."""
    name = re.sub(r"\W", "_", text, flags=re.ASCII) or "_"
    if name[0].isdigit():
        name = "_" + name
    return name + "_" if name in _RESERVED else name


def sampler_keywords(diagram: Diagram) -> dict[str, str]:
    """Sampled index -> the keyword argument that sets its keep-probability (`p`) or its count (`count`); a function
    that samples several indices names them after the index (`p_n`, `count_o1`)."""
    kinds = {s.index: "p" if s.count is None else "count" for s in diagram.samplers}
    if len(kinds) == 1:
        return kinds
    return {index: safe_identifier(f"{kind}_{index}") for index, kind in kinds.items()}


def sampling_keywords(diagram: Diagram) -> tuple[str, ...]:
    """The keyword-only arguments a function takes besides its sizes: a sampled one, its keep-probabilities (or
    counts) and its random generator."""
    return (*sampler_keywords(diagram).values(), "generator") if diagram.samplers else ()


@dataclass(frozen=True)
class ModuleNames:
    """Every module-level name of a generated module, decided before any code is written: the definitions keep
    their own names, the autograd classes and private functions get names that cannot meet them."""

    functions: Mapping[str, str]  # diagram name -> function name
    classes: Mapping[str, str]  # definition with an autograd class -> class name

    def taken(self) -> set[str]:
        return set(self.functions.values()) | set(self.classes.values())


def module_names(program: Program) -> ModuleNames:
    """The module's names. The compiler's own names are reserved first (Python's names, the autograd classes; the
    helpers and private functions start with `_`, which no name in a file can); then each definition is placed
    under its own name, or the compile fails where it is defined."""
    classes = {spec.definition: f"{spec.definition}_sampled_autograd" for spec in program.autograd}
    owners = {name: f"the autograd class tnc generates for {definition!r}" for definition, name in classes.items()}
    functions: dict[str, str] = {}
    for diagram in program.diagrams:
        name = diagram.name
        if name.startswith("_"):  # the compiler's own private derivatives: made unique in resolve
            functions[name] = name
            continue
        why = _unusable(name) or owners.get(name)
        if why is not None:
            where = diagram.span and Span(diagram.span.line, diagram.span.column, diagram.span.line,
                                          diagram.span.column + len(name))  # fmt: skip
            raise TncError(
                f"{name!r} cannot name a function of the generated module: it is {why}",
                where,
                f"rename the definition (e.g. {name}_1)",
            )
        functions[name] = name
    return ModuleNames(functions, classes)


def check_keywords(diagram: Diagram, keywords: tuple[str, ...]) -> None:
    """A function's keyword arguments keep their names (sizes are named after their indices), so each must be a name
    Python takes, and they must differ from each other."""
    for position, name in enumerate(keywords):
        if _unusable(name) is not None or name in keywords[:position]:
            raise TncError(
                f"{diagram.name!r} takes the size of index {name!r} as a keyword argument, but {name!r} cannot be "
                "one (a Python keyword or builtin, or another keyword of the function)",
                diagram.span,
                f"rename the index {name!r}, or give it a size in the file",
            )


def _unusable(name: str) -> str | None:
    if keyword.iskeyword(name) or keyword.issoftkeyword(name):
        return "a Python keyword"
    if name in dir(builtins):
        return "a Python builtin, which the generated code uses"
    if name in ("torch", "functools", "math"):
        return "a module the generated code imports"
    return None


class Namespace:
    """Hands out unique names: the first request for a candidate gets it, later ones get `candidate_2`, ..."""

    def __init__(self, taken: frozenset[str] | set[str] = frozenset(), shadowable: frozenset[str] = frozenset()):
        self._taken = set(taken) | set(shadowable)
        self._shadowable = set(shadowable)

    def reserve(self, name: str) -> bool:
        """Take `name` as it is (a keyword argument, which may shadow a module-level name: bodies call none);
        False where it is not a safe identifier or is taken already."""
        if safe_identifier(name) != name or name in self._taken - self._shadowable:
            return False
        self._taken.add(name)
        self._shadowable.discard(name)
        return True

    def create(self, candidate: str) -> str:
        base = safe_identifier(candidate)
        name, counter = base, 1
        while name in self._taken:
            counter += 1
            name = f"{base}_{counter}"
        self._taken.add(name)
        return name

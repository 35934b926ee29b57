"""The one driver: the stages in order, each run once per compile, their results kept for every command.

    parse → resolve → derive (the front end: `api.build_program`) → optimise (simplify, fuse, lower) →
    bind (call-time sizes) → schedule (every decision, as typed ops; peephole) → guard → print

The memory guard reads the scheduled ops (what each allocates), so every command that guards schedules: `tnc check`
and `tnc dot` stop after the guard, `tnc explain` too (it prints the ops); `tnc compile` prints the code.
`STAGE_RUNS` counts the runs of each stage (a test checks that each runs once per compile)."""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

from tncompiler.backend.module import module_text
from tncompiler.binding import Binding, plan_binding
from tncompiler.errors import TncError
from tncompiler.guard import check_memory, default_limit
from tncompiler.ir.network import Diagram, Program
from tncompiler.passes.pipeline import Stage, run_pipeline
from tncompiler.schedule.autograd import autograd_class
from tncompiler.schedule.build import schedule_function
from tncompiler.schedule.names import ModuleNames, check_keywords, module_names, sampling_keywords
from tncompiler.schedule.ops import ClassDef, Function
from tncompiler.schedule.peephole import tidy

__all__ = ["Compilation", "STAGE_RUNS"]

STAGE_RUNS: Counter[str] = Counter()
T = TypeVar("T")


def _located(stage: Callable[[Compilation], T]) -> Callable[[Compilation], T]:
    """A stage whose errors point into the compilation's source (and a nesting too deep for Python, reported)."""

    @functools.wraps(stage)
    def run(self: Compilation) -> T:
        try:
            return stage(self)
        except TncError as error:
            raise error.located(self.program.filename, self.source) from None
        except RecursionError:
            deep = TncError("the file is nested too deeply to compile", hint="split deep expressions into several")
            raise deep.located(self.program.filename, self.source) from None

    return run


@dataclass(frozen=True, eq=False)
class Compilation:
    """A program on its way to code: each stage computed at most once, when a command first needs it."""

    program: Program
    source: str = ""
    rewrite: bool = True
    max_memory: int | None = None

    @cached_property
    @_located
    def names(self) -> ModuleNames:
        STAGE_RUNS["names"] += 1
        return module_names(self.program)

    @_located
    def check(self) -> None:
        """Everything but code: the names, the call-time sizes, and the keyword arguments they make."""
        _ = self.names
        for diagram in self.program.diagrams:
            keywords = tuple(str(s) for s in self.bindings[diagram.name].keywords) + sampling_keywords(diagram)
            check_keywords(diagram, keywords)

    @cached_property
    @_located
    def bindings(self) -> Mapping[str, Binding]:
        """Each diagram's call-time sizes, from the diagram as built (so the signature does not depend on rewrites)."""
        STAGE_RUNS["bind"] += 1
        rules, order = self.program.size_rules, list(self.program.sizes)
        return {d.name: plan_binding(d, rules, order) for d in self.program.diagrams}

    @cached_property
    @_located
    def stages(self) -> Mapping[str, tuple[Stage, ...]]:
        """Each diagram as built and after each pass."""
        STAGE_RUNS["optimise"] += 1
        return {d.name: tuple(run_pipeline(d, self.rewrite)) for d in self.program.diagrams}

    def optimised(self, diagram: Diagram) -> Diagram:
        return self.stages[diagram.name][-1].diagram

    def rewrites(self, diagram: Diagram) -> tuple[str, ...]:
        return tuple(change for stage in self.stages[diagram.name] for change in stage.changes)

    @cached_property
    @_located
    def functions(self) -> tuple[Function, ...]:
        """Every function's ops after the peephole rules, once the memory guard has read them (it refuses a diagram
        whose ops allocate more than the limit, before any code is printed)."""
        self.check()
        STAGE_RUNS["schedule"] += 1
        functions = tuple(
            tidy(
                schedule_function(
                    self.program, d, self.optimised(d), self.bindings[d.name], self.names, self.rewrites(d)
                )
            )
            for d in self.program.diagrams
        )
        STAGE_RUNS["guard"] += 1
        limit = default_limit() if self.max_memory is None else self.max_memory
        for diagram, function in zip(self.program.diagrams, functions, strict=True):
            check_memory(self.optimised(diagram), function, limit)
        return functions

    def guard(self) -> None:
        """The memory guard, for commands that print no code (`tnc check`, `tnc dot`): it reads the scheduled ops,
        so it schedules the file (once: `functions` keeps them)."""
        _ = self.functions

    @cached_property
    @_located
    def classes(self) -> tuple[ClassDef, ...]:
        keywords = {name: binding.keywords for name, binding in self.bindings.items()}
        return tuple(autograd_class(spec, self.program, self.names, keywords) for spec in self.program.autograd)

    @cached_property
    @_located
    def text(self) -> str:
        """The generated module."""
        functions, classes = self.functions, self.classes
        STAGE_RUNS["print"] += 1
        return module_text(self.program.filename, functions, classes)

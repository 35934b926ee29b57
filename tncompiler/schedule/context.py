"""What the schedule of one function knows while it is made: its names, its call-time sizes, the ops so far."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sympy

from tncompiler.binding import Binding
from tncompiler.cost import Regimes, expected_sizes
from tncompiler.ir.network import Diagram
from tncompiler.schedule.names import Namespace, check_keywords, sampler_keywords, sampling_keywords
from tncompiler.schedule.ops import Assign, Entries, Expr, Name, Op, OpKind, SizeOf

__all__ = ["Context"]


class Context:
    """The function being scheduled: its parameters (keyword ones keep their names; positional ones give way where
    they meet one, e.g. an input named `generator`), the variables of its call-time sizes, and its ops."""

    def __init__(self, diagram: Diagram, binding: Binding, name: str, module: set[str]) -> None:
        self.diagram, self.binding, self.name = diagram, binding, name
        self.regimes = Regimes(diagram.size_rules)
        self.expected = expected_sizes(diagram.samplers)
        self.namespace = Namespace(
            {"functools", "device", "dtype"}, frozenset(module)
        )  # locals every function may have
        keywords = tuple(str(s) for s in binding.keywords) + sampling_keywords(diagram)
        check_keywords(diagram, keywords)
        for keyword in keywords:
            self.namespace.reserve(keyword)
        self.symbols: dict[sympy.Symbol, str] = {s: str(s) for s in binding.keywords}
        self.args = {a.name: self.namespace.create(a.name) for a in diagram.arguments}
        self.where: dict[sympy.Symbol, str] = {}  # how each call-time size was given, for messages
        self.helpers: set[str] = set()
        self.samplers: dict[str, str] = {}  # sampled index -> the variable of its kept entries (arguments' device)
        self.drawn: dict[str, str] = {}  # sampled index -> the same entries where they were drawn (host)
        self.fixed: set[str] = set()  # sampled indices that keep a fixed number of entries (count=): never none
        self.rates = sampler_keywords(diagram)  # sampled index -> its keyword argument (p or count)
        self.shared: dict[str, str] = {}  # shared sub-network -> the variable that holds it
        self.ops: list[Op] = []

    def var(self, candidate: str) -> str:
        return self.namespace.create(candidate)

    def helper(self, name: str) -> str:
        """A runtime helper the module must carry."""
        self.helpers.add(name)
        return name

    def emit(self, op: Op) -> None:
        self.ops.append(op)

    def assign(
        self, candidate: str, value: Expr, kind: OpKind, note: str = "", fresh: bool = False, entries: Entries = None
    ) -> Name:
        """A new variable holding `value` (`entries`: of the new storage it makes, where it copies)."""
        target = self.var(candidate)
        self.emit(Assign(target, value, kind, note, fresh, entries=entries))
        return Name(target)

    def size(self, size: sympy.Expr | int) -> SizeOf:
        return SizeOf(size)

    @contextmanager
    def block(self) -> Iterator[list[Op]]:
        """Collect the ops emitted inside into a list of their own (a branch's body)."""
        outer, self.ops = self.ops, []
        try:
            yield self.ops
        finally:
            self.ops = outer

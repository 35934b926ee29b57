"""Call-time sizes: how a generated function learns each size the file leaves open, and what it checks.

A size is bound from the first argument axis that holds it alone (times sizes known by then: `(g c)` with g given
binds c as the axis size over g), derived from a pattern's size rule (O from I), solved from one (I from O, stride
1 only), or, where nothing gives it, taken from a keyword-only argument named after the index. Every argument axis
that bound nothing is checked, and so is every size rule whose two sides are both known. The plan is made once, at
compile time, from the diagram as built, so the signature does not depend on the rewrites.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import sympy

from tncompiler.ir.network import Argument, Diagram, natural_shape
from tncompiler.ir.values import Fused, Size, SizeRule, SplitOp, WindowOp, is_sampling_symbol

__all__ = [
    "AxisSize",
    "KeywordSize",
    "DerivedSize",
    "SolvedSize",
    "CheckAxis",
    "CheckRule",
    "BindStep",
    "Binding",
    "plan_binding",
    "axis_size",
    "diagram_symbols",
]


@dataclass(frozen=True)
class AxisSize:
    """`symbol` = argument.shape[axis] // known (a ValueError where it does not divide)."""

    symbol: sympy.Symbol
    argument: str
    axis: int
    known: Size


@dataclass(frozen=True)
class KeywordSize:
    """`symbol` is a keyword-only argument of the function, named after its index."""

    symbol: sympy.Symbol


@dataclass(frozen=True)
class DerivedSize:
    """`symbol`, a pattern's output size, from its input size by the rule (a ValueError if no window fits)."""

    symbol: sympy.Symbol
    rule: SizeRule


@dataclass(frozen=True)
class SolvedSize:
    """`symbol`, a pattern's input size, from its output size by the rule (stride 1: I = O − 1 + extent − P)."""

    symbol: sympy.Symbol
    rule: SizeRule


@dataclass(frozen=True)
class CheckAxis:
    """argument.shape[axis] == expected."""

    argument: str
    axis: int
    expected: Size


@dataclass(frozen=True)
class CheckRule:
    """The rule's output size is what its input size gives."""

    rule: SizeRule


BindStep = AxisSize | KeywordSize | DerivedSize | SolvedSize | CheckAxis | CheckRule


@dataclass(frozen=True)
class Binding:
    """The steps in order, and the keyword-only size arguments (in the file's order of indices)."""

    steps: tuple[BindStep, ...]
    keywords: tuple[sympy.Symbol, ...]


def axis_size(diagram: Diagram, argument: Argument, axis: int) -> sympy.Expr:
    return sympy.Mul(*[sympy.sympify(diagram.sizes[leg]) for leg in argument.layout.axes[axis]])


def _symbols(sizes: Iterable[Size | sympy.Expr]) -> set[sympy.Symbol]:
    found: set[sympy.Symbol] = set()
    for size in sizes:
        if isinstance(size, sympy.Expr):
            found |= {s for s in size.free_symbols if not is_sampling_symbol(s)}
    return found


def diagram_symbols(diagram: Diagram) -> set[sympy.Symbol]:
    """Every call-time size the diagram's code may need: of its result, arguments, indices, scalars and constants."""
    sizes: list[Size | sympy.Expr] = [diagram.sizes[leg] for leg in diagram.layout.legs]
    sizes += [axis_size(diagram, a, k) for a in diagram.arguments for k in range(len(a.layout.axes))]
    for term in diagram.networks():
        sizes += list(term.sizes.values()) + [term.coefficient]
        for factor in term.factors:
            sizes += list(natural_shape(factor) or ())
            sizes += list(factor.view.base if factor.view else ())
            for op in factor.view.ops if factor.view else ():
                sizes += list(op.sizes) if isinstance(op, SplitOp) else []
                sizes += [op.pattern.in_size, op.pattern.out_size] if isinstance(op, WindowOp) else []
            if isinstance(factor.pattern, Fused):
                sizes += [size for part in factor.pattern.parts for size in natural_shape(part) or ()]
    sizes += [s.size for s in diagram.samplers]
    return _symbols(sizes)


def plan_binding(diagram: Diagram, rules: Sequence[SizeRule], order: Sequence[str]) -> Binding:
    """The binding steps of a diagram's function; `order` lists the file's indices, to order the keywords."""
    return _Planner(diagram, rules, order).plan()


class _Planner:
    def __init__(self, diagram: Diagram, rules: Sequence[SizeRule], order: Sequence[str]) -> None:
        self.diagram = diagram
        self.needed = diagram_symbols(diagram)
        self.rules = [r for r in rules if _symbols([r.conv.in_size, r.conv.out_size]) & self.needed]
        self.rank = {name: position for position, name in enumerate(order)}
        self.axes = [(a, k) for a in diagram.arguments for k in range(len(a.layout.axes))]
        self.bound: set[sympy.Symbol] = set()
        self.steps: list[BindStep] = []
        self.used_axes: set[tuple[str, int]] = set()
        self.used_rules: set[int] = set()

    def plan(self) -> Binding:
        keywords = []
        while True:
            self._settle()
            missing = self.needed - self.bound
            if not missing:
                break
            if self._need_rule_inputs(missing):
                continue
            symbol = min(missing, key=self._priority)
            self.steps.append(KeywordSize(symbol))
            self.bound.add(symbol)
            keywords.append(symbol)
        checks: list[BindStep] = [
            CheckAxis(a.name, k, axis_size(self.diagram, a, k))
            for a, k in self.axes
            if (a.name, k) not in self.used_axes
        ]
        checks += [
            CheckRule(rule)
            for position, rule in enumerate(self.rules)
            if position not in self.used_rules and _symbols([rule.conv.in_size, rule.conv.out_size]) <= self.bound
        ]
        return Binding(tuple(self.steps + checks), tuple(sorted(keywords, key=self._priority)))

    def _priority(self, symbol: sympy.Symbol) -> tuple[bool, int, str]:
        """Keywords for the sizes that no rule derives come first (an input size, not the output it gives)."""
        derived = any(rule.conv.out_size == symbol for rule in self.rules)
        return derived, self.rank.get(str(symbol), len(self.rank)), str(symbol)

    def _settle(self) -> None:
        progress = True
        while progress:
            progress = self._from_axes() or self._from_rules()

    def _from_axes(self) -> bool:
        for argument, axis in self.axes:
            if (argument.name, axis) in self.used_axes:
                continue
            expr = axis_size(self.diagram, argument, axis)
            unbound = _symbols([expr]) - self.bound
            if len(unbound) != 1:
                continue
            (symbol,) = unbound
            known = sympy.simplify(expr / symbol)
            if symbol in known.free_symbols or not _symbols([known]) <= self.bound:
                continue
            self.steps.append(AxisSize(symbol, argument.name, axis, _int_or(known)))
            self.bound.add(symbol)
            self.used_axes.add((argument.name, axis))
            return True
        return False

    def _from_rules(self) -> bool:
        for position, rule in enumerate(self.rules):
            if position in self.used_rules:
                continue
            i, o = rule.conv.in_size, rule.conv.out_size
            if _open(o, self.bound, self.needed) and _symbols([i]) <= self.bound:
                assert isinstance(o, sympy.Symbol)
                self.steps.append(DerivedSize(o, rule))
            elif rule.conv.stride == 1 and _open(i, self.bound, self.needed) and _symbols([o]) <= self.bound:
                assert isinstance(i, sympy.Symbol)
                self.steps.append(SolvedSize(i, rule))
            else:
                continue
            self.bound |= _symbols([i, o])
            self.used_rules.add(position)
            return True
        return False

    def _need_rule_inputs(self, missing: set[sympy.Symbol]) -> bool:
        """A missing output size that a rule derives makes the rule's input size needed too."""
        grown = False
        for rule in self.rules:
            inputs = _symbols([rule.conv.in_size]) - self.needed
            if rule.conv.out_size in missing and inputs:
                self.needed |= inputs
                grown = True
        return grown


def _open(size: Size, bound: set[sympy.Symbol], needed: set[sympy.Symbol]) -> bool:
    return isinstance(size, sympy.Symbol) and size not in bound and size in needed


def _int_or(size: sympy.Expr) -> Size:
    return int(size) if size.is_Integer else size

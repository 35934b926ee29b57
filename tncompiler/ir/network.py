"""The network: one product of tensors over a networkx graph, and the diagram that sums such products."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import networkx as nx
import sympy

from tncompiler.errors import Span
from tncompiler.ir.values import (
    FACTOR_KINDS,
    ConvPattern,
    Factor,
    Fused,
    Layout,
    NativeConv,
    Sampler,
    Select,
    Size,
    SizeRule,
    view_shape,
)

__all__ = [
    "Network",
    "Lowering",
    "Step",
    "Plan",
    "Argument",
    "Diagram",
    "Shared",
    "Program",
    "LintError",
    "tensor_node",
    "index_node",
    "natural_shape",
]


class LintError(Exception):
    """An IR invariant is broken; the message names the node at fault."""


def tensor_node(position: int) -> tuple[str, int]:
    return ("tensor", position)


def index_node(name: str) -> tuple[str, str]:
    return ("index", name)


@dataclass(frozen=True, order=True)
class Step:
    """Contract the operands with ids `operands` into a new operand with `legs` (id = number of earlier ids)."""

    operands: tuple[int, ...]
    legs: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """A contraction order (`order.plan_network`): pairwise steps in order, with each step's multiply-adds as a
    product of the sizes. Costs stay products (monomials in the call-time sizes): their sum is the plan's cost."""

    steps: tuple[Step, ...]
    costs: tuple[sympy.Expr, ...]

    @property
    def flops(self) -> sympy.Expr:
        return sympy.Add(*self.costs)


@dataclass(frozen=True)
class Lowering:
    """What the lower pass decides about a term: the native kernel that computes it (None: a contraction), the term
    as the file wrote it, before simplify (the kernel may rather take that one), and a contraction's plans (every
    distinct order over the size regimes, cheapest first), found once by lowering and read by the schedule."""

    native: NativeConv | None = None
    as_written: Network | None = None
    plans: tuple[Plan, ...] = ()


class Network:
    """`coefficient · Π factors`, with `outputs` the open legs and every other index summed.

    The graph is bipartite: tensor nodes `("tensor", k)` carry their `Factor`; index nodes `("index", name)`
    carry the `size`. An index joined to three or more tensors (a hyperedge) is just an index node of higher
    degree. Networks are immutable: passes build new ones.
    """

    def __init__(
        self,
        factors: Iterable[Factor],
        outputs: Iterable[str],
        sizes: Mapping[str, Size],
        coefficient: sympy.Expr | int = 1,
        lowering: Lowering | None = None,
    ) -> None:
        graph = nx.Graph()
        self._factors = tuple(factors)
        self._outputs = tuple(outputs)
        self.coefficient: sympy.Expr = sympy.sympify(coefficient)
        self.lowering = lowering or Lowering()
        for name in self._index_order():
            if name not in sizes:
                raise LintError(f"index {name!r} has no size")
            graph.add_node(index_node(name), size=sizes[name], output=name in self._outputs)
        for position, factor in enumerate(self._factors):
            graph.add_node(tensor_node(position), factor=factor)
            for axis, leg in enumerate(factor.legs):
                edge = graph.get_edge_data(tensor_node(position), index_node(leg))
                axes = (edge["axes"] if edge else ()) + (axis,)
                graph.add_edge(tensor_node(position), index_node(leg), axes=axes)
        self.graph = graph

    def _index_order(self) -> list[str]:
        seen: dict[str, None] = {}
        for factor in self._factors:
            seen.update(dict.fromkeys(factor.legs))
        seen.update(dict.fromkeys(self._outputs))
        return list(seen)

    @property
    def factors(self) -> tuple[Factor, ...]:
        return self._factors

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def indices(self) -> tuple[str, ...]:
        """Every index, in order of first appearance (factors first, then outputs)."""
        return tuple(node[1] for node in self.graph if node[0] == "index")

    def size(self, name: str) -> Size:
        size: Size = self.graph.nodes[index_node(name)]["size"]
        return size

    @property
    def sizes(self) -> dict[str, Size]:
        return {name: self.size(name) for name in self.indices}

    def summed(self) -> tuple[str, ...]:
        return tuple(name for name in self.indices if name not in self._outputs)

    def tensors_on(self, name: str) -> tuple[int, ...]:
        """Positions of the factors that carry index `name`."""
        return tuple(sorted(node[1] for node in self.graph.neighbors(index_node(name))))

    def replace(
        self,
        factors: Iterable[Factor] | None = None,
        outputs: Iterable[str] | None = None,
        coefficient: sympy.Expr | int | None = None,
        sizes: Mapping[str, Size] | None = None,
    ) -> Network:
        """A new network with some parts swapped; the lowering annotations are carried over."""
        return Network(
            self._factors if factors is None else factors,
            self._outputs if outputs is None else outputs,
            {**self.sizes, **(sizes or {})},
            self.coefficient if coefficient is None else coefficient,
            self.lowering,
        )

    def lint(self) -> None:
        """Check the invariants; raise `LintError` naming the node at fault."""
        if len(set(self._outputs)) != len(self._outputs):
            raise LintError(f"outputs repeat an index: {self._outputs}")
        for name in self.indices:
            _lint_size(name, self.size(name))
        for position, factor in enumerate(self._factors):
            _lint_factor(position, factor, self)

    def __repr__(self) -> str:
        body = " * ".join(f"{f.name or f.kind}[{', '.join(f.legs)}]" for f in self._factors) or "1"
        return f"Network({self.coefficient} * {body} -> [{', '.join(self._outputs)}])"


def _lint_size(name: str, size: Size) -> None:
    if isinstance(size, int):
        if size < 1:
            raise LintError(f"index {name!r} has size {size} < 1")
    elif not isinstance(size, sympy.Expr):
        raise LintError(f"index {name!r} has a size of type {type(size).__name__}")


def natural_shape(factor: Factor) -> tuple[Size, ...] | None:
    """The shape of a constant factor before its view (None for arguments: their shape comes from the call)."""
    if isinstance(factor.pattern, ConvPattern):
        return (factor.pattern.in_size, factor.pattern.out_size, factor.pattern.kernel_size)
    if isinstance(factor.pattern, Select):
        return (factor.pattern.in_size, factor.pattern.out_size)
    if isinstance(factor.pattern, Fused):
        sizes = dict(factor.pattern.sizes)
        return tuple(sizes[leg] for leg in factor.pattern.legs)
    return None


def _same(a: tuple[Size, ...], b: tuple[Size, ...]) -> bool:
    return len(a) == len(b) and all(sympy.simplify(sympy.sympify(x) - y) == 0 for x, y in zip(a, b))


def _lint_factor(position: int, factor: Factor, network: Network) -> None:
    where = f"tensor {position} ({factor.kind} {factor.name!r})"
    actual = tuple(network.size(leg) for leg in factor.legs)
    expected = {"pattern": ConvPattern, "select": Select, "fused": Fused}.get(factor.kind)
    if expected is not None and not isinstance(factor.pattern, expected):
        raise LintError(f"{where}: a {factor.kind} needs its parameters")
    if factor.kind not in FACTOR_KINDS:
        raise LintError(f"{where}: unknown kind")
    natural = natural_shape(factor)
    if factor.view is not None:
        if natural is not None and not _same(natural, factor.view.base):
            raise LintError(f"{where}: view base {factor.view.base} differs from the tensor's shape {natural}")
        natural = view_shape(factor.view)
    if factor.kind == "delta" and factor.view is None:
        natural = (actual[0],) * len(actual) if actual else ()
    if natural is not None and not _same(natural, actual):
        raise LintError(f"{where}: leg sizes {actual} differ from the tensor's shape {natural}")


@dataclass(frozen=True)
class Argument:
    """An argument of a generated function: its name and axis layout."""

    name: str
    layout: Layout
    span: Span | None = field(default=None, compare=False)


@dataclass(frozen=True, eq=False)
class Shared:
    """A sub-network that a term holds more than once (the two copies of J in the GGN diagonal J ⊙ J): computed
    once per call, then read by `shared` factors named `name`, whose legs stand for `network.outputs` in order."""

    name: str
    network: Network


@dataclass(frozen=True, eq=False)
class Diagram:
    """A named result: `layout` of the result, the sum of `terms`, and the arguments it takes, in order."""

    name: str
    layout: Layout
    terms: tuple[Network, ...]
    arguments: tuple[Argument, ...]
    sizes: Mapping[str, Size]
    span: Span | None = None
    source: str = ""
    size_rules: tuple[SizeRule, ...] = ()  # the file's rules that tie open sizes together (see SizeRule)
    samplers: tuple[Sampler, ...] = ()  # tensor dropout: the indices sampled at each call
    new_arguments: tuple[str, ...] = ()  # the arguments a derivation added (cotangents, tangents)
    vjp_of: tuple[str, str, str] | None = None  # a VJP: (of definition, with respect to, its cotangent)
    shared: tuple[Shared, ...] = ()  # sub-networks computed once, before the terms (passes/share.py)

    def networks(self) -> tuple[Network, ...]:
        """The shared sub-networks, then the terms: every network the diagram's code computes."""
        return tuple(shared.network for shared in self.shared) + self.terms

    def lint(self) -> None:
        legs = self.layout.legs
        if len(set(legs)) != len(legs):
            raise LintError(f"diagram {self.name!r}: result legs repeat an index: {legs}")
        names = {argument.name for argument in self.arguments}
        for position, term in enumerate(self.terms):
            term.lint()
            if not set(term.outputs) <= set(legs):
                raise LintError(f"diagram {self.name!r} term {position}: open legs {term.outputs} not in {legs}")
            unknown = {f.name for f in term.factors if f.kind == "input"} - names
            if unknown:
                raise LintError(f"diagram {self.name!r} term {position}: factors {sorted(unknown)} are no arguments")
            self._lint_shared(position, term)
        for shared in self.shared:
            shared.network.lint()

    def _lint_shared(self, position: int, term: Network) -> None:
        """Every shared factor reads a sub-network of the diagram, with the sizes of its outputs."""
        computed = {shared.name: shared.network for shared in self.shared}
        for factor in term.factors:
            if factor.kind != "shared":
                continue
            network = computed.get(factor.name)
            where = f"diagram {self.name!r} term {position}: shared factor {factor.name!r}"
            if network is None:
                raise LintError(f"{where} names no shared sub-network")
            sizes = tuple(network.size(leg) for leg in network.outputs)
            if not _same(sizes, tuple(term.size(leg) for leg in factor.legs)):
                raise LintError(f"{where}: leg sizes differ from the sub-network's {sizes}")

    def _repr_svg_(self) -> str:
        """In a notebook: the diagram drawn with Graphviz, or a line saying how to install it."""
        from tncompiler.dot import diagram_svg  # drawing builds on the IR, not the other way round

        return diagram_svg(self)


@dataclass(frozen=True)
class AutogradSpec:
    """A torch.autograd.Function for definition `definition`: exact forward, and for each of its arguments the
    diagram that computes its VJP (a sampled one where the file has one) with that VJP's cotangent name."""

    definition: str
    vjps: tuple[tuple[str, str, str], ...]  # (argument, VJP diagram, its cotangent argument)


@dataclass(frozen=True, eq=False)
class Program:
    """Everything a file defines: index sizes and the diagrams to generate, in file order, the autograd functions
    to generate for definitions that have sampled VJPs, and the patterns whose sizes are only known at call time."""

    filename: str
    sizes: Mapping[str, Size]
    diagrams: tuple[Diagram, ...]
    autograd: tuple[AutogradSpec, ...] = ()
    size_rules: tuple[SizeRule, ...] = ()

    def diagram(self, name: str) -> Diagram:
        for diagram in self.diagrams:
            if diagram.name == name:
                return diagram
        raise KeyError(name)

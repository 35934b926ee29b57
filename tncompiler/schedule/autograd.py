"""The autograd classes: for a definition with sampled VJPs, an exact forward pass and a backward pass through the
VJPs (sampled where the file has one, exact for the other arguments), as a schedule the printer writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sympy

from tncompiler.binding import axis_size
from tncompiler.errors import TncError
from tncompiler.ir.network import AutogradSpec, Diagram, Program
from tncompiler.schedule.names import ModuleNames, Namespace
from tncompiler.schedule.ops import Attr, BinOp, Expr, Index, Lit, Name

__all__ = ["AutogradClass", "Backward", "autograd_class"]


@dataclass(frozen=True)
class Backward:
    """The gradient of one argument: a call of `function` with these positional and keyword arguments."""

    result: str
    function: str
    args: tuple[Expr, ...]
    keywords: tuple[tuple[str, Expr], ...]


@dataclass(frozen=True)
class AutogradClass:
    name: str
    forward: str  # the definition's function
    params: tuple[str, ...]
    sizes: tuple[str, ...]  # the definition's keyword-only sizes: `apply` takes them after the generator
    grad: str  # the cotangent's name in backward
    sampled: tuple[str, ...]  # the sampled VJP functions, for the docstring
    backward: tuple[Backward, ...]


def autograd_class(
    spec: AutogradSpec,
    program: Program,
    module: ModuleNames,
    keywords: Mapping[str, tuple[sympy.Symbol, ...]],
) -> AutogradClass:
    """`y_sampled_autograd.apply(x, w, b, generator)`: y in the forward pass, its VJPs in the backward pass (a VJP
    that takes sizes as keywords gets them from the forward pass's arguments)."""
    y = program.diagram(spec.definition)
    names = module.functions
    sizes = tuple(str(symbol) for symbol in keywords.get(spec.definition, ()))
    local = Namespace({"ctx", "generator", *sizes} | module.taken())
    args = {a.name: local.create(a.name) for a in y.arguments}
    grad = local.create(f"grad_{spec.definition}")
    backward = []
    for argument, vjp, cotangent in spec.vjps:
        diagram = program.diagram(vjp)
        positional = tuple(Name(grad if a.name == cotangent else args[a.name]) for a in diagram.arguments)
        named = tuple((str(symbol), _size_of(y, symbol, args, sizes)) for symbol in keywords.get(vjp, ()))
        if diagram.samplers:
            named += (("generator", Attr(Name("ctx"), "generator")),)
        backward.append(Backward(local.create(f"grad_{argument}"), names[vjp], positional, named))
    sampled = tuple(names[v] for _, v, _ in spec.vjps if program.diagram(v).samplers)
    return AutogradClass(
        module.classes[spec.definition], names[spec.definition], tuple(args.values()), sizes, grad, sampled,
        tuple(backward),
    )  # fmt: skip


def _size_of(y: Diagram, symbol: sympy.Symbol, args: Mapping[str, str], sizes: tuple[str, ...]) -> Expr:
    """The expression that reads a call-time size off the forward pass's arguments (or its keyword sizes, saved)."""
    if str(symbol) in sizes:
        return Attr(Name("ctx"), str(symbol))
    for argument in y.arguments:
        for axis in range(len(argument.layout.axes)):
            known = sympy.simplify(axis_size(y, argument, axis) / symbol)
            if known.is_Integer:
                size: Expr = Index(Attr(Name(args[argument.name]), "shape"), (Lit(axis),))
                return size if known == 1 else BinOp("//", size, Lit(int(known)))
    raise TncError(f"the autograd class of {y.name!r} cannot read the size of index {symbol} off its arguments", y.span)

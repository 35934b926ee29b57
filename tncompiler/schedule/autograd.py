"""The autograd classes: for a definition with sampled VJPs, an exact forward pass and a backward pass through the
VJPs (sampled where the file has one, exact for the other arguments), as a schedule the printer writes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import sympy

from tncompiler.binding import axis_size
from tncompiler.errors import TncError
from tncompiler.ir.network import AutogradSpec, Diagram, Program
from tncompiler.schedule.names import ModuleNames, Namespace, sampler_keywords
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
    rates: tuple[tuple[str, Lit], ...]  # the sampled VJPs' p= or count= arguments, last, with their defaults
    grad: str  # the cotangent's name in backward
    sampled: tuple[str, ...]  # the sampled VJP functions, for the docstring
    backward: tuple[Backward, ...]


def autograd_class(
    spec: AutogradSpec,
    program: Program,
    module: ModuleNames,
    keywords: Mapping[str, tuple[sympy.Symbol, ...]],
) -> AutogradClass:
    """`y_sampled_autograd.apply(x, w, b, generator, p=...)`: y in the forward pass, its VJPs in the backward pass (a
    VJP that takes sizes as keywords gets them from the forward pass's arguments; a sampled one its p or count)."""
    y = program.diagram(spec.definition)
    names = module.functions
    sizes = tuple(str(symbol) for symbol in keywords.get(spec.definition, ()))
    local = Namespace({"ctx", "generator", *sizes} | module.taken())
    rates = _rates(spec, program, local)
    args = {a.name: local.create(a.name) for a in y.arguments}
    grad = local.create(f"grad_{spec.definition}")
    backward = []
    for argument, vjp, cotangent in spec.vjps:
        diagram = program.diagram(vjp)
        positional = tuple(Name(grad if a.name == cotangent else args[a.name]) for a in diagram.arguments)
        named = tuple((str(symbol), _size_of(y, symbol, args, sizes)) for symbol in keywords.get(vjp, ()))
        named += tuple((own, Attr(Name("ctx"), name)) for function, name, own in rates if function == vjp)
        if diagram.samplers:
            named += (("generator", Attr(Name("ctx"), "generator")),)
        backward.append(Backward(local.create(f"grad_{argument}"), names[vjp], positional, named))
    sampled = tuple(names[v] for _, v, _ in spec.vjps if program.diagram(v).samplers)
    defaults = tuple((name, _default(program.diagram(function), own)) for function, name, own in rates)
    return AutogradClass(
        module.classes[spec.definition], names[spec.definition], tuple(args.values()), sizes, defaults, grad, sampled,
        tuple(backward),
    )  # fmt: skip


def _rates(spec: AutogradSpec, program: Program, local: Namespace) -> list[tuple[str, str, str]]:
    """(VJP, the class's argument, the VJP's keyword) for each p= or count= of the sampled VJPs: named as the VJP
    names it, or, where several VJPs are sampled, with the argument's name after it (`p_w`, `p_x`). They come before
    the forward pass's own arguments, which give way to them."""
    sampled = [(argument, vjp) for argument, vjp, _ in spec.vjps if program.diagram(vjp).samplers]
    rates = []
    for argument, vjp in sampled:
        for own in sampler_keywords(program.diagram(vjp)).values():
            rates.append((vjp, local.create(own if len(sampled) == 1 else f"{own}_{argument}"), own))
    return rates


def _default(diagram: Diagram, keyword: str) -> Lit:
    """The default of a sampled VJP's p= or count= argument: the file's value."""
    for index, name in sampler_keywords(diagram).items():
        if name == keyword:
            sampler = next(s for s in diagram.samplers if s.index == index)
            return Lit(sampler.p if sampler.count is None else sampler.count)
    raise KeyError(keyword)


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

"""The autograd classes: for a definition with sampled VJPs, an exact forward pass and a backward pass through the
VJPs (sampled where the file has one, exact for the other arguments), as a class of ops the printer writes."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping

import sympy

from tncompiler.binding import axis_size
from tncompiler.errors import TncError
from tncompiler.ir.network import AutogradSpec, Diagram, Program
from tncompiler.schedule.names import ModuleNames, Namespace, sampler_keywords
from tncompiler.schedule.ops import (
    Assign,
    Attr,
    BinOp,
    Call,
    ClassDef,
    Effect,
    Expr,
    Function,
    IfExp,
    Index,
    Lit,
    Name,
    Op,
    Return,
    Tuple,
    method,
    names_in,
    walk,
)

__all__ = ["autograd_class"]

_CTX = Name("ctx")


def autograd_class(
    spec: AutogradSpec,
    program: Program,
    module: ModuleNames,
    keywords: Mapping[str, tuple[sympy.Symbol, ...]],
) -> ClassDef:
    """`y_sampled_autograd.apply(x, w, b, generator, p=...)`: y in the forward pass, its VJPs in the backward pass (a
    VJP that takes sizes as keywords gets them from the forward pass's arguments; a sampled one its p or count)."""
    y = program.diagram(spec.definition)
    names = module.functions
    sizes = tuple(str(symbol) for symbol in keywords.get(spec.definition, ()))
    local = Namespace({"ctx", "generator", "inputs", "output", *sizes} | module.taken())
    rates = _rates(spec, program, local)
    args = {a.name: local.create(a.name) for a in y.arguments}
    grad = local.create(f"grad_{spec.definition}")
    grads: list[tuple[str, Call]] = []
    for argument, vjp, cotangent in spec.vjps:
        diagram = program.diagram(vjp)
        positional = tuple(Name(grad if a.name == cotangent else args[a.name]) for a in diagram.arguments)
        named = tuple((str(symbol), _size_of(y, symbol, args, sizes)) for symbol in keywords.get(vjp, ()))
        named += tuple((own, Attr(_CTX, name)) for function, name, own in rates if function == vjp)
        if diagram.samplers:
            named += (("generator", Attr(_CTX, "generator")),)
        grads.append((local.create(f"grad_{argument}"), Call(names[vjp], positional, named)))
    params = tuple(args.values())
    defaults = tuple((name, _default(program.diagram(function), own)) for function, name, own in rates)
    kept = ("generator", *sizes, *(name for name, _ in defaults))  # kept on ctx: apply takes them by keyword too
    forward = Call(names[spec.definition], tuple(Name(p) for p in params), tuple((s, Name(s)) for s in sizes))
    optional = (*(Lit(None) for _ in ("generator", *sizes)), *(value for _, value in defaults))
    saved = _saved(params, grads)
    methods = (
        _method("forward", (*params, *kept), (Return(forward),), optional),
        _setup_context(params, kept, saved, grads),
        _backward(saved, kept, grad, grads),
    )
    sampled = tuple(names[v] for _, v, _ in spec.vjps if program.diagram(v).samplers)
    doc = _doc(module.classes[spec.definition], names[spec.definition], params, sizes, defaults, sampled)
    return ClassDef(module.classes[spec.definition], ("torch.autograd.Function",), doc, methods)


def _method(name: str, params: tuple[str, ...], body: tuple[Op, ...], defaults: tuple[Expr, ...] = ()) -> Function:
    return Function(name, params, (), "", body, {}, decorators=("staticmethod",), defaults=defaults)


def _setup_context(
    params: tuple[str, ...], kept: tuple[str, ...], saved: tuple[str, ...], grads: list[tuple[str, Call]]
) -> Function:
    """Unpacks the forward pass's inputs: the tensors the backward pass reads are saved, the other arguments it reads
    kept on ctx; what it never reads goes to `_`."""
    on_ctx = {node.name for _, value in grads for node in walk(value) if isinstance(node, Attr) and node.obj == _CTX}
    targets = [p if p in saved else "_" for p in params] + [f"ctx.{n}" if n in on_ctx else "_" for n in kept]
    body: list[Op] = [Assign(", ".join(targets), Name("inputs"), "bind")]
    if saved:
        body.append(Effect(method(_CTX, "save_for_backward", *(Name(p) for p in saved)), "bind"))
    return _method("setup_context", ("ctx", "inputs", "output"), tuple(body))


def _backward(saved: tuple[str, ...], kept: tuple[str, ...], grad: str, grads: list[tuple[str, Call]]) -> Function:
    """Each argument's VJP where autograd needs its gradient (None elsewhere); no gradient for the generator, the
    sizes, p or count."""
    body: list[Op] = []
    if saved:
        unpacked = ", ".join(saved) if len(saved) > 1 else f"({saved[0]},)"
        body.append(Assign(unpacked, Attr(_CTX, "saved_tensors"), "bind"))
    for position, (result, value) in enumerate(grads):
        needed = Index(Attr(_CTX, "needs_input_grad"), (Lit(position),))
        body.append(Assign(result, IfExp(needed, value, Lit(None)), "kernel"))
    body.append(Return(Tuple((*(Name(result) for result, _ in grads), *(Lit(None) for _ in kept)))))
    return _method("backward", ("ctx", grad), tuple(body))


def _saved(params: tuple[str, ...], grads: list[tuple[str, Call]]) -> tuple[str, ...]:
    """The arguments the backward pass reads (as a VJP's argument or for a size), in the forward pass's order."""
    read = set().union(*(names_in(value, {}) for _, value in grads))
    return tuple(p for p in params if p in read)


def _doc(
    name: str, forward: str, params: tuple[str, ...], sizes: tuple[str, ...], defaults: tuple[tuple[str, Lit], ...],
    sampled: tuple[str, ...],
) -> str:  # fmt: skip
    keywords = ["generator=None", *(f"{s}=None" for s in sizes), *(f"{n}={v.value!r}" for n, v in defaults)]
    lines = [
        f"{forward} exactly in the forward pass; in the backward pass, the sampled VJPs {', '.join(sampled)} and exact "
        "VJPs for the other arguments.",
        "",
        f"Use as {name}.apply({', '.join([*params, *keywords])}).",
        "generator: a torch.Generator or None, for the draws.",
    ]
    lines += [f"{', '.join(sizes)}: the sizes {forward} takes as keywords."] if sizes else []
    lines += [f"{', '.join(n for n, _ in defaults)}: passed on to {', '.join(sampled)}."] if defaults else []
    # the docstring sits at 4 spaces after its quotes: 112 columns keep each of its lines within 120
    return "\n".join(textwrap.fill(line, 112) if line else "" for line in lines)


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

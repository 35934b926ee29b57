"""torch.autograd.Function classes: an exact forward pass and a backward pass through the (sampled) VJPs."""

from __future__ import annotations

from collections.abc import Mapping

import sympy

from tncompiler.backend.names import ModuleNames, Namespace
from tncompiler.binding import axis_size
from tncompiler.errors import TncError
from tncompiler.ir.network import AutogradSpec, Diagram, Program

__all__ = ["autograd_class"]


def autograd_class(
    spec: AutogradSpec,
    program: Program,
    module: ModuleNames,
    keywords: Mapping[str, tuple[tuple[sympy.Symbol, str], ...]],
) -> str:
    """`y_sampled_autograd.apply(x, w, b, generator)`: y in the forward pass, its VJPs in the backward pass (a VJP
    that takes sizes as keywords gets them from the forward pass's arguments)."""
    y = program.diagram(spec.definition)
    names, cls = module.functions, module.classes[spec.definition]
    local = Namespace({"ctx", "generator"} | module.taken())
    args = {a.name: local.create(a.name) for a in y.arguments}
    grad = local.create(f"grad_{spec.definition}")
    params = ", ".join(args.values())
    sampled = [v for _, v, _ in spec.vjps if program.diagram(v).samplers]
    lines = [
        f"class {cls}(torch.autograd.Function):",
        f'    """{names[spec.definition]} exactly in the forward pass; in the backward pass, the sampled VJPs',
        f"    {', '.join(names[v] for v in sampled)} and exact VJPs for the other arguments.",
        "",
        f"    Use as {cls}.apply({params}, generator) (generator: a torch.Generator or None).",
        '    """',
        "",
        "    @staticmethod",
        f"    def forward(ctx, {params}, generator=None):",
        f"        ctx.save_for_backward({params})",
        "        ctx.generator = generator",
        f"        return {names[spec.definition]}({params})",
        "",
        "    @staticmethod",
        f"    def backward(ctx, {grad}):",
        f"        {params if len(args) > 1 else f'({params},)'} = ctx.saved_tensors",
    ]
    results = []
    for position, (argument, vjp, cotangent) in enumerate(spec.vjps):
        diagram = program.diagram(vjp)
        call_args = [grad if a.name == cotangent else args[a.name] for a in diagram.arguments]
        call_args += [f"{name}={_size_of(y, symbol, args)}" for symbol, name in keywords.get(vjp, ())]
        if diagram.samplers:
            call_args.append("generator=ctx.generator")
        result = local.create(f"grad_{argument}")
        lines.append(
            f"        {result} = {names[vjp]}({', '.join(call_args)}) if ctx.needs_input_grad[{position}] else None"
        )
        results.append(result)
    lines.append(f"        return {', '.join(results)}, None")
    return "\n".join(lines)


def _size_of(y: Diagram, symbol: sympy.Symbol, args: Mapping[str, str]) -> str:
    """The expression that reads a call-time size off the forward pass's arguments."""
    for argument in y.arguments:
        for axis in range(len(argument.layout.axes)):
            known = sympy.simplify(axis_size(y, argument, axis) / symbol)
            if known.is_Integer:
                return f"{args[argument.name]}.shape[{axis}]" + ("" if known == 1 else f" // {known}")
    raise TncError(f"the autograd class of {y.name!r} cannot read the size of index {symbol} off its arguments", y.span)

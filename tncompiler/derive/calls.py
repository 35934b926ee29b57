"""Transform calls: each checked against its entry in the registry, nested calls derived first, then built."""

from __future__ import annotations

from tncompiler.derive.arguments import CallArgs
from tncompiler.derive.registry import TRANSFORMS, Transform
from tncompiler.errors import TncError
from tncompiler.frontend import ast
from tncompiler.frontend.deriver import Definitions
from tncompiler.ir.network import Diagram

__all__ = ["derive_call"]


def derive_call(call: ast.Call, name: str, source: str, definitions: Definitions) -> Diagram:
    """The diagram `name = call(...)` (the resolver's `Deriver`); its new arguments join the definitions'."""
    transform = _transform(call.name)
    args = _call_args(call, transform, name, definitions)
    if args.diagram.samplers and not transform.of_sampled:
        raise TncError(
            f"{transform.name}() of a sampled diagram: derive first, then sample",
            call.span,
            f"write sample({transform.name}(...), ...) instead of {transform.name}(sample(...), ...)",
        )
    try:
        diagram = transform.builder(args, name, call.span, source)
    except TncError as error:
        raise error if error.span else TncError(error.message, call.span, error.hint) from None
    definitions.register_arguments(diagram, call.span)
    return diagram


def _transform(name: ast.Name) -> Transform:
    if name.text not in TRANSFORMS:
        raise TncError(f"unknown transform {name.text!r}", name.span, "transforms: " + ", ".join(TRANSFORMS))
    return TRANSFORMS[name.text]


def _call_args(call: ast.Call, transform: Transform, name: str, definitions: Definitions) -> CallArgs:
    """The operands: keywords checked, the diagram looked up (or derived, for a nested call `vjp(slice(y, ...), x)`,
    named `slice_gy`), and the other positional arguments, which name inputs."""
    positional = [a for a in call.args if not isinstance(a, ast.KwArg)]
    keywords = _keywords(call)
    _check_signature(call, transform, len(positional), keywords)
    target, *rest = positional
    if isinstance(target, ast.Call):
        diagram = derive_call(target, f"{target.name.text}_{name}", "", definitions)
    else:
        diagram = definitions.diagram(target)
    return CallArgs(diagram, tuple(_plain_name(a) for a in rest), keywords)


def _keywords(call: ast.Call) -> dict[str, ast.KwArg]:
    keywords: dict[str, ast.KwArg] = {}
    for arg in call.args:
        if isinstance(arg, ast.KwArg):
            if arg.key.text in keywords:
                raise TncError(f"keyword {arg.key.text!r} is given twice", arg.key.span)
            keywords[arg.key.text] = arg
    return keywords


def _check_signature(call: ast.Call, transform: Transform, positional: int, keywords: dict[str, ast.KwArg]) -> None:
    if positional != 1 + len(transform.arguments):
        raise TncError(
            f"{transform.name}() takes ({transform.signature()}) and keywords, got {positional} positional arguments",
            call.span,
        )
    if transform.keywords is None:
        return
    for key, kwarg in keywords.items():
        if key not in transform.keywords:
            raise TncError(
                f"unknown keyword {key!r} of {transform.name}",
                kwarg.key.span,
                "keywords: " + (", ".join(transform.keywords) or "none"),
            )


def _plain_name(arg: ast.CallArg) -> ast.Name:
    if not isinstance(arg, ast.Name):
        raise TncError("expected the name of an input here", arg.span)
    return arg

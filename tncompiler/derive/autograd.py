"""Autograd specs: an autograd.Function for each definition with a sampled VJP, exact VJPs for its other arguments."""

from __future__ import annotations

from dataclasses import replace

from tncompiler.derive import autodiff
from tncompiler.errors import Span
from tncompiler.frontend import ast
from tncompiler.ir.network import AutogradSpec, Diagram, Program

__all__ = ["with_autograd"]

# For each definition: argument -> (its sampled VJP's diagram, that VJP's cotangent argument).
_SampledVjps = dict[str, dict[str, tuple[str, str]]]


def with_autograd(program: Program, module: ast.Module) -> Program:
    """The resolved program with the autograd specs of the definitions `module` writes out (not derived ones).

    Each such definition with a sampled VJP is generated as a torch.autograd.Function whose backward runs the
    sampled VJPs; its arguments without one get an exact VJP, a private diagram `_{y}_vjp_{x}` after the file's.
    """
    diagrams = {diagram.name: diagram for diagram in program.diagrams}
    plain = {s.name.text for s in module.statements if isinstance(s, ast.Definition)}
    specs = [_spec(diagrams, name, by_argument) for name, by_argument in _sampled_vjps(diagrams, plain).items()]
    return replace(program, diagrams=tuple(diagrams.values()), autograd=tuple(specs))


def _sampled_vjps(diagrams: dict[str, Diagram], plain: set[str]) -> _SampledVjps:
    """The first sampled VJP of each plain definition with respect to each argument, in file order."""
    sampled: _SampledVjps = {}
    for diagram in diagrams.values():
        if diagram.samplers and diagram.vjp_of is not None:
            of, wrt, cotangent = diagram.vjp_of
            if of in plain:
                sampled.setdefault(of, {}).setdefault(wrt, (diagram.name, cotangent))
    return sampled


def _spec(diagrams: dict[str, Diagram], name: str, by_argument: dict[str, tuple[str, str]]) -> AutogradSpec:
    """The spec of definition `name`; exact VJPs for the arguments without a sampled one join `diagrams`."""
    y = diagrams[name]
    cotangent = _fresh_argument(f"grad_{name}", y)
    vjps = []
    for argument in y.arguments:
        if argument.name not in by_argument:
            private = _private_name(f"_{name}_vjp_{argument.name}", diagrams)
            diagrams[private] = autodiff.vjp(y, argument.name, cotangent, private, y.span or Span(1, 1), y.source)
            by_argument[argument.name] = (private, cotangent)
        vjps.append((argument.name, *by_argument[argument.name]))
    return AutogradSpec(name, tuple(vjps))


def _private_name(base: str, diagrams: dict[str, Diagram]) -> str:
    """`_a_vjp_vjp_x` of `a` and of `a_vjp` alike: made unique."""
    while base in diagrams:
        base += "_"
    return base


def _fresh_argument(base: str, diagram: Diagram) -> str:
    names = {a.name for a in diagram.arguments}
    while base in names:
        base += "_"
    return base

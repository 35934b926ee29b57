"""`tnc explain`: per diagram, the rewrites applied, the contraction order with each step's cost and lowering,
the total multiply-adds and the largest intermediate."""

from __future__ import annotations

import sympy

from tncompiler.backend.pytorch import step_kind
from tncompiler.ir.network import Diagram, Network, Program
from tncompiler.ir.values import NativeConv, View, WindowOp
from tncompiler.order import Plan, Regimes, plan_network
from tncompiler.passes.lower import native_flops
from tncompiler.passes.pipeline import run_pipeline

__all__ = ["explain", "explain_diagram"]


def explain(program: Program, rewrite: bool = True) -> str:
    return "\n\n".join(explain_diagram(diagram, rewrite) for diagram in program.diagrams) + "\n"


def explain_diagram(built: Diagram, rewrite: bool = True) -> str:
    stages = run_pipeline(built, rewrite)
    final = stages[-1].diagram
    first = built.source.strip().splitlines()[0] if built.source else ""
    lines = [f"{built.name}{built.layout.text()}: {first}"]
    changes = [(s.name, c) for s in stages for c in s.changes]
    lines.append("  rewrites:" + ("" if changes else " none"))
    lines += [f"    [{stage}] {change}" for stage, change in changes]
    for position, term in enumerate(final.terms):
        lines += _term(position, len(final.terms), term, Regimes(final.size_rules))
    return "\n".join(lines)


def _term(position: int, total: int, term: Network, regimes: Regimes) -> list[str]:
    title = f"  term {position + 1} of {total}" if total > 1 else "  contraction"
    lines = [f"{title}: coefficient {term.coefficient}"]
    for k, factor in enumerate(term.factors):
        lines.append(f"    #{k} {factor.kind} {factor.name or ''}[{', '.join(factor.legs)}]{_view_text(factor.view)}")
    native = term.lowering.native
    if isinstance(native, NativeConv):
        flops = native_flops(term, native)
        lines.append(
            f"    lowered: {native.describe()} (data #{native.data}, other #{native.other}), ~{flops} multiply-adds"
        )
        return lines
    plans = plan_network(term, regimes=regimes)
    for index, plan in enumerate(plans):
        if len(plans) > 1:
            lines.append(f"    order {index + 1} of {len(plans)} (chosen at call time where it is the cheapest):")
        lines += _plan(term, plan)
    return lines


def _plan(term: Network, plan: Plan) -> list[str]:
    legs = [f.legs for f in term.factors]
    lines = []
    for number, step in enumerate(plan.steps):
        operands = [legs[k] for k in step.operands]
        involved = sorted(set().union(*operands))
        cost = sympy.Mul(*[term.size(leg) for leg in involved])
        kind = step_kind(term, step, legs)
        names = " x ".join(f"#{k}" for k in step.operands)
        lines.append(
            f"    step {number + 1}: #{len(legs)} = {names} -> [{', '.join(step.legs)}] by {kind}, {cost} multiply-adds"
        )
        legs.append(step.legs)
    if not plan.steps:
        lines.append("    no contraction: the single tensor is permuted or summed")
    lines.append(f"    total: {plan.flops} multiply-adds; largest intermediate: {plan.largest_text()} entries")
    return lines


def _view_text(view: View | None) -> str:
    if view is None:
        return ""
    names = [
        ("window " + op.pattern.describe()) if isinstance(op, WindowOp) else type(op).__name__[:-2].lower()
        for op in view.ops
    ]
    return "  view: " + ", ".join(names)

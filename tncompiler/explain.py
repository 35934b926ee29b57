"""`tnc explain`: per diagram, the rewrites applied, then the ops the generated function runs, each with its kind
and, for contractions and kernels, how it is computed and its multiply-adds; then the total and the largest
intermediate, the entries its networks move and the time `cost.Machine` predicts for them. The ops are the schedule
the printer writes, so explain can never disagree with the code."""

from __future__ import annotations

import sympy

from tncompiler.backend.printer import expr_text, op_lines
from tncompiler.cost import MACHINE, Regimes, bytes_moved, evaluate, expected_sizes, predicted_seconds, symbols_of
from tncompiler.driver import Compilation
from tncompiler.ir.network import Diagram
from tncompiler.schedule.contract import step_kind
from tncompiler.schedule.ops import Assign, Branch, Call, Comment, Effect, Function, Op

__all__ = ["costed_ops", "explain", "explain_diagram"]


def explain(compilation: Compilation) -> str:
    return "\n\n".join(explain_diagram(compilation, d) for d in compilation.program.diagrams) + "\n"


def explain_diagram(compilation: Compilation, built: Diagram) -> str:
    first = built.source.strip().splitlines()[0] if built.source else ""
    lines = [f"{built.name}{built.layout.text()}: {first}"]
    changes = [(stage.name, change) for stage in compilation.stages[built.name] for change in stage.changes]
    lines.append("  rewrites:" + ("" if changes else " none"))
    lines += [f"    [{stage}] {change}" for stage, change in changes]
    function = next(f for f in compilation.functions if f.name == compilation.names.functions[built.name])
    lines.append("  ops:")
    lines += _ops(function.body, function, "    ")
    lines += _totals(function, Regimes(built.size_rules))
    lines += _traffic(compilation.optimised(built), Regimes(built.size_rules))
    return "\n".join(lines)


def _ops(ops: tuple[Op, ...], function: Function, indent: str) -> list[str]:
    lines = []
    for op in ops:
        if isinstance(op, Branch) and op.kind == "check":
            lines.append(f"{indent}[check] {_CHECKS.get(_called(op), 'a check')}")
            continue
        if isinstance(op, Comment):
            lines.append(f"{indent}[note] {op.text}")
            continue
        if isinstance(op, Branch):
            for position, (test, body) in enumerate(op.arms):
                when = "otherwise" if test is None else f"if {expr_text(test, function.symbols)}"
                note = f"  ({op.notes[position]})" if position < len(op.notes) and op.notes[position] else ""
                lines.append(f"{indent}[{op.kind}] {when}:{note}")
                lines += _ops(body, function, indent + "    ")
            continue
        text = op_lines(op, function.symbols, "")
        how = ""
        if isinstance(op, Assign) and op.cost is not None:
            kind = step_kind(op.value) if op.kind == "contract" else "PyTorch's kernel"
            how = f"    <- {kind}, {op.cost} multiply-adds"
        lines.append(f"{indent}[{op.kind}] {text[0].strip()}{how}")
        lines += [f"{indent}    {line.strip()}" for line in text[1:]]
    return lines


_CHECKS = {
    "_check_arguments": "each argument's type, rank, dtype and device in one test (_check_arguments names the culprit)",
    "_check_shapes": "each argument's shape against the sizes in one test (_check_shapes names the axis)",
}


def _called(branch: Branch) -> str:
    """The helper a check's branch calls."""
    body = branch.arms[0][1]
    value = body[0].value if body and isinstance(body[0], Effect) else None
    return value.func if isinstance(value, Call) else ""


def costed_ops(ops: tuple[Op, ...]) -> list[Assign]:
    found: list[Assign] = []
    for op in ops:
        if isinstance(op, Assign) and op.cost is not None:
            found.append(op)
        elif isinstance(op, Branch):
            found += costed_ops(op.arms[0][1])  # the first plan stands for the term in the totals
    return found


def _totals(function: Function, regimes: Regimes) -> list[str]:
    costed = costed_ops(function.body)
    if not costed:
        return ["  total: no multiply-adds (views, sums and copies only)"]
    total = sympy.Add(*[op.cost for op in costed if op.cost is not None])
    sizes = [op.entries for op in costed if op.entries is not None and op.kind == "contract"]  # a kernel's: its result
    largest = ""
    if sizes:
        at = regimes.middle(set().union(*(sympy.sympify(s).free_symbols for s in sizes)))
        largest = f"; largest intermediate: {max(sizes, key=lambda s: evaluate(s, at))} entries"
    return [f"  total: {total} multiply-adds{largest}"]


def _traffic(optimised: Diagram, regimes: Regimes) -> list[str]:
    """The entries the diagram's networks read and write, and the time the model predicts at the middle regime."""
    networks = optimised.networks()
    moved = sympy.Add(*[bytes_moved(net) for net in networks])
    sizes = [size for net in networks for size in net.sizes.values()] + [s.size for s in optimised.samplers]
    at = regimes.middle(symbols_of(*sizes))
    at |= expected_sizes(optimised.samplers, at)
    shown = ", ".join(f"{s}={n}" for s, n in sorted(at.items(), key=str)) or "all sizes known"
    estimate, megabytes = (
        sum(predicted_seconds(net, at) for net in networks),
        evaluate(moved, at) * MACHINE.entry_bytes / 1e6,
    )
    return [
        f"  moved: {moved} entries read and written ({megabytes:.3g} MB of float32 at {shown})",
        f"  estimated time: {estimate * 1e3:.3g} ms (a CPU estimate, one thread: cost.Machine, at {shown})",
    ]

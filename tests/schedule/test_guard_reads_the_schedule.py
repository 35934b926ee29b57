"""The memory guard's estimate is a sum over the scheduled ops (tncompiler/memory.py): each op carries what it
allocates (`Assign.entries`, `scratch`), set where the schedule makes it; the estimate walks the function's ops after
the peephole rules. Here: the estimate of a function whose ops can be counted, the walk's rules (variables live until
the return, scratch only during its op, a branch costs its costliest arm), the peephole rules keeping `entries`, and
memory.py planning nothing of its own."""

from __future__ import annotations

import ast
import inspect
from dataclasses import replace

import pytest

import tncompiler.memory
from tncompiler.api import build_program
from tncompiler.driver import Compilation
from tncompiler.guard import BYTES_PER_ENTRY, estimate_bytes, parse_size
from tncompiler.ir.network import Diagram
from tncompiler.schedule.ops import Assign, Branch, Function, Lit, Name, Op, Return, Tuple, call, method
from tncompiler.schedule.peephole import tidy

CHAIN = """index a = 30, b = 40, c = 50, e = 60
input p[a, b]
input q[b, c]
input r[c, e]
z[a, e] = p[a, b] * q[b, c] * r[c, e]
"""


def scheduled(source: str, name: str) -> tuple[Function, Diagram]:
    compilation = Compilation(build_program(source, "chain.tnd"), source, True, parse_size("1e999"))
    names = [diagram.name for diagram in compilation.program.diagrams]
    return compilation.functions[names.index(name)], compilation.optimised(compilation.program.diagram(name))


def assigns(ops: tuple[Op, ...]) -> list[Assign]:
    return [op for op in ops if isinstance(op, Assign)]


def function(*body: Op) -> Function:
    return Function("f", (), (), "", tuple(body), {})


EMPTY = build_program(CHAIN, "chain.tnd").diagram("z")  # no sampled sizes: the ops' entries are all that count


def test_a_chain_of_two_products_needs_its_two_results() -> None:
    """Two products, each making its result and copying no operand (each is laid out as a GEMM wants it)."""
    f, diagram = scheduled(CHAIN, "z")
    steps = [op for op in assigns(f.body) if op.kind == "contract"]
    assert len(steps) == 2 and all(not op.scratch for op in steps)
    made = [int(op.entries) for op in assigns(f.body) if op.entries is not None]
    assert made == [int(op.entries) for op in steps]  # nothing else allocates: checks, views
    assert made[-1] == 30 * 60 and made[0] in (30 * 50, 40 * 60)  # (p q) r or p (q r): cotengra's choice
    assert estimate_bytes(f, diagram) == sum(made) * BYTES_PER_ENTRY


def test_the_estimate_follows_the_ops_not_the_diagram() -> None:
    f, diagram = scheduled(CHAIN, "z")
    first = next(op for op in f.body if isinstance(op, Assign) and op.kind == "contract")
    grown = tuple(replace(op, entries=10**6) if op is first else op for op in f.body)
    added = (10**6 - int(first.entries)) * BYTES_PER_ENTRY  # type: ignore[arg-type]
    assert estimate_bytes(replace(f, body=grown), diagram) == estimate_bytes(f, diagram) + added


def test_variables_live_until_the_return_and_scratch_only_during_its_op() -> None:
    body = (
        Assign("u", call("f"), "contract", entries=10),
        Assign("v", call("g"), "contract", entries=5, scratch=100),  # 10 + 100 + 5 at once
        Assign("w", call("h"), "contract", entries=20),
        Return(Tuple((Name("u"), Name("v"), Name("w")))),
    )
    assert estimate_bytes(function(*body), EMPTY) == 115 * BYTES_PER_ENTRY
    bigger = body[:3] + (Assign("x", call("k"), "contract", entries=90), body[3])
    assert estimate_bytes(function(*bigger), EMPTY) == 125 * BYTES_PER_ENTRY  # 10 + 5 + 20 + 90


def test_a_branch_costs_its_costliest_arm() -> None:
    arms = (
        (Lit(True), (Assign("t", call("f"), "contract", entries=7, scratch=50),)),
        (None, (Assign("t", call("g"), "contract", entries=30),)),
    )
    after = Assign("u", call("h"), "contract", entries=1)
    body = (Assign("s", call("e"), "contract", entries=2), Branch(arms, "contract"), after, Return(Name("u")))
    assert estimate_bytes(function(*body), EMPTY) == (2 + 7 + 50) * BYTES_PER_ENTRY
    assert estimate_bytes(function(*body[:2], replace(after, entries=40), body[3]), EMPTY) == 72 * BYTES_PER_ENTRY


def test_equal_constants_merged_by_the_peephole_rules_are_counted_once() -> None:
    built = function(
        Assign("u", call("_conv_pattern", Lit(8)), "constant", entries=64),
        Assign("v", call("_conv_pattern", Lit(8)), "constant", entries=64),
        Return(Tuple((Name("u"), Name("v")))),
    )
    tidied = tidy(built)
    assert estimate_bytes(built, EMPTY) == 128 * BYTES_PER_ENTRY
    assert estimate_bytes(tidied, EMPTY) == 64 * BYTES_PER_ENTRY
    assert [op.target for op in assigns(tidied.body)] == ["u"]


def test_a_reshape_folded_into_a_reshape_keeps_its_copy() -> None:
    """u = z.reshape(a) copies (z strided); v = u.reshape(b) then reads z itself, and copies in its place."""
    z = Assign("z", call("windows"), "view")
    u = Assign("u", method(Name("z"), "reshape", Lit(12)), "view", entries=12)
    v = Assign("v", method(Name("u"), "reshape", Lit(3), Lit(4)), "view")
    built = function(z, u, v, Return(Name("v")))
    tidied = tidy(built)
    ops = assigns(tidied.body)
    assert [op.target for op in ops] == ["z", "v"] and ops[1].entries == 12
    assert estimate_bytes(tidied, EMPTY) == estimate_bytes(built, EMPTY) == 12 * BYTES_PER_ENTRY


@pytest.mark.parametrize("name", ["plan_network", "Network", "natural_shape", "folded_bias", "summed_runs"])
def test_memory_plans_nothing_of_its_own(name: str) -> None:
    """No contraction planning, no network, no rule of the schedule's copied: the ops say it all."""
    tree = ast.parse(inspect.getsource(tncompiler.memory))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert name not in imported

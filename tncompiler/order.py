"""Contraction order: cotengra plans each network at compile time, once per regime of the call-time sizes."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import cotengra as ctg
import sympy

from tncompiler.ir.network import Network
from tncompiler.ir.values import Size, SizeRule, out_size

__all__ = ["Step", "Plan", "Regimes", "plan_network", "evaluate", "symbols_of", "REGIMES", "OPTIMAL_UP_TO"]

# Call-time sizes are unknown when planning; we plan at these values and keep every distinct order, so that
# the generated code can pick the cheapest one once per shape.
REGIMES = (1, 32, 1024)
# Exhaustive search up to this many tensors; cotengra's (deterministic) greedy search beyond.
OPTIMAL_UP_TO = 12
# On a terminal, searches over this many tensors or more report their progress on stderr.
SHOW_PROGRESS_FROM = 9


@dataclass(frozen=True, order=True)
class Step:
    """Contract the operands with ids `operands` into a new operand with `legs` (id = number of earlier ids)."""

    operands: tuple[int, ...]
    legs: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    """Pairwise steps in order, with each step's multiply-adds and result entries as products of the sizes.

    Costs stay products (monomials in the call-time sizes): their sum is the plan's cost, and the largest result is
    found by evaluating them at given sizes, never by a symbolic Max (which sympy compares pairwise, at a cost that
    explodes with the number of open sizes)."""

    steps: tuple[Step, ...]
    costs: tuple[sympy.Expr, ...]
    results: tuple[sympy.Expr, ...]

    @property
    def flops(self) -> sympy.Expr:
        return sympy.Add(*self.costs)

    def largest(self, at: Mapping[sympy.Symbol, int]) -> int:
        """The entries of the largest intermediate at the sizes `at` (call-time sizes not in `at` count as 1)."""
        return max((evaluate(size, at) for size in self.results), default=0)

    def largest_text(self) -> str:
        """The largest intermediate, for people: one product, or the max of the distinct ones."""
        distinct = list(dict.fromkeys(self.results))
        return str(distinct[0]) if len(distinct) == 1 else f"max({', '.join(map(str, distinct))})" if distinct else "0"


def evaluate(size: Size | sympy.Expr, at: Mapping[sympy.Symbol, int]) -> int:
    """A size at concrete call-time sizes (those not in `at` count as 1)."""
    if isinstance(size, int):
        return size
    return int(size.xreplace({s: at.get(s, 1) for s in size.free_symbols}))


@dataclass(frozen=True)
class Regimes:
    """Representative call-time sizes for compile-time choices: every open index at each of REGIMES, and every
    size a pattern derives from open ones by its size rule (a stride-4 output a quarter of its input, as it will be
    at call time, not as large as it)."""

    rules: tuple[SizeRule, ...] = ()

    def at(
        self, regime: int, symbols: Iterable[sympy.Symbol], expected: Mapping[sympy.Symbol, int] | None = None
    ) -> dict[sympy.Symbol, int]:
        """Values for `symbols` (and what they derive from); `expected` fixes some (sampled sizes)."""
        values = {s: (expected or {}).get(s, regime) for s in symbols}
        derived: dict[sympy.Symbol, int] = {}
        for rule in self.rules:  # file order: a rule's input is open or derived by an earlier rule
            out, conv = rule.conv.out_size, rule.conv
            if isinstance(out, sympy.Symbol):
                at = {s: derived.get(s, regime) for s in sympy.sympify(conv.in_size).free_symbols}
                i = evaluate(conv.in_size, at)
                derived[out] = max(1, evaluate(out_size(i, conv.kernel_size, conv.stride, conv.pad_left,
                                                         conv.pad_right, conv.dilation), {}))  # fmt: skip
        return values | {s: derived[s] for s in values if s in derived and s not in (expected or {})}

    def middle(
        self, symbols: Iterable[sympy.Symbol], expected: Mapping[sympy.Symbol, int] | None = None
    ) -> dict[sympy.Symbol, int]:
        return self.at(REGIMES[len(REGIMES) // 2], symbols, expected)


WITHOUT_RULES = Regimes()  # for networks whose open sizes are all independent


def symbols_of(*sizes: Size | sympy.Expr) -> set[sympy.Symbol]:
    found: set[sympy.Symbol] = set()
    for size in sizes:
        if isinstance(size, sympy.Expr):
            found |= size.free_symbols
    return found


def plan_network(
    network: Network, expected: Mapping[sympy.Symbol, int] | None = None, regimes: Regimes = WITHOUT_RULES
) -> tuple[Plan, ...]:
    """Every distinct optimal plan over the size regimes, cheapest first at the middle regime.

    `expected` gives call-time sizes that are known in expectation (the kept entries of a sampled index)."""
    inputs = [factor.legs for factor in network.factors]
    plans: dict[tuple[Step, ...], Plan] = {}
    symbols = symbols_of(*network.sizes.values())
    middle = regimes.middle(symbols, expected)
    # operand order within a step is decided at the middle regime, so that one path stays one plan
    typical = {name: max(evaluate(size, middle), 1) for name, size in network.sizes.items()}
    searched: set[tuple[int, ...]] = set()
    for regime in REGIMES:
        at = regimes.at(regime, symbols, expected)
        sizes = {name: max(evaluate(size, at), 1) for name, size in network.sizes.items()}
        if tuple(sizes.values()) in searched:  # the same sizes (all known in the file): the same path again
            continue
        searched.add(tuple(sizes.values()))
        steps = _steps(network, _path(inputs, network.outputs, sizes), typical)
        if steps not in plans:
            plans[steps] = _costed(network, steps)
    return tuple(sorted(plans.values(), key=lambda p: (evaluate(p.flops, middle), p.steps)))


def _path(inputs: list[tuple[str, ...]], outputs: tuple[str, ...], sizes: dict[str, int]) -> list[tuple[int, ...]]:
    if len(inputs) < 2:
        return []
    method = "optimal" if len(inputs) <= OPTIMAL_UP_TO else "greedy"
    show = len(inputs) >= SHOW_PROGRESS_FROM and sys.stderr.isatty()
    if show:  # exhaustive search grows fast with the number of tensors: say what is going on
        print(
            f"tnc: planning a contraction of {len(inputs)} tensors ({method} search) ...",
            end="",
            file=sys.stderr,
            flush=True,
        )
    start = time.perf_counter()
    path = ctg.array_contract_path(inputs, outputs, size_dict=sizes, optimize=method, cache=False)
    if show:
        print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return [tuple(int(i) for i in step) for step in path]


def _steps(network: Network, path: list[tuple[int, ...]], sizes: Mapping[str, int]) -> tuple[Step, ...]:
    """Turn cotengra's linear path (positions in a shrinking list) into steps over operand ids."""
    alive = list(range(len(network.factors)))
    legs = {k: f.legs for k, f in enumerate(network.factors)}
    # how many live operands carry each leg: a step keeps the legs that outputs or other live operands need,
    # found in time proportional to the step (recounting every live operand per step was quadratic in the factors)
    carried = Counter(leg for k in alive for leg in set(legs[k]))
    outputs = set(network.outputs)
    steps = []
    for position, contraction in enumerate(path):
        ids = tuple(alive[p] for p in contraction)
        if len(ids) == 2 and position < len(path) - 1 and _skinny_second(legs[ids[0]], legs[ids[1]], sizes):
            ids = ids[::-1]
        for p in sorted(contraction, reverse=True):
            del alive[p]
        carried.subtract(leg for k in ids for leg in set(legs[k]))
        new_id = len(legs)
        legs[new_id] = tuple(dict.fromkeys(leg for k in ids for leg in legs[k] if leg in outputs or carried[leg] > 0))
        carried.update(legs[new_id])
        alive.append(new_id)
        steps.append(Step(ids, legs[new_id]))
    return tuple(steps)


# A matrix product A·B where B has at most this many columns runs faster as (Bᵀ·Aᵀ)ᵀ with PyTorch's CPU GEMM
# (measured 2-5x for 3 to 9 columns, the Σ_o Π factors of KFAC-reduce; even at 16).
SKINNY = 12


def _skinny_second(a: tuple[str, ...], b: tuple[str, ...], sizes: Mapping[str, int]) -> bool:
    """Whether b's free legs (not shared with a) hold few entries and a's many: then b goes first."""
    free_a = math.prod(sizes[leg] for leg in a if leg not in b)
    free_b = math.prod(sizes[leg] for leg in b if leg not in a)
    return free_b <= SKINNY < free_a


def _costed(network: Network, steps: tuple[Step, ...]) -> Plan:
    legs = {k: f.legs for k, f in enumerate(network.factors)}
    costs, results = [], []
    for step in steps:
        involved = set().union(*(legs[k] for k in step.operands))
        costs.append(sympy.Mul(*[network.size(leg) for leg in sorted(involved)]))
        results.append(sympy.Mul(*[network.size(leg) for leg in step.legs]))
        legs[len(legs)] = step.legs
    return Plan(steps, tuple(costs), tuple(results))


def summed_runs(legs: tuple[str, ...], result: tuple[str, ...]) -> list[list[int]]:
    """The axes of `legs` a step that keeps `result` sums, as the generated code sums them: one `.sum` per run of
    adjacent summed axes, the outermost first (each pass then reads whole contiguous rows: 4x faster than one
    reduction over strided axes, measured on KFAC-reduce's Σ_o of a patchify), except that a leading and a trailing
    run, around kept axes that lie together, are one `.sum` (Σ over n and the positions of [n, c, o..]: 1.1-2x faster
    than two, measured). The schedule prints these calls and the memory estimate counts their temporaries."""
    runs: list[list[int]] = []
    for axis, leg in enumerate(legs):
        if leg not in result:
            if runs and runs[-1][-1] == axis - 1:
                runs[-1].append(axis)
            else:
                runs.append([axis])
    if len(runs) == 2 and runs[0][0] == 0 and runs[1][-1] == len(legs) - 1:
        runs = [runs[0] + runs[1]]
    return runs

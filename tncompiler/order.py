"""Contraction order: cotengra plans each network at compile time, once per regime of the call-time sizes, and each
network once: its plans are kept, for the passes that price it again and for lowering, which stores them on the IR."""

from __future__ import annotations

import math
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Hashable, Mapping

import cotengra as ctg
import sympy

from tncompiler.cost import REGIMES, SKINNY, WITHOUT_RULES, Regimes, evaluate, symbols_of
from tncompiler.ir.network import Network, Plan, Step

__all__ = ["plan_network", "summed_runs", "OPTIMAL_UP_TO"]

# Exhaustive search up to this many tensors; cotengra's (deterministic) greedy search beyond.
OPTIMAL_UP_TO = 12
# On a terminal, searches over this many tensors or more report their progress on stderr.
SHOW_PROGRESS_FROM = 9
# Plans are kept: a network that share and fuse price, lowering keeps on the IR and the memory estimate reads is
# searched once per process. The least recently used go first past this many (a long-running process stays small).
KEPT_PLANS = 4096
_PLANS: OrderedDict[Hashable, tuple[Plan, ...]] = OrderedDict()


def plan_network(
    network: Network, expected: Mapping[sympy.Symbol, int] | None = None, regimes: Regimes = WITHOUT_RULES
) -> tuple[Plan, ...]:
    """Every distinct optimal plan over the size regimes, cheapest first at the middle regime; found once for equal
    networks (the same legs, sizes and outputs, planned at the same sizes), then kept.

    `expected` gives call-time sizes that are known in expectation (the kept entries of a sampled index)."""
    symbols = symbols_of(*network.sizes.values())
    fixed = frozenset((s, n) for s, n in (expected or {}).items() if s in symbols)  # only these change the sizes
    key = (tuple(f.legs for f in network.factors), network.outputs, tuple(network.sizes.items()), fixed, regimes)
    if key in _PLANS:
        _PLANS.move_to_end(key)
        return _PLANS[key]
    plans = _PLANS[key] = _planned(network, symbols, expected, regimes)
    if len(_PLANS) > KEPT_PLANS:
        _PLANS.popitem(last=False)
    return plans


def _planned(
    network: Network, symbols: set[sympy.Symbol], expected: Mapping[sympy.Symbol, int] | None, regimes: Regimes
) -> tuple[Plan, ...]:
    inputs = [factor.legs for factor in network.factors]
    plans: dict[tuple[Step, ...], Plan] = {}
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


def _skinny_second(a: tuple[str, ...], b: tuple[str, ...], sizes: Mapping[str, int]) -> bool:
    """Whether b's free legs (not shared with a) hold few entries and a's many: then b goes first."""
    free_a = math.prod(sizes[leg] for leg in a if leg not in b)
    free_b = math.prod(sizes[leg] for leg in b if leg not in a)
    return free_b <= SKINNY < free_a


def _costed(network: Network, steps: tuple[Step, ...]) -> Plan:
    legs = {k: f.legs for k, f in enumerate(network.factors)}
    costs = []
    for step in steps:
        involved = set().union(*(legs[k] for k in step.operands))
        costs.append(sympy.Mul(*[network.size(leg) for leg in sorted(involved)]))
        legs[len(legs)] = step.legs
    return Plan(steps, tuple(costs))


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

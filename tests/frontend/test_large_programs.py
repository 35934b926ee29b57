"""Large programs: sums of hundreds of inputs and functions of hundreds of arguments compile and compute the right
numbers (they were refused as "nested too deeply": the argument check was one chain of thousands of `and`s, and the
printer recursed along chains); products past the documented limits (docs/errors.md, "Size limits") are refused at
the factor or term that passes them, quickly, where they used to take minutes."""

from __future__ import annotations

import math
import random
import time
from typing import Any

import pytest
import sympy
import torch

import tncompiler
from tests.frontend.test_error_catalogue import docs_entries, error_of
from tncompiler import cost, order
from tncompiler.backend.printer import expr_text
from tncompiler.frontend.expand import MAX_FACTORS, MAX_SUM_FACTORS, MAX_TERMS
from tncompiler.ir.network import Network
from tncompiler.ir.values import Factor
from tncompiler.schedule.checks import _balanced
from tncompiler.schedule.ops import BinOp, Expr, Name

MANY = 300  # hundreds of inputs or arguments: more than twice what failed (82 arguments, 100 inputs)


def _inputs(count: int) -> str:
    return "index a = 3\n" + "".join(f"input x{k}[a]\n" for k in range(count))


def _arguments(count: int) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(count)
    return [torch.empty(3, dtype=torch.float64).uniform_(0.9, 1.1, generator=generator) for _ in range(count)]


# -- hundreds of terms and arguments ----------------------------------------------------------------------------
def test_a_sum_of_hundreds_of_inputs_matches_torch() -> None:
    source = _inputs(MANY) + "y[a] = " + " + ".join(f"x{k}[a]" for k in range(MANY)) + "\n"
    xs = _arguments(MANY)
    module = tncompiler.load_source(source, "sum.tnd")
    torch.testing.assert_close(module.y(*xs), torch.stack(xs).sum(0), rtol=1e-12, atol=1e-12)


def test_a_function_of_hundreds_of_arguments_matches_torch_and_checks_each() -> None:
    """Every argument is checked: a wrong dtype or shape on a late one is named (the one condition that tests them
    all had thousands of clauses)."""
    source = _inputs(MANY) + "y[a] = " + " * ".join(f"x{k}[a]" for k in range(MANY)) + "\n"
    xs = _arguments(MANY)
    module = tncompiler.load_source(source, "product.tnd")
    torch.testing.assert_close(module.y(*xs), torch.stack(xs).prod(0), rtol=1e-10, atol=0)
    late = MANY - 2
    with pytest.raises(ValueError, match=rf"argument 'x{late}' has dtype torch.float32"):
        module.y(*xs[:late], xs[late].float(), *xs[late + 1 :])
    with pytest.raises(ValueError, match=rf"argument 'x{late}' axis 0 \(a\) has size 4, expected 3"):
        module.y(*xs[:late], torch.ones(4, dtype=torch.float64), *xs[late + 1 :])


def _depth(expr: Expr) -> int:
    return 1 + max(_depth(expr.left), _depth(expr.right)) if isinstance(expr, BinOp) else 1


def test_the_argument_checks_nest_logarithmically() -> None:
    conditions: list[Expr] = [Name(f"c{k}") for k in range(4 * MANY)]
    tree = _balanced("and", conditions)
    assert _depth(tree) == math.ceil(math.log2(len(conditions))) + 1
    assert expr_text(tree, {}) == " and ".join(f"c{k}" for k in range(4 * MANY))


# -- the printer: long chains, written flat, with the brackets that keep their meaning ---------------------------
def _left_chain(op: str, names: list[str]) -> Expr:
    result: Expr = Name(names[0])
    for name in names[1:]:
        result = BinOp(op, result, Name(name))
    return result


def _right_chain(op: str, names: list[str]) -> Expr:
    result: Expr = Name(names[-1])
    for name in reversed(names[:-1]):
        result = BinOp(op, Name(name), result)
    return result


@pytest.mark.parametrize("op", ["+", "*", "and", "or"])
def test_a_chain_of_ten_thousand_operators_prints_flat(op: str) -> None:
    names = [f"t{k}" for k in range(10_000)]
    assert expr_text(_left_chain(op, names), {}) == f" {op} ".join(names)


@pytest.mark.parametrize("op", ["and", "or"])
def test_associative_operators_print_flat_however_grouped(op: str) -> None:
    names = [f"t{k}" for k in range(5_000)]
    assert expr_text(_right_chain(op, names), {}) == f" {op} ".join(names)


@pytest.mark.parametrize(
    ("expr", "text"),
    [
        (BinOp("-", Name("a"), BinOp("-", Name("b"), Name("c"))), "a - (b - c)"),
        (BinOp("-", BinOp("-", Name("a"), Name("b")), Name("c")), "a - b - c"),
        (BinOp("+", Name("a"), BinOp("+", Name("b"), Name("c"))), "a + (b + c)"),  # floats round by grouping
        (BinOp("*", Name("a"), BinOp("/", Name("b"), Name("c"))), "a * (b / c)"),
        (BinOp("-", BinOp("+", Name("a"), Name("b")), BinOp("*", Name("c"), Name("d"))), "a + b - c * d"),
        (BinOp("and", Name("a"), BinOp("or", Name("b"), Name("c"))), "a and (b or c)"),
        (BinOp("==", BinOp("==", Name("a"), Name("b")), Name("c")), "(a == b) == c"),  # not a chained comparison
        (BinOp("!=", Name("a"), BinOp("<", Name("b"), Name("c"))), "a != (b < c)"),
    ],
    ids=["minus-right", "minus-left", "plus-right", "times-divide", "mixed", "and-or", "compare-left", "compare-right"],
)
def test_flattening_keeps_the_brackets_that_matter(expr: Expr, text: str) -> None:
    assert expr_text(expr, {}) == text


# -- the planner: linear in the steps, one search for known sizes -----------------------------------------------
def _random_network(rng: random.Random, count: int) -> Network:
    legs = [f"i{k}" for k in range(count + 2)]
    factors = [Factor("input", f"t{k}", tuple(rng.sample(legs, rng.randint(1, 3)))) for k in range(count)]
    carried = sorted({leg for f in factors for leg in f.legs})
    return Network(factors, tuple(rng.sample(carried, 2)), {leg: rng.randint(1, 5) for leg in carried})


def _recounted_steps(network: Network, path: list[tuple[int, ...]]) -> list[tuple[str, ...]]:
    """Each step's legs, by recounting every live operand (the definition the planner's incremental count keeps)."""
    alive = list(range(len(network.factors)))
    legs = {k: f.legs for k, f in enumerate(network.factors)}
    sizes = dict.fromkeys(network.indices, 2)
    found = []
    for position, contraction in enumerate(path):
        ids = [alive[p] for p in contraction]
        if position < len(path) - 1 and order._skinny_second(legs[ids[0]], legs[ids[1]], sizes):
            ids.reverse()  # the planner's choice of which operand goes first, which this test does not check
        for p in sorted(contraction, reverse=True):
            del alive[p]
        needed = set(network.outputs).union(*(legs[k] for k in alive))
        legs[len(legs)] = tuple(dict.fromkeys(leg for k in ids for leg in legs[k] if leg in needed))
        alive.append(len(legs) - 1)
        found.append(legs[len(legs) - 1])
    return found


@pytest.mark.parametrize("seed", range(20))
def test_each_step_keeps_the_legs_still_needed(seed: int) -> None:
    rng = random.Random(seed)
    network = _random_network(rng, rng.randint(2, 30))
    path, live = [], len(network.factors)
    while live > 1:
        pair = tuple(sorted(rng.sample(range(live), 2)))
        path.append(pair)
        live -= 1
    steps = order._steps(network, path, dict.fromkeys(network.indices, 2))
    assert [step.legs for step in steps] == _recounted_steps(network, path)


def _chain(count: int, size: sympy.Expr | int) -> Network:
    factors = [Factor("input", "t", (f"a{k}", f"a{k + 1}")) for k in range(count)]
    sizes = {f"a{k}": size for k in range(count + 1)}
    return Network(factors, ("a0", f"a{count}"), sizes)


@pytest.mark.parametrize(("size", "searches"), [(2, 1), (sympy.Symbol("n"), len(cost.REGIMES))])
def test_known_sizes_are_planned_once(size: sympy.Expr | int, searches: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every regime gives the same sizes when the file knows them all: one search, not one per regime."""
    calls: list[int] = []
    search = order._path

    def counted(*args: Any) -> list[tuple[int, ...]]:
        calls.append(1)
        return search(*args)

    monkeypatch.setattr(order, "_path", counted)
    monkeypatch.setattr(order, "_PLANS", type(order._PLANS)())  # searched here, not found among earlier plans
    order.plan_network(_chain(20, size))
    assert len(calls) == searches


def _steps_seconds(count: int) -> float:
    network = _chain(count, 2)
    path: list[tuple[int, ...]] = [(0, 1)] * (count - 1)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        order._steps(network, path, dict.fromkeys(network.indices, 2))
        best = min(best, time.perf_counter() - start)
    return best


def test_the_steps_of_a_path_take_time_linear_in_its_length() -> None:
    """Each step recounted the legs of every live operand: a 3000-factor chain's steps took seconds, twice per
    compile. Eight times the factors now take about eight times as long, not sixty-four."""
    assert _steps_seconds(8000) / _steps_seconds(1000) < 24


# -- the limits: refused where they are passed, with the report docs/errors.md shows ------------------------------
_CUBED = "index n\ninput x[n]\n" + "".join(
    f"{name}[n] = " + " * ".join([f"{base}[n]"] * 10) + "\n" for name, base in zip("abc", "xab")
)
LIMITS = {
    "product-too-large": (_CUBED + "y[n] = c[n] * x[n]\n", 6, 15, f"this product passes {MAX_FACTORS} factors here"),
    "sum-too-large": (
        _CUBED + "y[n] = " + " + ".join(["c[n]"] * 11) + "\n",
        6,
        78,
        f"this sum passes {MAX_SUM_FACTORS} factors here",
    ),
    "expansion-too-large": (
        "index n\ninput u[n]\ninput v[n]\ns[n] = u[n] + v[n]\ny[n] = " + " * ".join(["s[n]"] * 11) + "\n",
        5,
        78,
        f"expanding this product passes {MAX_TERMS} terms here",
    ),
}


@pytest.mark.parametrize("name", LIMITS)
def test_a_limit_is_refused_where_it_is_passed_as_the_docs_show(name: str) -> None:
    source, line, column, message = LIMITS[name]
    error = error_of(source)
    assert error.message.startswith(message) and error.span is not None and error.hint
    assert (error.span.line, error.span.column, error.span.end_column) == (line, column, column + 4)
    shown = docs_entries()[name]
    assert f"```\n{source}```" in shown and f"```text\n{error}\n```" in shown


def _issue_products(count: int) -> dict[str, str]:
    """The shapes of issue 19: one input many times, a chain of matrices, a chain of copy tensors."""
    legs = "".join(f"index a{k} = 2\n" for k in range(count + 1))
    return {
        "repeated": "index a = 3\ninput x[a]\ny[] = " + " * ".join(["x[a]"] * count) + "\n",
        "chain": legs
        + f"input t[a0, a1]\ny[a0, a{count}] = "
        + " * ".join(f"t[a{k}, a{k + 1}]" for k in range(count))
        + "\n",
        "deltas": legs
        + f"input x[a0]\ny[a{count}] = x[a0] * "
        + " * ".join(f"delta(a{k}, a{k + 1})" for k in range(count))
        + "\n",
    }


@pytest.mark.parametrize("shape", ["repeated", "chain", "deltas"])
def test_a_product_of_thousands_is_refused_at_its_factor(shape: str) -> None:
    """3000 factors took about 50 s to compile (20000 over 5 minutes); now the front end refuses the product at the
    factor that passes the limit, before any planning."""
    source = _issue_products(3000)[shape]
    start = time.perf_counter()
    error = error_of(source)
    assert time.perf_counter() - start < 20  # seconds of parsing at most; was about 50 s
    assert error.message.startswith(f"this product passes {MAX_FACTORS} factors here") and error.span is not None
    line = source.split("\n")[error.span.line - 1]
    right = line.split(" = ", 1)[1]
    factors = right.split(" * ")
    column = len(line) - len(right) + sum(len(factor) + len(" * ") for factor in factors[:MAX_FACTORS]) + 1
    shown = line[column - 1 : (error.span.end_column or 0) - 1]
    assert (error.span.column, shown) == (column, factors[MAX_FACTORS])


# -- at the limit: it compiles, and computes the right numbers --------------------------------------------------
def test_a_function_of_as_many_arguments_as_factors_allowed_matches_torch() -> None:
    source = _inputs(MAX_FACTORS) + "y[a] = " + " * ".join(f"x{k}[a]" for k in range(MAX_FACTORS)) + "\n"
    xs = _arguments(MAX_FACTORS)
    module = tncompiler.load_source(source, "limit.tnd")
    torch.testing.assert_close(module.y(*xs), torch.stack(xs).prod(0), rtol=1e-9, atol=0)

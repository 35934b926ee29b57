"""Planning happens once: every contraction search (cotengra's, in `order.py`) runs once per distinct network and
sizes, however often share, fuse and lowering price a network, and the schedule searches nothing: it reads the plans
that lowering kept on each network's `Lowering`."""

from __future__ import annotations

from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

import cotengra as ctg
import pytest

import tncompiler
from tests.cases import OPEN_LEVELS, conv, operations, source
from tncompiler import cost, order
from tncompiler.driver import Compilation
from tncompiler.ir.network import Network
from tncompiler.ir.values import Factor, size_symbol

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.tnd"))
# A grouped, strided, dilated 2-d convolution with a bias and every transform the case builder writes.
CASE = conv([7, 6], [3, 2], stride=[2, 1], padding=[1, 0], dilation=[1, 2], groups=2, bias=True)
SOURCES = {path.stem: path.read_text() for path in EXAMPLES} | {
    "every_transform": source(CASE, OPEN_LEVELS["spatial"], [op.statement for op in operations(CASE) if op.statement])
}

Search = tuple[tuple[tuple[str, ...], ...], tuple[str, ...], tuple[tuple[str, int], ...]]


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> Counter[Search]:
    """The searches from here on, counted by what cotengra is asked (the kept plans forgotten first)."""
    monkeypatch.setattr(order, "_PLANS", OrderedDict())
    found: Counter[Search] = Counter()
    search = ctg.array_contract_path

    def counting(inputs: Any, outputs: Any, size_dict: dict[str, int], **options: Any) -> Any:
        found[(tuple(map(tuple, inputs)), tuple(outputs), tuple(sorted(size_dict.items())))] += 1
        return search(inputs, outputs, size_dict=size_dict, **options)

    monkeypatch.setattr(ctg, "array_contract_path", counting)  # what order.py calls
    return found


def _compilation(name: str, rewrite: bool) -> Compilation:
    return Compilation(tncompiler.build_program(SOURCES[name], f"{name}.tnd"), SOURCES[name], rewrite)


def test_the_case_has_every_transform() -> None:
    statements = SOURCES["every_transform"]
    assert all(word in statements for word in ("vjp(", "jvp(", "slice(", "sample(", "kfac(", "kfac_grad("))


@pytest.mark.parametrize("rewrite", [True, False], ids=["rewritten", "as_written"])
@pytest.mark.parametrize("name", list(SOURCES))
def test_each_network_is_searched_once(name: str, rewrite: bool, searches: Counter[Search]) -> None:
    _ = _compilation(name, rewrite).text
    repeated = {key: count for key, count in searches.items() if count > 1}
    assert not repeated, f"searched more than once: {repeated}"


def _refuse(*_: object, **__: object) -> None:
    raise AssertionError("the schedule planned a network: it should read term.lowering.plans")


@pytest.mark.parametrize("rewrite", [True, False], ids=["rewritten", "as_written"])
@pytest.mark.parametrize("name", list(SOURCES))
def test_the_schedule_reads_the_plans_on_the_ir(name: str, rewrite: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    compilation = _compilation(name, rewrite)
    contractions = [
        net
        for diagram in compilation.program.diagrams
        for net in compilation.optimised(diagram).networks()
        if net.lowering.native is None
    ]
    assert all(net.lowering.plans for net in contractions), "a contraction reached the schedule without its plans"
    monkeypatch.setattr(Compilation, "guard", lambda self: None)  # the memory estimate is no part of the schedule
    monkeypatch.setattr(order, "_PLANS", OrderedDict())  # nothing kept: any planning from here on would show
    monkeypatch.setattr(order, "_planned", _refuse)
    assert compilation.text


def _chain(size: int) -> Network:
    """x[a, b] * y[b, c] * z[c, d], with b of `size` entries."""
    factors = [Factor("input", "x", ("a", "b")), Factor("input", "y", ("b", "c")), Factor("input", "z", ("c", "d"))]
    return Network(factors, ("a", "d"), {"a": size_symbol("n"), "b": size, "c": 3, "d": 5})


def test_kept_plans_are_reused_and_bounded(searches: Counter[Search], monkeypatch: pytest.MonkeyPatch) -> None:
    first = order.plan_network(_chain(4))
    total = sum(searches.values())
    assert total == len(cost.REGIMES)  # one search per regime of n: the count sees cotengra
    assert order.plan_network(_chain(4)) is first  # an equal network, built again: not searched again
    assert sum(searches.values()) == total
    monkeypatch.setattr(order, "KEPT_PLANS", 2)
    order.plan_network(_chain(6))
    order.plan_network(_chain(8))
    assert len(order._PLANS) == 2  # the least recently used (the first network) went
    before = sum(searches.values())
    order.plan_network(_chain(4))
    assert sum(searches.values()) > before

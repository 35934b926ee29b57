"""The fusion pass: constants (index patterns) joined only among themselves are contracted once, at build time.

KFAC-reduce sums the unfolded input over the output positions, Σ_o Π[i, o, k]: a constant (i, k) matrix per spatial
dimension, which the pass builds once (`_cached(...)` in the generated code, "fuse:" notes in the docstring). The
pass only fires where its cost model says the work per call goes down, so a plain convolution is left alone.
"""

from __future__ import annotations

import math
import types

import pytest
import sympy
import torch

import tncompiler
from tests.cases import pattern_tensor
from tncompiler.cost import Regimes, lowered_cost
from tncompiler.ir.network import Diagram, Network
from tncompiler.ir.values import ConvPattern, Factor, Fused, size_symbol
from tncompiler.order import plan_network
from tncompiler.passes.pipeline import run_pipeline

Tensor = torch.Tensor
N = size_symbol("n")

# (I, K, stride, padding, dilation) per spatial dimension; stride 1 and padding give more output positions than
# input positions, where one (i, k) matrix beats summing windows over o.
PADDED = [(8, 3, 1, 2, 1), (6, 2, 1, 1, 1), (5, 3, 1, 2, 1)]
# Strided, and padded by at most one: fewer output than input positions.
STRIDED = [(9, 3, 2, 1, 1), (8, 2, 2, 0, 1), (7, 3, 2, 1, 1)]


def kfac_source(dims: int, config: list[tuple[int, int, int, int, int]] = PADDED) -> str:
    ins, outs, ks = (", ".join(f"{a}{j + 1}" for j in range(dims)) for a in "iok")
    patterns = " * ".join(f"p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1})" for j in range(dims))
    lines = ["index n", "index c = 2, d = 3"]
    lines += [f"index i{j + 1} = {i}, k{j + 1} = {k}" for j, (i, k, _, _, _) in enumerate(config[:dims])]
    lines += [
        f"pattern p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1}) = conv(stride={s}, padding={p}, dilation={dil})"
        for j, (_, _, s, p, dil) in enumerate(config[:dims])
    ]
    lines += [
        f"input x[n, c, {ins}]",
        f"input w[d, c, {ks}]",
        f"y[n, d, {outs}] = x[n, c, {ins}] * {patterns} * w[d, c, {ks}]",
        "Ar = kfac(y, w, batch=n, approx=reduce)",
        "A = kfac(y, w, batch=n)",
        "Br = kfac_grad(y, w, batch=n, approx=reduce)",
        "gx = vjp(y, x)",
        "gw = vjp(y, w)",
    ]
    return "\n".join(lines) + "\n"


def stages(source: str, name: str) -> dict[str, Diagram]:
    return {stage.name: stage.diagram for stage in run_pipeline(tncompiler.build_program(source).diagram(name))}


def fuse_notes(source: str, name: str) -> list[str]:
    program = tncompiler.build_program(source)
    return [note for stage in run_pipeline(program.diagram(name)) for note in stage.changes if note.startswith("fuse:")]


def body(code: str, function: str) -> str:
    return code.split(f"\ndef {function}(", 1)[1].split("\ndef ", 1)[0]


def plan_flops(diagram: Diagram) -> float:
    total = sum(sympy.sympify(plan_network(term)[0].flops) for term in diagram.terms)
    return float(sympy.sympify(total).subs({N: 32}))


def kfac_reduce_reference(x: Tensor, config: list[tuple[int, int, int, int, int]]) -> Tensor:
    """1/(N P²) Σ_n (Σ_o U)(Σ_o U)ᵀ with U the unfolded input [n, (c k...), (o...)], from dense patterns."""
    dims = x.dim() - 2
    patterns, positions = [], 1
    for i, k, s, p, dil in config[:dims]:
        out = (i + 2 * p - dil * (k - 1) - 1) // s + 1
        patterns.append(pattern_tensor(i, out, k, s, p, dil))
        positions *= out
    i_letters, o_letters, k_letters = "efg"[:dims], "pqr"[:dims], "uvw"[:dims]
    equation = f"zy{i_letters}," + ",".join(f"{i}{o}{k}" for i, o, k in zip(i_letters, o_letters, k_letters))
    summed = torch.einsum(f"{equation}->zy{k_letters}", x, *patterns).reshape(x.shape[0], -1)
    return summed.T @ summed / (x.shape[0] * positions**2)


@pytest.fixture(scope="module", params=[1, 2, 3], ids=["1d", "2d", "3d"])
def dims(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture(scope="module")
def compiled(dims: int) -> tuple[types.ModuleType, types.ModuleType]:
    source = kfac_source(dims)
    return tncompiler.load_source(source, "kfac.tnd"), tncompiler.load_source(source, "kfac.tnd", rewrite=False)


def random_input(dims: int, seed: int = 0) -> Tensor:
    shape = (3, 2, *(i for i, *_ in PADDED[:dims]))
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# --- it fires for KFAC-reduce ------------------------------------------------------------------------------------


def test_kfac_reduce_is_fused(dims: int) -> None:
    source = kfac_source(dims)
    notes = fuse_notes(source, "Ar")
    assert len(notes) == 2 * dims, notes  # one (i, k) matrix per spatial dimension, for each of the two copies
    for j in range(dims):
        assert any(
            f"p{j + 1}(i{j + 1}, o{j + 1}, k{j + 1}) -> one constant over (i{j + 1}, k{j + 1})" in n for n in notes
        )
    fused = stages(source, "Ar")["fuse"]
    assert not any(isinstance(f.pattern, ConvPattern) for term in fused.terms for f in term.factors)
    code = tncompiler.compile_source(source)
    assert "_cached(" in body(code, "Ar")
    module = tncompiler.load_source(source)
    doc = module.Ar.__doc__ or ""
    assert "Rewrites applied:" in doc and "fuse: p1(i1, o1, k1)" in doc


def test_the_fused_result_equals_the_unfused_one(dims: int, compiled: tuple[types.ModuleType, ...]) -> None:
    fused, unfused = compiled
    x = random_input(dims)
    expected = kfac_reduce_reference(x, PADDED)
    for module in (fused, unfused):
        result = module.Ar(x)
        assert result.shape == expected.shape
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-10 * expected.abs().max().item())
    torch.testing.assert_close(fused.Ar(x), unfused.Ar(x), rtol=0, atol=1e-10 * expected.abs().max().item())
    torch.testing.assert_close(fused.A(x), unfused.A(x), rtol=0, atol=1e-10 * unfused.A(x).abs().max().item())


def test_the_fused_constant_is_built_once(dims: int) -> None:
    module = tncompiler.load_source(kfac_source(dims))
    module.Ar(random_input(dims, 1))
    built = dict(module._CONSTANTS)
    assert any(key[0] not in ("conv", "select", "delta") for key in built)  # the fused matrices
    module.Ar(random_input(dims, 2))
    module.Ar(random_input(dims, 3)[:1])  # another batch size: the constants do not depend on it
    assert module._CONSTANTS.keys() == built.keys()
    assert all(module._CONSTANTS[key] is value for key, value in built.items())


def test_fusion_lowers_the_planned_work(dims: int) -> None:
    diagrams = stages(kfac_source(dims), "Ar")
    assert plan_flops(diagrams["fuse"]) < plan_flops(diagrams["simplify"])
    assert plan_flops(diagrams["fuse"]) < plan_flops(diagrams["built"])  # the network with rewrite=False
    at = Regimes()  # n at the middle regime, 32
    fused = sum(lowered_cost(term, at) for term in diagrams["fuse"].terms)
    assert fused < sum(lowered_cost(term, at) for term in diagrams["simplify"].terms)


# --- it does not fire where it would not lower the cost --------------------------------------------------------------


@pytest.mark.parametrize("name", ["y", "gx", "gw", "Br"])
def test_no_fusion_without_a_constant_group(dims: int, name: str) -> None:
    """In a convolution and its VJPs every pattern leg meets an input; Br has no pattern at all."""
    source = kfac_source(dims)
    assert fuse_notes(source, name) == []
    assert "_cached(" not in body(tncompiler.compile_source(source), name)
    diagrams = stages(source, name)
    assert [t.factors for t in diagrams["fuse"].terms] == [t.factors for t in diagrams["simplify"].terms]


def fuse_by_hand(net: Network, members: list[int]) -> Network:
    """`net` with the factors at `members` replaced by one fused constant over the legs they share with the rest."""
    parts = tuple(net.factors[k] for k in members)
    inside = {leg for f in parts for leg in f.legs}
    rest = [f for k, f in enumerate(net.factors) if k not in members]
    legs = tuple(
        leg
        for leg in dict.fromkeys(leg for f in parts for leg in f.legs)
        if leg in net.outputs or any(leg in f.legs for f in rest)
    )
    sizes = tuple((leg, net.size(leg)) for leg in dict.fromkeys(leg for f in parts for leg in f.legs))
    fused = Factor("fused", "", legs, parts[0].span, Fused(parts, legs, sizes))
    kept = {leg for f in rest for leg in f.legs} | set(legs) | set(net.outputs)
    assert inside - kept  # something is summed inside the group
    return Network(
        [*rest, fused], net.outputs, {k: v for k, v in net.sizes.items() if k in kept}, net.coefficient, net.lowering
    )


def test_a_single_pattern_summed_alone_is_always_fused() -> None:
    """Strided KFAC-reduce: summing strided windows over the few output positions has fewer multiply-adds than a
    product with the small (I, K) matrix Σ_o Π[i, o, k], but the strided sum runs slower and needs a padded copy of
    the input (bench/), so a single pattern reduced over a leg only it carries is always fused."""
    source = kfac_source(1, STRIDED)
    assert len(fuse_notes(source, "Ar")) == 2
    term = stages(source, "Ar")["fuse"].terms[0]
    assert not [f for f in term.factors if isinstance(f.pattern, ConvPattern)]
    x = torch.randn(3, 2, 9, dtype=torch.float64)
    expected = kfac_reduce_reference(x, STRIDED)
    torch.testing.assert_close(tncompiler.load_source(source).Ar(x), expected, rtol=0, atol=1e-10)


def test_a_two_pattern_group_that_would_raise_the_cost_is_left() -> None:
    """KFAC-expand in 2-d: p1·p1' (joined by o1) is fused; the p2·p2' group (joined by o2) would cost more."""
    source = kfac_source(2)
    notes = fuse_notes(source, "A")
    assert any("p1(i1, o1, k1) * p1(i1', o1, k1')" in note for note in notes)
    assert not any("p2(" in note for note in notes)
    term = stages(source, "A")["fuse"].terms[0]
    pair = [k for k, f in enumerate(term.factors) if f.name == "p2"]
    assert len(pair) == 2 and term.tensors_on("o2") == tuple(pair)
    at = Regimes()  # n at the middle regime, 32
    assert lowered_cost(fuse_by_hand(term, pair), at) >= lowered_cost(term, at)


def test_kfac_expand_fused_equals_its_reference() -> None:
    """A = 1/N Σ_{n, o} U Uᵀ, with the fused p1·p1' constant of the 2-d file."""
    x = random_input(2)
    p = [
        pattern_tensor(i, (i + 2 * pad - dil * (k - 1) - 1) // s + 1, k, s, pad, dil)
        for i, k, s, pad, dil in PADDED[:2]
    ]
    unfolded = torch.einsum("ncab,apu,bqv->ncuvpq", x, *p).reshape(3, 2 * math.prod(t.shape[2] for t in p), -1)
    expected = torch.einsum("nip,njp->ij", unfolded, unfolded) / 3
    result = tncompiler.load_source(kfac_source(2)).A(x)
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10 * expected.abs().max().item())

"""A sub-network a term holds twice is computed once (passes/share.py): the GGN diagonal J ⊙ J and the Gram matrix
of per-sample gradients, checked against torch.func and by their cost (at most 1.3x J's, and one kernel call)."""

from __future__ import annotations

import functools
import types

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import Tensor

import tncompiler
from tests.schedule.test_compute_ops import compute_ops
from tncompiler.api import build_program
from tncompiler.cost import Regimes, evaluate
from tncompiler.driver import Compilation
from tncompiler.explain import costed_ops
from tncompiler.ir.network import Network
from tncompiler.ir.values import Factor, size_symbol
from tncompiler.passes.share import share_common

TOLERANCE = 1e-10


def _legs(prefix: str, dims: int) -> str:
    return ", ".join(f"{prefix}{j + 1}" for j in range(dims))


def ggn_source(dims: int, sizes: dict[str, int], open_: tuple[str, ...] = (), stride: int = 1) -> str:
    """J[v, n, d, c, k..] = s[v, n, d, o..] * x[n, c, i..] * Π..: one per-sample weight VJP per column v of the
    loss Hessian's square root (BackPACK's DiagGGNExact), and the GGN diagonal Σ_{v,n} J²."""
    sized = lambda name: name if name in open_ else f"{name} = {sizes[name]}"  # noqa: E731
    lines = [f"index {', '.join(sized(name) for name in ('v', 'n', 'c', 'd'))}"]
    for j in range(1, dims + 1):
        lines.append(f"index {sized(f'i{j}')}, k{j} = {sizes['k']}")
        lines.append(f"pattern p{j}(i{j}, o{j}, k{j}) = conv(stride={stride}, padding={sizes['k'] // 2})")
    patterns = " * ".join(f"p{j}(i{j}, o{j}, k{j})" for j in range(1, dims + 1))
    k, o, i = _legs("k", dims), _legs("o", dims), _legs("i", dims)
    return "\n".join(
        [
            *lines,
            f"input x[n, c, {i}]",
            f"input s[v, n, d, {o}]",
            f"J[v, n, d, c, {k}] = s[v, n, d, {o}] * x[n, c, {i}] * {patterns}",
            f"diag[d, c, {k}] = J[v, n, d, c, {k}] * J[v, n, d, c, {k}]",
        ]
    )


CASES = {
    "1d": (1, {"v": 10, "n": 8, "c": 4, "d": 6, "i1": 16, "k": 3}, ()),
    "1d batch open": (1, {"v": 3, "n": 5, "c": 4, "d": 6, "i1": 16, "k": 3}, ("n",)),
    "1d v and n open": (1, {"v": 4, "n": 5, "c": 3, "d": 2, "i1": 9, "k": 3}, ("v", "n")),
    "2d": (2, {"v": 10, "n": 4, "c": 3, "d": 5, "i1": 8, "i2": 7, "k": 3}, ()),
    "2d spatial open": (2, {"v": 2, "n": 3, "c": 3, "d": 4, "i1": 8, "i2": 7, "k": 3}, ("n", "i1", "i2")),
    "3d": (3, {"v": 2, "n": 2, "c": 2, "d": 3, "i1": 5, "i2": 4, "i3": 6, "k": 3}, ()),
}


@functools.cache
def _module(text: str, rewrite: bool = True) -> types.ModuleType:
    return tncompiler.load_source(text, "ggn.tnd", rewrite=rewrite)


def _ggn_arguments(dims: int, sizes: dict[str, int], stride: int = 1) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(0)
    spatial = [sizes[f"i{j}"] for j in range(1, dims + 1)]
    x = torch.randn(sizes["n"], sizes["c"], *spatial, generator=generator, dtype=torch.float64)
    w = torch.zeros(sizes["d"], sizes["c"], *[sizes["k"]] * dims, dtype=torch.float64)
    out = _conv(x, w, stride, sizes["k"] // 2).shape[2:]
    s = torch.randn(sizes["v"], sizes["n"], sizes["d"], *out, generator=generator, dtype=torch.float64)
    return x, s


def _conv(x: Tensor, w: Tensor, stride: int, padding: int) -> Tensor:
    return getattr(F, f"conv{x.dim() - 2}d")(x, w, stride=stride, padding=padding)


def per_sample_jacobian(x: Tensor, s: Tensor, d: int, k: int, stride: int = 1) -> Tensor:
    """J[v, n] = ∂<s[v, n], conv(x[n], w)>/∂w by torch.func (independent of tnc): vmap over v and n."""
    w = torch.zeros(d, x.shape[1], *[k] * (x.dim() - 2), dtype=x.dtype)

    def inner(w: Tensor, x1: Tensor, s1: Tensor) -> Tensor:
        return (_conv(x1[None], w, stride, k // 2)[0] * s1).sum()

    per_sample = torch.func.vmap(torch.func.grad(inner), in_dims=(None, 0, 0))
    return torch.func.vmap(per_sample, in_dims=(None, None, 0))(w, x, s)  # [v, n, d, c, k..]


def _error(actual: Tensor, expected: Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("name", list(CASES))
def test_ggn_diagonal_agrees_with_torch_func(name: str) -> None:
    dims, sizes, open_ = CASES[name]
    module = _module(ggn_source(dims, sizes, open_))
    x, s = _ggn_arguments(dims, sizes)
    J = per_sample_jacobian(x, s, sizes["d"], sizes["k"])
    assert _error(module.J(x, s), J) <= TOLERANCE
    assert _error(module.diag(x, s), (J * J).sum((0, 1))) <= TOLERANCE


def _costs(text: str) -> dict[str, int]:
    """Each function's multiply-adds (as `tnc explain` totals them), at the middle regime of its call-time sizes."""
    compilation = Compilation(build_program(text, "ggn.tnd"), text, True, None)
    totals = {}
    for function, diagram in zip(compilation.functions, compilation.program.diagrams):
        total = sympy.sympify(sum(op.cost for op in costed_ops(function.body) if op.cost is not None))
        totals[diagram.name] = evaluate(total, Regimes(diagram.size_rules).middle(total.free_symbols))
    return totals


@pytest.mark.parametrize("name", list(CASES))
def test_the_ggn_diagonal_costs_at_most_1_3_jacobians(name: str) -> None:
    """Two copies of J, contracted as one network, paired s with s and x with x (2-4.5x J's multiply-adds)."""
    dims, sizes, open_ = CASES[name]
    costs = _costs(ggn_source(dims, sizes, open_))
    assert costs["diag"] <= 1.3 * costs["J"], costs


@pytest.mark.parametrize("name", ["1d", "2d", "3d"])
def test_the_ggn_diagonal_runs_one_kernel_as_j_does(name: str) -> None:
    dims, sizes, _ = CASES[name]
    module = _module(ggn_source(dims, sizes))
    x, s = _ggn_arguments(dims, sizes)
    kernels = lambda ops: [op for op in ops if "convolution" in op]  # noqa: E731
    assert len(kernels(compute_ops(lambda: module.diag(x, s)))) == len(kernels(compute_ops(lambda: module.J(x, s))))
    assert len(compute_ops(lambda: module.diag(x, s))) <= len(compute_ops(lambda: module.J(x, s))) + 2


GRAM = """index n
index m = n
index c = 3, d = 4, i1 = 9, i2 = 8, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(stride=2, padding=1)
pattern p2(i2, o2, k2) = conv(padding=1)
input x[n, c, i1, i2]
input grad_y[n, d, o1, o2]
gn[n, d, c, k1, k2] = grad_y[n, d, o1, o2] * x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)
G[n, m] = gn[n, d, c, k1, k2] * gn[m, d, c, k1, k2]
"""


def test_the_gram_matrix_computes_the_per_sample_gradients_once() -> None:
    module = _module(GRAM)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, 9, 8, generator=generator, dtype=torch.float64)
    grad_y = torch.randn(5, 4, 5, 8, generator=generator, dtype=torch.float64)
    w = torch.zeros(4, 3, 3, 3, dtype=torch.float64)

    def loss(w: Tensor, x1: Tensor, g1: Tensor) -> Tensor:
        return (F.conv2d(x1[None], w, stride=(2, 1), padding=1)[0] * g1).sum()

    rows = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(w, x, grad_y).flatten(1)
    assert _error(module.G(x, grad_y), rows @ rows.T) <= TOLERANCE
    ops = compute_ops(lambda: module.G(x, grad_y))
    assert len([op for op in ops if "convolution" in op]) == 1, ops
    costs = _costs(GRAM)
    n = Regimes().middle({size_symbol("n")}).popitem()[1]
    assert costs["G"] == costs["gn"] + n * n * 4 * 3 * 3 * 3, costs  # gn once, then the n x n Gram product


# -- the pass ------------------------------------------------------------------------------------------------------


def _optimised(text: str, name: str) -> tuple[Compilation, tuple[str, ...]]:
    compilation = Compilation(build_program(text, "t.tnd"), text, True, None)
    stages = {stage.name: stage for stage in compilation.stages[name]}
    return compilation, stages["share"].changes if "share" in stages else ()


def test_the_shared_sub_network_is_j_and_the_term_reads_it_twice() -> None:
    compilation, notes = _optimised(ggn_source(1, CASES["1d"][1]), "diag")
    diagram = compilation.optimised(compilation.program.diagram("diag"))
    assert len(notes) == 1 and "computed once as shared1" in notes[0]
    (shared,) = diagram.shared
    assert sorted(f.name for f in shared.network.factors if f.kind == "input") == ["s", "x"]
    assert shared.network.lowering.native is not None  # J is a weight gradient: PyTorch's kernel computes it
    (term,) = diagram.terms
    assert [f.kind for f in term.factors] == ["shared", "shared"]
    assert term.factors[0].legs == term.factors[1].legs  # J ⊙ J: every leg of J is met by both copies


def test_a_leg_that_only_one_copy_sums_keeps_the_copies_apart() -> None:
    """x[n, c, i] w[c, d] · x[n, e, i] w[e, d]: the renamed leg c is not summed in the same way in both copies when
    the second copy's e is an output, so nothing is shared."""
    text = """index n = 4, c = 3, e = 3, i = 5, d = 2
input x[n, c, i]
input w[c, d]
r[e, d] = x[n, c, i] * w[c, d] * x[n, e, i] * w[e, d]
"""
    _, notes = _optimised(text, "r")
    assert notes == ()


def test_copies_are_not_shared_where_the_whole_product_is_cheaper() -> None:
    """Σ a[i, c] b[c, j] a[i, e] b[e, j] with a tiny c: (aᵀa)[c, e] and (b bᵀ)[c, e] cost C²(I + J), while the shared
    H[i, j] = Σ_c a b costs I·J·C."""
    text = """index u = 1, i = 300, j = 300, c = 2, e = 2
input a[u, i, c]
input b[c, j]
r[u] = a[u, i, c] * b[c, j] * a[u, i, e] * b[e, j]
"""
    _, notes = _optimised(text, "r")
    assert notes == ()
    text_large = text.replace("c = 2, e = 2", "c = 64, e = 64").replace("i = 300, j = 300", "i = 3, j = 3")
    _, notes = _optimised(text_large, "r")
    assert len(notes) == 1


def test_equal_sub_networks_of_two_terms_are_computed_once() -> None:
    text = ggn_source(1, CASES["1d"][1]) + "\nboth[d, c, k1] = diag[d, c, k1] + diag[d, c, k1] * 2\n"
    compilation = Compilation(build_program(text, "t.tnd"), text, True, None)
    diagram = compilation.optimised(compilation.program.diagram("both"))
    assert len(diagram.terms) == 2 and len(diagram.shared) == 1
    module = _module(text)
    x, s = _ggn_arguments(1, CASES["1d"][1])
    assert _error(module.both(x, s), 3 * module.diag(x, s)) <= TOLERANCE
    ops = compute_ops(lambda: module.both(x, s))
    assert len([op for op in ops if "convolution" in op]) == 1, ops


def test_sharing_agrees_with_the_unrewritten_network() -> None:
    """A fourth power (two levels of copies) and a copy whose legs are permuted, against rewrite=False."""
    text = """index n = 3, c = 2, d = 3, i = 7, k = 3
pattern p(i, o, k) = conv(padding=1)
input x[n, c, i]
input g[n, d, o]
J[n, d, c, k] = g[n, d, o] * x[n, c, i] * p(i, o, k)
four[d, c, k] = J[n, d, c, k] * J[n, d, c, k] * J[n, d, c, k] * J[n, d, c, k]
cross[d, e, k] = J[n, d, c, k] * J[n, e, c, k]
"""
    text = text.replace("index n = 3, c = 2, d = 3", "index n = 3, c = 2, d = 3, e = d")
    rewritten, plain = _module(text), _module(text, rewrite=False)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(3, 2, 7, generator=generator, dtype=torch.float64)
    g = torch.randn(3, 3, 7, generator=generator, dtype=torch.float64)
    for name in ("four", "cross"):
        assert _error(getattr(rewritten, name)(x, g), getattr(plain, name)(x, g)) <= TOLERANCE, name


def test_share_is_a_pure_pass_over_the_diagram() -> None:
    compilation = Compilation(build_program(GRAM, "t.tnd"), GRAM, True, None)
    built = {s.name: s for s in compilation.stages["G"]}["built"].diagram
    first, notes = share_common(built, True)
    second, _ = share_common(built, True)
    assert first.terms[0].factors == second.terms[0].factors and notes
    assert built.shared == ()  # the input diagram is unchanged
    assert all(isinstance(f, Factor) for f in first.terms[0].factors)
    assert isinstance(first.shared[0].network, Network)


def test_only_what_the_function_made_is_squared_in_place() -> None:
    """J ⊙ J squares the shared J in place (no buffer as large as J); a J that two terms read, and an argument, are
    squared into new storage, and the arguments are left as they were."""
    dims, sizes, _ = CASES["2d"]
    text = ggn_source(dims, sizes) + "\nboth[d, c, k1, k2] = diag[d, c, k1, k2] + diag[d, c, k1, k2] * 2\n"
    text += "norms[c] = x[n, c, i1, i2] * x[n, c, i1, i2]\n"
    source = tncompiler.compile_source(text, "ggn.tnd")
    body = lambda name: source.split(f"\ndef {name}(")[1].split("\ndef ")[0]  # noqa: E731
    assert "shared1.square_()" in body("diag")
    assert ".square_()" not in body("both") and ".square_()" not in body("norms")
    module = _module(text)
    x, s = _ggn_arguments(dims, sizes)
    before = x.clone(), s.clone()
    expected = (per_sample_jacobian(x, s, sizes["d"], sizes["k"]) ** 2).sum((0, 1))
    assert _error(module.diag(x, s), expected) <= TOLERANCE
    assert _error(module.both(x, s), 3 * expected) <= TOLERANCE
    assert _error(module.norms(x), (x**2).sum((0, 2, 3))) <= TOLERANCE
    assert torch.equal(x, before[0]) and torch.equal(s, before[1])

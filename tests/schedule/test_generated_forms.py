"""The generated code takes the form a reviewer would write (issue 24, part 5), checked on the code and its numbers:

- a bias is passed to the kernel whatever size-1 axes the file writes (a group index g = 1 on any side);
- a shared sub-network that simplify stripped of a size-1 leg still has its readers' shape;
- the GGN diagonal of a 1x1 convolution is a batched matrix product, at most 1.3x J's multiply-adds;
- a Gram product reads a kernel's result in the kernel's order and is a plain matrix product without a batch;
- a sum after a merge sums the unmerged view in one call;
- the comments name legs as the file does.

References: F.conv*d, torch.func and dense einsum, in float64.
"""

from __future__ import annotations

import functools
import re
import types
from pathlib import Path

import pytest
import sympy
import torch
import torch.nn.functional as F
from torch import Tensor

import tncompiler
from tests.schedule.test_compute_ops import compute_ops
from tests.schedule.test_repeated_networks import ggn_source, per_sample_jacobian
from tncompiler.api import build_program
from tncompiler.backend.printer import expr_text
from tncompiler.cost import Regimes, evaluate
from tncompiler.driver import Compilation
from tncompiler.explain import costed_ops
from tncompiler.passes.lower import folded_bias
from tncompiler.schedule.contract import pairwise
from tncompiler.schedule.operands import LegNames
from tncompiler.schedule.ops import Assign, Branch, Comment, Expr, Name, Op

TOLERANCE = 1e-12
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@functools.cache
def _module(text: str) -> types.ModuleType:
    return tncompiler.load_source(text, "forms.tnd")


def _function_text(text: str, name: str) -> str:
    """The body of one generated function, from the first comment after its argument checks."""
    source = tncompiler.compile_source(text, "forms.tnd")
    found = re.search(rf'\ndef {name}\(.*?\n    """\n.*?\n(    # .*?)(?=\ndef |\Z)', source, re.S)
    assert found is not None, name
    return found.group(1)


def _error(actual: Tensor, expected: Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float((actual - expected).abs().max() / expected.abs().max().clamp_min(1e-300))


# -- a bias on size-1 axes --------------------------------------------------------------------------------------------
HEAD = """index n, g = 1, c = 3, d = 4, i1 = 6, i2 = 5, k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(stride=2, padding=1)
"""
PATTERNS = "p1(i1, o1, k1) * p2(i2, o2, k2)"
# x's channels, w's out-channels, b's legs, y's legs (of which the result's layout): g = 1 written anywhere
BIAS_LAYOUTS = {
    "all grouped": ("(g c)", "(g d)", "(g d)", "n, (g d), o1, o2"),
    "only b and y grouped": ("c", "d", "(g d)", "n, (g d), o1, o2"),
    "b plain, y grouped": ("(g c)", "(g d)", "d", "n, (g d), o1, o2"),
    "b with a group axis": ("(g c)", "(g d)", "g, d", "n, (g d), o1, o2"),
    "y with a group axis": ("(g c)", "(g d)", "(g d)", "n, g, d, o1, o2"),
    "d before g": ("(g c)", "(g d)", "(d g)", "n, (d g), o1, o2"),
}


def _bias_source(layout: str) -> str:
    x, w, b, y = BIAS_LAYOUTS[layout]
    return HEAD + (
        f"input x[n, {x}, i1, i2]\ninput w[{w}, c, k1, k2]\ninput b[{b}]\n"
        f"y[{y}] = x[n, {x}, i1, i2] * {PATTERNS} * w[{w}, c, k1, k2] + b[{b}]\n"
    )


@pytest.mark.parametrize("layout", list(BIAS_LAYOUTS))
def test_a_bias_on_size_one_axes_is_passed_to_the_kernel(layout: str) -> None:
    text = _bias_source(layout)
    body = _function_text(text, "y")
    assert re.search(r"torch\.nn\.functional\.conv2d\(x, w, b(_flat)?, ", body), body
    code = [line.split("  # ")[0] for line in body.split("\n") if not line.lstrip().startswith("#")]
    assert not any(" + " in line or ".squeeze(" in line for line in code), body
    generator = torch.Generator().manual_seed(0)
    x, w, b = (
        torch.randn(shape, generator=generator, dtype=torch.float64) for shape in ((2, 3, 6, 5), (4, 3, 3, 3), (4,))
    )
    expected = F.conv2d(x, w, b, stride=(1, 2), padding=1)
    b_in = b.reshape(1, 4) if layout == "b with a group axis" else b
    actual = _module(text).y(x, w, b_in)
    assert _error(actual.reshape(expected.shape), expected) <= TOLERANCE
    assert actual.shape == ((2, 1, 4, 6, 3) if layout == "y with a group axis" else expected.shape)


@pytest.mark.parametrize("layout", list(BIAS_LAYOUTS))
def test_a_folded_bias_is_no_term_of_its_own(layout: str) -> None:
    """The kernel adds the bias: no sum of terms (the memory estimate reads these ops, so it folds it too)."""
    text = _bias_source(layout)
    compilation = Compilation(build_program(text, "forms.tnd"), text, True, None)
    diagram = compilation.optimised(compilation.program.diagram("y"))
    assert folded_bias(diagram) is not None
    assert not [op for op in compilation.functions[0].body if op.kind == "sum"]


def test_a_bias_the_kernel_cannot_take_is_added_after_it() -> None:
    """A scaled convolution: the kernel would add the bias unscaled."""
    text = HEAD + (
        "input x[n, c, i1, i2]\ninput w[d, c, k1, k2]\ninput b[(g d)]\n"
        f"y[n, (g d), o1, o2] = 2 * x[n, c, i1, i2] * {PATTERNS} * w[d, c, k1, k2] + b[(g d)]\n"
    )
    assert "conv2d(x, w, padding" in _function_text(text, "y").replace("stride=(1, 2), ", "")
    generator = torch.Generator().manual_seed(1)
    x, w, b = (
        torch.randn(shape, generator=generator, dtype=torch.float64) for shape in ((2, 3, 6, 5), (4, 3, 3, 3), (4,))
    )
    expected = 2 * F.conv2d(x, w, stride=(1, 2), padding=1) + b.reshape(4, 1, 1)
    assert _error(_module(text).y(x, w, b), expected) <= TOLERANCE


# -- a shared sub-network stripped of a size-1 leg -------------------------------------------------------------------
UNIT_SHARED = """index n = 5, m = n, c = 1, d = 3, e = 4
input x[n, c, e]
input g[n, d, e]
gn[n, d, c] = g[n, d, e] * x[n, c, e]
G[n, m] = gn[n, d, c] * gn[m, d, c]
D[d, c] = gn[n, d, c] * gn[n, d, c]
"""


def test_a_shared_sub_network_that_lost_a_size_one_leg_keeps_its_readers_shape() -> None:
    """Simplify dropped c (size 1) from the sub-network computed once; its reader D still sums over [n, d, c]: D
    came back as [d] and was broadcast wrong."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(5, 1, 4, generator=generator, dtype=torch.float64)
    g = torch.randn(5, 3, 4, generator=generator, dtype=torch.float64)
    gn = torch.einsum("nde,nce->ndc", g, x)
    module = _module(UNIT_SHARED)
    assert _error(module.D(x, g), (gn * gn).sum(0)) <= TOLERANCE
    assert _error(module.G(x, g), torch.einsum("ndc,mdc->nm", gn, gn)) <= TOLERANCE


# -- the GGN diagonal of a 1x1 convolution ----------------------------------------------------------------------------
ONE_BY_ONE = {
    "1d": (1, {"v": 4, "n": 3, "c": 5, "d": 6, "i1": 9, "k": 1}, (), 1),
    "2d stride 2": (2, {"v": 10, "n": 4, "c": 3, "d": 5, "i1": 8, "i2": 7, "k": 1}, (), 2),
    "2d batch open": (2, {"v": 3, "n": 4, "c": 3, "d": 5, "i1": 6, "i2": 6, "k": 1}, ("n",), 1),
    "3d": (3, {"v": 2, "n": 2, "c": 2, "d": 3, "i1": 5, "i2": 4, "i3": 6, "k": 1}, (), 1),
}


def _costs(text: str) -> dict[str, float]:
    """Each function's multiply-adds, at the middle regime of its call-time sizes."""
    compilation = Compilation(build_program(text, "ggn.tnd"), text, True, None)
    totals = {}
    for function, diagram in zip(compilation.functions, compilation.program.diagrams, strict=True):
        total = sympy.sympify(sum(op.cost for op in costed_ops(function.body) if op.cost is not None))
        totals[diagram.name] = float(evaluate(total, Regimes(diagram.size_rules).middle(total.free_symbols)))
    return totals


@pytest.mark.parametrize("name", list(ONE_BY_ONE))
def test_a_1x1_ggn_diagonal_is_a_batched_matmul_within_1_3_jacobians(name: str) -> None:
    """A per-example weight gradient of a 1x1 kernel was PyTorch's grouped kernel (batch 1, n groups), then the
    square summed over a permuted view of it: 1.47x J's time."""
    dims, sizes, open_, stride = ONE_BY_ONE[name]
    text = ggn_source(dims, sizes, open_, stride)
    module = _module(text)
    generator = torch.Generator().manual_seed(3)
    spatial = [sizes[f"i{j}"] for j in range(1, dims + 1)]
    out = [(i - 1) // stride + 1 for i in spatial]
    x = torch.randn(sizes["n"], sizes["c"], *spatial, generator=generator, dtype=torch.float64)
    s = torch.randn(sizes["v"], sizes["n"], sizes["d"], *out, generator=generator, dtype=torch.float64)
    J = per_sample_jacobian(x, s, sizes["d"], 1, stride)
    assert _error(module.J(x, s), J) <= TOLERANCE
    assert _error(module.diag(x, s), (J * J).sum((0, 1))) <= TOLERANCE
    ops = compute_ops(lambda: module.diag(x, s))
    assert "bmm" in ops and not any("convolution" in op for op in ops), ops
    costs = _costs(text)
    assert costs["diag"] <= 1.3 * costs["J"], costs


def test_a_grouped_1x1_weight_gradient_summed_over_the_batch_stays_a_kernel() -> None:
    """Groups that are real groups (the batch summed): PyTorch's grouped kernel measured faster than einsum."""
    text = """index n = 4, g = 2, c = 3, d = 4, i1 = 6, i2 = 6, k1 = 1, k2 = 1
pattern p1(i1, o1, k1) = conv()
pattern p2(i2, o2, k2) = conv()
input x[n, (g c), i1, i2]
input grad_y[n, (g d), o1, o2]
gw[(g d), c, k1, k2] = grad_y[n, (g d), o1, o2] * x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)
"""
    assert "torch.nn.grad.conv2d_weight(" in _function_text(text, "gw")


# -- Gram products ----------------------------------------------------------------------------------------------------
def test_a_gram_product_reads_a_kernel_result_in_the_kernels_order() -> None:
    """The per-sample gradients (a weight kernel's [n, e, c, k1, k2]) were permuted to the sub-network's leg order,
    then copied by the Gram product's reshape, then multiplied by bmm over a batch of one."""
    text = (EXAMPLES / "conv2d_curvature.tnd").read_text()
    body = _function_text(text, "G")
    assert ".permute(" not in body and "torch.bmm(" not in body, body
    assert "result = result_rows @ result_rows.T" in body, body
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(5, 2, 8, 6, generator=generator, dtype=torch.float64)
    grad_y = torch.randn(5, 3, 4, 6, generator=generator, dtype=torch.float64)
    module = _module(text)
    ops = compute_ops(lambda: module.G(x, grad_y))
    assert not {"clone", "copy_", "_to_copy"} & set(ops), ops  # nothing laid out again
    w = torch.zeros(3, 2, 3, 3, dtype=torch.float64)

    def loss(w: Tensor, x1: Tensor, g1: Tensor) -> Tensor:
        return (F.conv2d(x1[None], w, stride=(2, 1), padding=1)[0] * g1).sum()

    rows = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(w, x, grad_y).flatten(1)
    assert _error(module.G(x, grad_y), rows @ rows.T) <= TOLERANCE


def test_a_gram_product_of_an_argument_needs_no_permute() -> None:
    """KFC's input factor of a dense layer, Σ_n x xᵀ: the argument as it is, transposed, times itself."""
    text = tncompiler.compile_file(EXAMPLES / "linear_kfac.tnd")
    assert "result = x.T @ x  # [c, c']" in text
    assert "result = grad_y.T @ grad_y  # [d, d']" in text
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    text = "index n = 6, c = 5, e = c\ninput x[n, c]\nA[c, e] = 0.5 * x[n, c] * x[n, e]\n"
    assert _error(_module(text).A(x), 0.5 * x.T @ x) <= TOLERANCE


# -- sums -------------------------------------------------------------------------------------------------------------
def test_a_sum_after_a_merge_is_one_sum_of_the_unmerged_view() -> None:
    """The bias's VJP Σ_{n, o1, o2} grad_y: grad_y.reshape(n, d, o1·o2).sum(0).sum(1) before (a merge, and a
    temporary of d·o1·o2 entries per sum)."""
    text = """index n, d = 4, o1 = 5, o2 = 6
input grad_y[n, d, o1, o2]
input b[d]
y[n, d, o1, o2] = b[d]
gb = vjp(y, b, cotangent=grad_y)
"""
    assert "result = grad_y.sum((0, 2, 3))  # [d]" in _function_text(text, "gb")
    grad_y = torch.randn(3, 4, 5, 6, dtype=torch.float64)
    assert _error(_module(text).gb(grad_y), grad_y.sum((0, 2, 3))) <= TOLERANCE


def test_a_square_summed_over_a_merged_strided_slice_is_not_copied_for_the_merge() -> None:
    """The GGN diagonal of a 1x1 kernel for a squared loss, Σ x[n, c, S·o1, o2]²: the strided slice was reshaped (a
    copy) to merge (o1 o2) before the square and two sums."""
    text = (EXAMPLES / "conv2d_curvature.tnd").read_text()
    for old, new in (
        ("k1 = 3, k2 = 3", "k1 = 1, k2 = 1"),
        ("stride=2, padding=1", "stride=2"),
        ("conv(padding=1)", "conv()"),
    ):
        assert old in text
        text = text.replace(old, new)
    body = _function_text(text, "diag")
    assert ".reshape(n" not in body and "x_view = x[:, :, 0:7:2]  # [n, c, o1, i2]" in body, body
    assert "result = x_view.square().sum((0, 2, 3))  # [c]" in body, body
    x = torch.randn(3, 2, 8, 6, dtype=torch.float64)
    expected = x[:, :, ::2].square().sum((0, 2, 3)).reshape(1, 2, 1, 1).expand(3, 2, 1, 1)
    assert _error(_module(text).diag(x), expected) <= TOLERANCE


def _printed(value: Expr) -> str:
    return expr_text(value, {})


def test_the_runs_of_a_sum_stay_apart_where_kept_axes_lie_between_them() -> None:
    """KFAC-reduce's Σ_o of a patchify [n, c, o1, k1, o2, k2]: one sum per run reads contiguous rows (4x faster);
    where only a leading and a trailing run are summed, one sum reads them so too."""
    t = Name("t")
    assert _printed(pairwise([t], [("n", "c", "o1", "k1", "o2", "k2")], ("n", "c", "k1", "k2"))) == "t.sum(2).sum(3)"
    assert _printed(pairwise([t], [("n", "c", "o1", "o2")], ("c",))) == "t.sum((0, 2, 3))"
    assert _printed(pairwise([t], [("n", "c", "o1", "k1", "o2")], ("c", "k1"))) == "t.sum(0).sum(1).sum(2)"


# -- the names in comments --------------------------------------------------------------------------------------------
def _notes(ops: tuple[Op, ...]) -> list[str]:
    found: list[str] = []
    for op in ops:
        if isinstance(op, Comment):
            found.append(op.text)
        elif isinstance(op, Assign) and op.note:
            found.append(op.note)
        elif isinstance(op, Branch):
            found += [note for _, body in op.arms for note in _notes(body)]
    return found


@pytest.mark.parametrize("example", sorted(path.name for path in EXAMPLES.glob("*.tnd")))
def test_comments_name_the_legs_as_the_file_does(example: str) -> None:
    """Copies the compiler made of an index (`i1~4`) and legs it merged (`o1.o2`) leaked into the comments."""
    text = (EXAMPLES / example).read_text()
    compilation = Compilation(build_program(text, example), text, True, None)
    for function in compilation.functions:
        for note in _notes(function.body):
            assert "~" not in note and not re.search(r"[A-Za-z]\w*'*\.[A-Za-z]", note), (function.name, note)


def test_each_terms_copies_of_an_index_are_shown_by_the_files_name() -> None:
    """The JVP's two terms each hold their own copies of c, i1, ..: both are shown by the file's names."""
    source = tncompiler.compile_file(EXAMPLES / "conv2d_jvp.tnd")
    assert "# term 1 of 2: tangent_x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]" in source
    assert "# term 2 of 2: x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * tangent_w[d, c, k1, k2]" in source


def test_leg_names_prime_a_copy_whose_index_is_in_the_network() -> None:
    names = LegNames({"i1", "i1~4", "c~2", "o1~0.o2~1", "d'"})
    assert [names.leg(leg) for leg in ("i1", "i1~4", "c~2", "o1~0.o2~1", "d'")] == ["i1", "i1'", "c", "(o1 o2)", "d'"]
    assert names.text(("c~2", "i1~4")) == "[c, i1']"

"""Regressions found by the whole-program fuzzer (tests/properties/test_program_fuzz.py), each as its minimal program.

- the window rule turned a pattern with a repeated leg, Π(i, o, i) once simplify pruned a `delta(i, k)`, into a
  window of the tensor on i and dropped i's size while the window's k leg (i again) still used it: `LintError: index
  'i' has no size` (sums seed 131);
- the Gram product (a tensor times a renamed copy of itself, laid out once and multiplied by its transpose) took
  `v[c, a, d] * v[d, a, c]`, whose copy carries the same free indices swapped (a diagonal, not an outer product), and
  permuted a 4-axis product with 2 axes (sums seeds 631, ...).

Every number is checked in float64, with rewrites and without, against one dense `torch.einsum` of the formula as
written (index patterns written out entry by entry by `cases.pattern_tensor`, copy tensors as `torch.eye`/ones).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from tests import cases
from tncompiler.api import build_program, compile_source, load_source
from tncompiler.driver import Compilation
from tncompiler.ir.values import WindowOp

pytestmark = pytest.mark.usefixtures("one_thread")

Reference = Callable[[dict[str, Tensor]], Tensor]


def _check(source: str, function: str, shapes: dict[str, tuple[int, ...]], reference: Reference, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    args = {name: torch.randn(shape, generator=generator, dtype=torch.float64) for name, shape in shapes.items()}
    expected = reference(args)
    for rewrite in (True, False):
        actual = getattr(load_source(source, f"fuzz{seed}.tnd", rewrite=rewrite), function)(**args)
        error = cases.relative_error(actual, expected)
        assert error <= cases.TOLERANCE[torch.float64], f"{function}, rewrite={rewrite}: relative error {error:.3g}"


# -- a pattern with a repeated leg is no window ------------------------------------------------------------------

# Π(i, o, k) · delta(two of its legs): simplify prunes the delta and renames one leg to the other, leaving the
# pattern a diagonal on a tensor that carries i alone. (I, K, padding, dilation, the right-hand side, its einsum);
# stride 1, O = I + padding - D·(K - 1). Π(i, o, o) is still a window (its diagonal an einsum's); Π(i, o, i) and
# Π(i, i, k) stay constants.
DIAGONALS: dict[str, tuple[int, int, cases.Padding, int, str, str]] = {
    "i-k": (2, 2, "same", 2, "u[a, i] * x[d, o] * p(i, o, k) * delta(i, k) * delta(d)", "ai,do,iok,ik,d->a"),
    "i-o": (3, 3, "same", 1, "u[a, i] * w[k] * p(i, o, k) * delta(i, o)", "ai,k,iok,io->a"),
    "o-k": (3, 2, 0, 1, "u[a, i] * x[d, o] * p(i, o, k) * delta(o, k) * delta(d)", "ai,do,iok,ok,d->a"),
}


@pytest.mark.parametrize("name", DIAGONALS)
def test_window_rule_takes_a_pattern_with_a_repeated_leg_only_where_i_is_single(name: str) -> None:
    in_size, kernel, padding, dilation, rhs, spec = DIAGONALS[name]
    left, right = cases.pad_pair(padding, dilation, kernel)
    out = in_size + left + right - dilation * (kernel - 1)
    source = (
        f"index a = 3, d = 2, i = {in_size}, k = {kernel}\n"
        f"pattern p(i, o, k) = conv(stride=1, padding={padding}, dilation={dilation})\n"
        "input u[a, i]\ninput x[d, o]\ninput w[k]\n"
        f"y[a] = {rhs}\n"
    )
    pattern = cases.pattern_tensor(in_size, out, kernel, 1, left, dilation)
    sizes = {"i": in_size, "o": out, "k": kernel, "d": 2}
    copies = [_copy_tensor(legs, sizes) for legs in spec.split("->")[0].split(",")[3:]]

    def reference(args: dict[str, Tensor]) -> Tensor:
        inputs = [args[name] for name in ("u", "x", "w") if f"{name}[" in rhs]
        return torch.einsum(spec, *inputs, pattern, *copies)

    shapes = {"u": (3, in_size), "x": (2, out), "w": (kernel,)}
    _check(source, "y", {name: shape for name, shape in shapes.items() if f"{name}[" in rhs}, reference, 131)
    assert _windowed(source) == (name == "o-k")


def _windowed(source: str) -> bool:
    """Whether the lowered term reads a tensor through a window view (the pattern went) rather than as a constant."""
    program = build_program(source, "diagonal.tnd")
    (term,) = Compilation(program).optimised(program.diagram("y")).terms
    views = [f.view.ops for f in term.factors if f.view is not None]
    return any(isinstance(op, WindowOp) for ops in views for op in ops)


def _copy_tensor(legs: str, sizes: dict[str, int]) -> Tensor:
    """delta over one leg (a sum: ones) or two (the identity)."""
    size = sizes[legs[0]]
    return torch.eye(size, dtype=torch.float64) if len(legs) == 2 else torch.ones(size, dtype=torch.float64)


def test_fuzz_seed_131_as_found() -> None:
    """The fuzzer's own reduction: one input read twice, on i and on o."""
    source = (
        "index a = 3, b = 1, d = 3, i = 2, k = 2\n"
        "pattern p(i, o, k) = conv(stride=1, padding=same, dilation=2)\n"
        "input x[d, o, b]\n"
        "y[a] = x[a, i, b] * x[d, o, b] * p(i, o, k) * delta(i, k) * delta(d)\n"
    )
    pattern = cases.pattern_tensor(2, 2, 2, 1, 1, 2)  # same padding, dilation 2, K = 2: (1, 1), O = 2

    def reference(args: dict[str, Tensor]) -> Tensor:
        x, eye, ones = args["x"], torch.eye(2, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        return torch.einsum("aib,dob,iok,ik,d->a", x, x, pattern, eye, ones)

    _check(source, "y", {"x": (3, 2, 1)}, reference, 131)


# -- a tensor times its copy with swapped legs is no Gram product ------------------------------------------------

SWAPPED = "index a = 3, c = 2, d = 2\ninput x[c]\ninput v[c, a, d]\ny[d] = {scale}v[c, a, d] * v[d, a, c] * x[c]\n"


@pytest.mark.parametrize("scale", ["", "0.25 * "], ids=["plain", "scaled"])
def test_gram_product_refuses_a_copy_with_its_free_legs_swapped(scale: str) -> None:
    """`cut` slices y, which leaves v · v as its own step: the Gram product's [c, d, c', d'] was permuted as [c, d]."""
    source = SWAPPED.format(scale=scale) + "cut = slice(y, d=1:2:2)\n"
    factor = 0.25 if scale else 1.0

    def full(args: dict[str, Tensor]) -> Tensor:
        return factor * torch.einsum("cad,dac,c->d", args["v"], args["v"], args["x"])

    shapes = {"x": (2,), "v": (2, 3, 2)}
    _check(source, "y", shapes, full, 631)
    _check(source, "cut", shapes, lambda args: full(args)[1:2:2], 631)


def test_gram_product_of_a_copy_with_swapped_legs_keeps_both_open() -> None:
    """The product itself as the result: z[c, d] = Σ_a v[c, a, d] · v[d, a, c] (a diagonal of the Gram matrix)."""
    source = "index a = 3, c = 2, d = 2\ninput v[c, a, d]\nz[c, d] = 2 * v[c, a, d] * v[d, a, c]\n"
    _check(source, "z", {"v": (2, 3, 2)}, lambda args: 2 * torch.einsum("cad,dac->cd", args["v"], args["v"]), 7)


def test_gram_product_still_serves_a_renamed_copy() -> None:
    """A true Gram product (the copy's free legs are new indices) is still one: u uᵀ per batch entry."""
    source = "index n = 2, a = 3, c = 4, e = 4\ninput v[n, c, a]\nz[n, c, e] = v[n, c, a] * v[n, e, a]\n"
    assert "torch.bmm(" in compile_source(source, "gram.tnd")
    _check(source, "z", {"v": (2, 4, 3)}, lambda args: torch.einsum("nca,nea->nce", args["v"], args["v"]), 3)

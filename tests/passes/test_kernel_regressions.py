"""Regressions of issue 19: silent wrong answers in the pattern rewrites and the kernel lowering.

- strided-reshape (K = S) dropped the sums over o and k of a pattern that no tensor carried through i (a term of
  copy tensors and one pattern), losing a factor |k|;
- the window rule appended the gather of a sampled o after its window, and later windows of the same tensor came
  after that gather: the generated code pads one run of windows, so they read no padding (wrong numbers, or a
  shape error from einsum/tensordot) in 4-d sampled weight gradients;
- a kernel tap sliced out of a padded, dilated convolution that reads only padding cut more rows than the input
  holds before the weight-gradient kernel (conv1d_weight refused the shapes) instead of giving zeros.

Every number is checked in float64 against references that share no code with the compiler: index patterns written
out entry by entry (`cases.pattern_tensor`), dense einsums over them and torch.autograd through F.conv1d.
"""

from __future__ import annotations

import pytest
import torch

from tests import cases
from tncompiler.api import build_program, load_source
from tncompiler.driver import Compilation
from tncompiler.ir.values import WindowOp

pytestmark = pytest.mark.usefixtures("one_thread")


# -- a kernel-equals-stride pattern summed by copy tensors -------------------------------------------------------

# (left-hand side, right-hand side, reference from the dense pattern P[i, o, k])
COUNTS = {
    "k-then-i": ("count[o]", "p(i, o, k) * delta(k) * delta(i)", lambda p: p.sum((0, 2))),
    "i-then-k": ("count[o]", "p(i, o, k) * delta(i) * delta(k)", lambda p: p.sum((0, 2))),
    "per-tap": ("tap[k]", "p(i, o, k) * delta(o) * delta(i)", lambda p: p.sum((0, 1))),
    "everything": ("total[]", "delta(k) * p(i, o, k) * delta(i) * delta(o)", lambda p: p.sum()),
}


@pytest.mark.parametrize("sizes", [(6, 2, 2), (9, 3, 3), (7, 2, 2), (7, 2, 3)], ids=lambda s: "I{}-K{}-S{}".format(*s))
@pytest.mark.parametrize("name", COUNTS)
def test_strided_reshape_keeps_the_sums_of_a_pattern_no_tensor_carries(name: str, sizes: tuple[int, int, int]) -> None:
    in_size, kernel, stride = sizes
    lhs, rhs, reference = COUNTS[name]
    text = f"index i = {in_size}, k = {kernel}\npattern p(i, o, k) = conv(stride={stride})\n{lhs} = {rhs}\n"
    function = lhs.split("[")[0]
    rewritten = getattr(load_source(text, "counts.tnd"), function)()
    plain = getattr(load_source(text, "counts.tnd", rewrite=False), function)()
    out = (in_size - kernel) // stride + 1
    expected = reference(cases.pattern_tensor(in_size, out, kernel, stride, 0, 1)).to(rewritten.dtype)
    assert rewritten.shape == expected.shape and torch.equal(rewritten, expected)
    assert torch.equal(plain, expected)


# -- sampled 4-d weight gradients on window views ----------------------------------------------------------------

# Each was wrong (or raised from einsum/tensordot) for some sampled o before the fix: windows after a gather
# read no padding.
FOUR_D = {
    "mixed": cases.conv([5, 4, 5, 4], [3, 2, 2, 3], stride=[2, 1, 1, 2], padding=[1, 0, (1, 0), 1],
                        dilation=[1, 2, 1, 1]),
    "dilated": cases.conv([5, 6, 5, 4], [3, 3, 2, 2], stride=1, padding=[2, 1, 0, 1], dilation=[2, 1, 1, 2]),
    "unit-kernels": cases.conv([5, 1, 4, 3], [1, 2, 1, 2], stride=[1, 1, 2, 1], padding=[1, 1, 1, (1, 0)],
                               dilation=[3, 1, 1, 1]),
}  # fmt: skip
SAMPLED = ("o1", "o2", "o3", "o4", "n")


def _sampled_source(spec: cases.Conv) -> str:
    lines = ["gw = vjp(y, w)"] + [f"s_{index} = sample(gw, index={index}, p=0.5)" for index in SAMPLED]
    lines.append("s13 = sample(sample(gw, index=o1, p=0.5), index=o3, p=0.5)")
    return cases.source(spec, cases.NOTHING_OPEN, lines)


def _weight_gradient(spec: cases.Conv, args: dict[str, torch.Tensor], grad_y: torch.Tensor) -> torch.Tensor:
    """torch.autograd through the dense einsum over explicit patterns (PyTorch has no 4-d convolution)."""
    w = args["w"].detach().requires_grad_()
    (gradient,) = torch.autograd.grad(cases.pattern_reference(spec, args["x"], w), w, grad_y)
    return gradient


@pytest.mark.parametrize("name", FOUR_D)
def test_sampled_4d_weight_gradient_at_p_one_is_the_exact_vjp(name: str) -> None:
    spec = FOUR_D[name]
    module = load_source(_sampled_source(spec), "sampled4d.tnd")
    args = cases.all_arguments(spec)
    x, grad_y = args["x"], args["grad_y"]
    expected = _weight_gradient(spec, args, grad_y)
    cases.assert_close(module.gw(x, grad_y), expected)
    for index in SAMPLED:
        sampled = getattr(module, f"s_{index}")(x, grad_y, p=1.0, generator=torch.Generator().manual_seed(0))
        cases.assert_close(sampled, expected)
    cases.assert_close(module.s13(x, grad_y, p_o1=1.0, p_o3=1.0), expected)


@pytest.mark.parametrize("axis", [1, 2, 3, 4])
def test_each_sampled_4d_draw_is_the_masked_vjp(axis: int) -> None:
    """At p = 0.5: the VJP of grad_y masked to the kept positions (the generator's draw, rand < p) over p."""
    spec = FOUR_D["mixed"]
    function = getattr(load_source(_sampled_source(spec), "sampled4d.tnd"), f"s_o{axis}")
    args = cases.all_arguments(spec)
    for seed in range(3):
        kept = torch.rand(spec.pattern_out()[axis - 1], generator=torch.Generator().manual_seed(seed)) < 0.5
        shape = [1] * args["grad_y"].dim()
        shape[1 + axis] = -1
        masked = args["grad_y"] * kept.double().view(shape) / 0.5
        actual = function(args["x"], args["grad_y"], generator=torch.Generator().manual_seed(seed))
        cases.assert_close(actual, _weight_gradient(spec, args, masked))


def test_a_views_windows_form_one_run_after_a_sampled_window() -> None:
    """The generated code and the memory guard pad a view's windows once, before the first: lowering keeps them
    together, the gathers of sampled windows after them."""
    program = build_program(_sampled_source(FOUR_D["mixed"]), "sampled4d.tnd")
    compilation = Compilation(program)
    checked = 0
    for diagram in program.diagrams:
        for term in compilation.optimised(diagram).terms:
            for factor in term.factors:
                ops = factor.view.ops if factor.view is not None else ()
                windows = [k for k, op in enumerate(ops) if isinstance(op, WindowOp)]
                if len(windows) > 1:
                    assert windows == list(range(windows[0], windows[-1] + 1)), f"{diagram.name}: {ops}"
                    checked += 1
    assert checked, "some view has several windows: the test looks at the case it guards"


# -- a kernel tap that reads only padding ------------------------------------------------------------------------

# (I, K, S, D, padding): tap 0 of every window lies left of the input.
PADDING_ONLY = {
    "dilated-left-padded": (5, 3, 1, 3, (3, 0)),
    "short-input": (2, 3, 1, 3, 3),
    "padded-both-sides": (3, 3, 1, 3, (4, 1)),
    "dilation-two": (2, 3, 1, 2, (4, 1)),
}


@pytest.mark.parametrize("name", PADDING_ONLY)
def test_a_weight_gradient_tap_that_reads_only_padding_is_zero(name: str) -> None:
    in_size, kernel, stride, dilation, padding = PADDING_ONLY[name]
    spec = cases.conv([in_size], [kernel], stride=stride, padding=padding, dilation=dilation)
    lines = ["gw = vjp(y, w)"] + [f"g{k} = slice(gw, k1={k}:{k + 1})" for k in range(kernel)]
    module = load_source(cases.source(spec, cases.NOTHING_OPEN, lines), "padding_tap.tnd")
    args = cases.all_arguments(spec)
    w = args["w"].detach().requires_grad_()
    (expected,) = torch.autograd.grad(cases.forward(spec, args["x"], w), w, args["grad_y"])
    assert not expected[..., 0].any(), "tap 0 reads only padding: the case the test guards"
    for k in range(kernel):
        actual = getattr(module, f"g{k}")(args["x"], args["grad_y"])
        assert actual.shape == expected[..., k : k + 1].shape
        assert torch.allclose(actual, expected[..., k : k + 1], rtol=0, atol=1e-12)

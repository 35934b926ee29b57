"""Sampled output positions run on PyTorch's kernels: for the weight VJP the kept windows of x are gathered one
after the other and read with stride K; for the input VJP a transpose convolution writes the kept windows with
stride K and they are added back into place. Each draw is checked against the exact VJP of an output gradient masked
to the same kept positions and scaled by 1/p (the draw is reproduced from the seed), over a sweep of
hyper-parameters."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import pytest
import torch

import tncompiler
from tests import cases
from tests.cases import Conv, assert_close

# Every file writes the group index, also for one group: x[n, (g c), i1, ...] with g = 1.
conv_spec = functools.partial(cases.conv, group_index=True)

SPECS = {
    "1d-dilated-padded": conv_spec([17], [3], padding=4, dilation=4),
    "1d-stride-same": conv_spec([12], [4], stride=1, padding="same"),
    "2d-stride2-pad1": conv_spec([9, 8], [3, 3], stride=2, padding=1),
    "2d-asymmetric": conv_spec([10, 7], [3, 2], stride=[2, 1], padding=[(2, 0), (1, 1)], dilation=[1, 2]),
    "2d-patchify": conv_spec([8, 8], [4, 4], stride=4),
    "2d-stride-over-kernel": conv_spec([11, 9], [2, 3], stride=3),
    "2d-grouped": conv_spec([8, 6], [3, 3], padding=[1, "valid"], groups=3, c_in=2, c_out=3),
    "2d-depthwise": conv_spec([7, 7], [3, 3], stride=[1, 2], padding=["same", 1], groups=4, c_in=1, c_out=2),
    "2d-unread-rows": conv_spec([10, 6], [3, 3], stride=3, padding=0),
    "3d": conv_spec([5, 6, 4], [3, 2, 2], stride=[2, 1, 1], padding=[1, 0, (1, 0)], dilation=[1, 2, 1]),
}
# 1x1 kernels: kernel-one turns the sampled pattern into a strided slice and a gather of x (no kernel call needed)
POINTWISE = {
    "2d-pointwise-stride2": conv_spec([9, 8], [1, 1], stride=2, c_in=3),
    "1d-pointwise-grouped": conv_spec([7], [1], groups=2, c_out=3),
}


def weight_reference(spec: Conv, x: torch.Tensor, w: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """The weight VJP by autograd through PyTorch's convolution."""
    w = w.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(cases.forward(spec, x, w), w, grad_y)
    return grad


def input_reference(spec: Conv, x: torch.Tensor, w: torch.Tensor, grad_y: torch.Tensor) -> torch.Tensor:
    """The input VJP by autograd through PyTorch's convolution."""
    x = x.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(cases.forward(spec, x, w), x, grad_y)
    return grad


def kept_mask(size: int, p: float, seed: int) -> torch.Tensor:
    """The entries the generated code keeps with a generator seeded with `seed`: rand(size) < p."""
    return (torch.rand(size, generator=torch.Generator().manual_seed(seed)) < p).double()


REFERENCES = {"w": weight_reference, "x": input_reference}


def sampled_functions(spec: Conv, which: str, p: float) -> tuple[Callable[..., torch.Tensor], ...]:
    """s1, s2, ...: the VJP of y with respect to `which` (w or x), sampled on o1, o2, ..."""
    axes = range(1, spec.dims + 1)
    lines = [f"v = vjp(y, {which})"] + [f"s{a} = sample(v, index=o{a}, p={p})" for a in axes]
    module = cases.load(cases.source(spec) + "\n".join(lines) + "\n")
    return tuple(getattr(module, f"s{a}") for a in axes)


@pytest.mark.parametrize("which", ["w", "x"])
@pytest.mark.parametrize("name", list(SPECS) + list(POINTWISE))
@pytest.mark.parametrize("p", [0.5, 0.2])
def test_each_draw_is_the_masked_vjp(which: str, name: str, p: float) -> None:
    spec = {**SPECS, **POINTWISE}[name]
    x, w = cases.argument_list(spec, batch=3, dtype=torch.float64)
    grad_y = torch.randn(3, spec.groups * spec.c_out, *spec.pattern_out(), dtype=torch.float64)
    empty = 0
    for axis, function in enumerate(sampled_functions(spec, which, p)):
        for seed in range(4):
            mask = kept_mask(spec.pattern_out()[axis], p, seed)
            shape = [1] * grad_y.dim()
            shape[2 + axis] = -1
            expected = REFERENCES[which](spec, x, w, grad_y * mask.view(shape) / p)
            other = x if which == "w" else w
            assert_close(function(other, grad_y, generator=torch.Generator().manual_seed(seed)), expected)
            empty += not mask.any()
    if p == 0.2 and name == "3d":
        assert empty, "some draw keeps no position: the sweep covers the kernels' empty case"


@pytest.mark.parametrize("name", ["2d-asymmetric", "3d"])
def test_float32(name: str) -> None:
    spec = SPECS[name]
    x, w = cases.argument_list(spec, batch=2, dtype=torch.float32)
    grad_y = torch.randn(2, spec.groups * spec.c_out, *spec.pattern_out())
    mask = kept_mask(spec.pattern_out()[0], 0.5, 7).float()
    expected = weight_reference(spec, x, w, grad_y * mask.view(1, 1, -1, *[1] * (spec.dims - 1)) / 0.5)
    assert_close(sampled_functions(spec, "w", 0.5)[0](x, grad_y, generator=torch.Generator().manual_seed(7)), expected)


def _first_strides(body: str, kernel: str) -> list[int]:
    """The stride of the first spatial axis of each call of `kernel` (written as a keyword; left out: 1)."""
    strides = []
    for start in (m.start() for m in re.finditer(re.escape(kernel), body)):
        call = body[start : body.find("\n    ", body.find(")\n", start))]  # the call, over however many lines
        found = re.search(r"stride=\(?(\d+)", call)
        strides.append(int(found.group(1)) if found else 1)
    return strides


@pytest.mark.parametrize("name", SPECS)
def test_the_kernel_reads_only_the_kept_windows(name: str) -> None:
    """One weight-gradient call with stride K on the sampled axis (depthwise: on grad_y times a mask of the kept rows,
    made on the host: no gather, no scatter); no dense pattern, no window einsum."""
    spec = SPECS[name]
    code = tncompiler.compile_source(cases.source(spec) + "gw = vjp(y, w)\ns1 = sample(gw, index=o1, p=0.5)\n")
    body = code.split("\ndef s1(", 1)[1].split("\ndef ", 1)[0]
    assert "_conv_pattern" not in body and "einsum" not in body
    # o1's pattern comes first among the kernel's axes (a dense rewrite may have taken others away)
    stride = _first_strides(body, "torch.nn.grad.conv")
    if spec.c_in == 1 and spec.groups > 1:  # depthwise: grad_y's dropped rows are zeroed instead
        assert ".index_fill_(0, drawn_o1, 1)" in body and "index_select" not in body and "index_copy_" not in body
        assert len(stride) == 1 and int(stride[0]) == spec.stride[0]
    else:
        assert len(stride) == 1 and int(stride[0]) == spec.kernel[0]


@pytest.mark.parametrize("name", ["2d-asymmetric", "2d-depthwise"])
def test_the_input_vjp_writes_only_the_kept_windows(name: str) -> None:
    """One transpose-convolution call with stride K on the sampled axis, its rows added back into place."""
    spec = SPECS[name]
    code = tncompiler.compile_source(cases.source(spec) + "gx = vjp(y, x)\ns1 = sample(gx, index=o1, p=0.5)\n")
    body = code.split("\ndef s1(", 1)[1].split("\ndef ", 1)[0]
    assert "_conv_pattern" not in body and "einsum" not in body and ".index_add_(2, " in body
    stride = _first_strides(body, "torch.nn.functional.conv_transpose")
    assert len(stride) == 1 and int(stride[0]) == spec.kernel[0]


@pytest.mark.parametrize("name", POINTWISE)
def test_a_sampled_pointwise_vjp_gathers_rows_without_a_pattern(name: str) -> None:
    spec = POINTWISE[name]
    code = tncompiler.compile_source(cases.source(spec) + "gw = vjp(y, w)\ns1 = sample(gw, index=o1, p=0.5)\n")
    body = code.split("\ndef s1(", 1)[1].split("\ndef ", 1)[0]
    assert "_conv_pattern" not in body
    assert ".index_select(2, keep_o1)" in body or "_take(x" in body

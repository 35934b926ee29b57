"""Compiled convolutions agree with torch.nn.functional.conv1d/2d/3d over a grid of hyper-parameters."""

from __future__ import annotations

import functools
import random

import pytest
import torch

from tests import cases
from tests.cases import Conv, Padding

# Every file writes the group index, also for one group: x[n, (g c), i1] with g = 1.
conv_spec = functools.partial(cases.conv, group_index=True)

CASES: dict[str, Conv] = {
    # 1-d
    "1d-plain": conv_spec([8], [3]),
    "1d-defaults": conv_spec([7], [2], stride=None, padding=None, dilation=None, bias=True),
    "1d-stride2-pad1": conv_spec([9], [3], stride=2, padding=1, bias=True),
    "1d-stride3-pad2": conv_spec([10], [2], stride=3, padding=2),
    "1d-dilation2": conv_spec([9], [3], dilation=2, padding=1),
    "1d-stride2-dilation3": conv_spec([10], [2], stride=2, dilation=3, padding=(1, 0)),
    "1d-pair-pad": conv_spec([7], [3], padding=(2, 0), bias=True),
    "1d-pair-pad-right": conv_spec([7], [4], stride=2, padding=(0, 3)),
    "1d-same-odd": conv_spec([8], [3], padding="same"),
    "1d-same-even": conv_spec([8], [4], padding="same", bias=True),
    "1d-same-dilated": conv_spec([9], [2], padding="same", dilation=3),
    "1d-valid": conv_spec([9], [4], padding="valid", stride=2),
    "1d-kernel-is-input": conv_spec([5], [5]),
    "1d-kernel1-stride2": conv_spec([6], [1], stride=2, c_in=3, c_out=4),
    "1d-stride-over-kernel": conv_spec([10], [2], stride=4, padding=1),
    "1d-groups2": conv_spec([8], [3], groups=2, c_in=2, c_out=3, padding=1, bias=True),
    "1d-depthwise": conv_spec([8], [3], groups=3, c_in=1, c_out=1, padding=1),
    "1d-depthwise-multiplier2": conv_spec([8], [3], groups=4, c_in=1, c_out=2, stride=2, bias=True),
    # 2-d
    "2d-plain": conv_spec([6, 6], [3, 3], bias=True),
    "2d-stride2-pad1": conv_spec([8, 8], [3, 3], stride=2, padding=1),
    "2d-nonsquare": conv_spec([7, 10], [3, 2], c_in=3, c_out=2, bias=True),
    "2d-per-dim": conv_spec([7, 10], [2, 3], stride=[2, 1], padding=[1, 0], dilation=[1, 2]),
    "2d-pair-pads": conv_spec([6, 9], [3, 2], padding=[(1, 0), (0, 2)], stride=[1, 2], bias=True),
    "2d-mixed-pads": conv_spec([8, 7], [4, 3], padding=["same", (2, 1)], stride=[1, 3]),
    "2d-same": conv_spec([6, 7], [3, 4], padding="same", dilation=[2, 1], bias=True),
    "2d-valid": conv_spec([7, 8], [2, 3], padding="valid"),
    "2d-groups2": conv_spec([6, 6], [3, 3], groups=2, c_in=2, c_out=2, stride=2, padding=1, bias=True),
    "2d-groups3-nonsquare": conv_spec([5, 8], [2, 3], groups=3, c_in=1, c_out=2, dilation=[2, 1], padding=[0, 1]),
    "2d-depthwise": conv_spec([7, 7], [3, 3], groups=4, c_in=1, c_out=1, padding="same", bias=True),
    "2d-groups1-explicit": conv_spec([5, 5], [2, 2], groups=1, c_in=4, c_out=3, stride=2),
    # 3-d
    "3d-plain": conv_spec([4, 5, 6], [2, 3, 2], bias=True),
    "3d-strided": conv_spec([6, 5, 7], [3, 2, 3], stride=[2, 1, 3], padding=[1, 0, 1], dilation=[1, 2, 1]),
    "3d-pair-pads": conv_spec([5, 4, 6], [2, 2, 3], padding=[(1, 0), (0, 1), (2, 1)], c_in=1, c_out=2),
    "3d-same-groups": conv_spec([4, 5, 4], [3, 2, 3], padding="same", groups=2, c_in=1, c_out=2, bias=True),
    "3d-depthwise-valid": conv_spec([5, 5, 5], [2, 3, 2], padding="valid", groups=3, c_in=1, c_out=1, stride=2),
}


def _random_padding(rng: random.Random, stride: int | None) -> Padding:
    choices: list[Padding] = [0, 1, 2, (rng.randint(0, 2), rng.randint(0, 2)), "valid"]
    choices += ["same"] if stride == 1 else []
    return rng.choice(choices)


def _random_spec(rng: random.Random) -> Conv:
    """A small random 1-3 d convolution whose every dimension has at least one output."""
    dims = rng.choice((1, 1, 2, 2, 3))
    while True:
        spatial, kernel = [rng.randint(3, 8) for _ in range(dims)], [rng.randint(1, 3) for _ in range(dims)]
        stride: list[int | None] = [rng.randint(1, 3) for _ in range(dims)]
        dilation: list[int | None] = [rng.randint(1, 2) for _ in range(dims)]
        padding: list[Padding | None] = [_random_padding(rng, s) for s in stride]
        groups = rng.choice((1, 2, 3))
        spec = conv_spec(spatial, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                         c_in=rng.randint(1, 2), c_out=rng.randint(1, 2), bias=rng.random() < 0.5)
        if min(spec.pattern_out()) >= 1:
            return spec


SWEEP = [_random_spec(random.Random(seed)) for seed in range(24)]

# A case that once crashed: two plans with equal FLOPs at the middle size regime (ties must be ordered).
PLAN_TIE_SOURCE = """
index n
index c = 1, d = 2
index i1 = 5, k1 = 3, i2 = 3, k2 = 1
pattern p1(i1, o1, k1) = conv()
pattern p2(i2, o2, k2) = conv()
input x[n, c, i1, i2]
input w[d, c, k1, k2]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
"""


def _check(spec: Conv, batch: int, dtype: torch.dtype) -> None:
    module = cases.load(cases.source(spec))
    arguments = cases.argument_list(spec, batch, dtype, seed=batch)
    cases.assert_close(module.y(*arguments), cases.forward(spec, *arguments))


@pytest.mark.parametrize("spec", list(CASES.values()), ids=list(CASES))
def test_conv_matches_torch(spec: Conv) -> None:
    """float64 and float32, and two batch sizes bound at call time on the same compiled module."""
    for batch, dtype in ((1, torch.float64), (3, torch.float64), (2, torch.float32)):
        _check(spec, batch, dtype)


@pytest.mark.parametrize("spec", [pytest.param(spec, id=f"seed{seed}")
                                  for seed, spec in enumerate(SWEEP)])
def test_random_sweep_matches_torch(spec: Conv) -> None:
    """Seeded random hyper-parameters (the same every run), float64 with two batch sizes."""
    for batch in (1, 2):
        _check(spec, batch, torch.float64)


def test_plan_tie_reproducer() -> None:
    """Minimal reproducer of the FLOPs tie between contraction plans (seed0 of the sweep hits it too)."""
    spec = conv_spec([5, 3], [3, 1], c_in=1, c_out=2)
    module = cases.load(PLAN_TIE_SOURCE)
    x, w = cases.argument_list(spec, 2, torch.float64)
    cases.assert_close(module.y(x, w), cases.forward(spec, x, w))


def test_same_module_serves_both_batch_sizes() -> None:
    spec = CASES["2d-groups2"]
    module = cases.load(cases.source(spec))
    for batch in (2, 5):
        x, w, b = cases.argument_list(spec, batch, torch.float64)
        assert module.y(x, w, b).shape == (batch, 4, 3, 3)
    assert cases.load(cases.source(spec)) is module


def test_output_sizes_match_the_spec() -> None:
    """The case builder's own size arithmetic agrees with PyTorch (so the other tests size their inputs right)."""
    for name, spec in CASES.items():
        x, w, *b = cases.argument_list(spec, 1, torch.float64)
        assert cases.forward(spec, x, w).shape[2:] == spec.pattern_out(), name


def test_generated_source_is_valid_tnd() -> None:
    source = cases.source(CASES["2d-mixed-pads"])
    assert "pattern p1(i1, o1, k1) = conv(stride=1, padding=same, dilation=1)" in source
    assert "pattern p2(i2, o2, k2) = conv(stride=3, padding=(2, 1), dilation=1)" in source
    assert "y[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2]" in source

"""Compiled transpose convolutions agree with torch.nn.functional.conv_transpose1d/2d/3d.

A transpose convolution declares both sizes of each pattern: its input carries the o legs, its output the
i legs, and output_padding is a larger declared i. The weight is laid out [(g c), d, k...] as in PyTorch.
"""

from __future__ import annotations

import functools

import pytest
import torch

import tncompiler
from tests import cases
from tests.cases import Conv

# Every file writes the group index, also for one group: x[n, (g c), o1] with g = 1.
conv_spec = functools.partial(cases.conv, group_index=True)

CASES: dict[str, Conv] = {
    # 1-d
    "1d-plain": conv_spec([5], [3], transpose=True),
    "1d-defaults": conv_spec([5], [2], stride=None, padding=None, dilation=None, transpose=True, bias=True),
    "1d-stride2": conv_spec([5], [3], stride=2, transpose=True, bias=True),
    "1d-stride2-pad1-outpad1": conv_spec([6], [3], stride=2, padding=1, output_padding=1, transpose=True),
    "1d-stride3-outpad2-dilation2": conv_spec([4], [3], stride=3, output_padding=2, dilation=2, transpose=True),
    "1d-pad2-dilation3": conv_spec([6], [3], padding=2, dilation=3, transpose=True, bias=True),
    "1d-stride-over-kernel": conv_spec([4], [2], stride=3, padding=1, output_padding=1, transpose=True),
    "1d-groups2": conv_spec([5], [3], groups=2, c_in=2, c_out=3, stride=2, padding=1, transpose=True, bias=True),
    "1d-depthwise": conv_spec([6], [3], groups=3, c_in=1, c_out=1, stride=2, output_padding=1, transpose=True),
    "1d-groups4-multiplier2": conv_spec([5], [2], groups=4, c_in=1, c_out=2, dilation=2, transpose=True),
    "1d-pair-pad": conv_spec([5], [3], stride=2, padding=(2, 0), transpose=True, bias=True),
    "1d-pair-pad-outpad": conv_spec([5], [4], stride=2, padding=(0, 3), output_padding=1, transpose=True),
    # 2-d
    "2d-plain": conv_spec([4, 4], [3, 3], transpose=True, bias=True),
    "2d-stride2-pad1-outpad1": conv_spec([4, 4], [3, 3], stride=2, padding=1, output_padding=1, transpose=True),
    "2d-nonsquare": conv_spec([3, 5], [2, 3], stride=[2, 3], padding=[1, 0], output_padding=[1, 2],
                              dilation=[1, 2], c_in=3, c_out=2, transpose=True, bias=True),
    "2d-groups2": conv_spec([4, 5], [3, 2], groups=2, c_in=2, c_out=1, stride=2, padding=[1, 0], transpose=True),
    "2d-depthwise": conv_spec([4, 4], [3, 3], groups=4, c_in=1, c_out=1, stride=2, output_padding=1,
                              padding=1, transpose=True, bias=True),
    "2d-dilated-grouped": conv_spec([3, 4], [2, 3], groups=3, c_in=1, c_out=2, dilation=[3, 2], padding=[2, 1],
                                    transpose=True),
    "2d-pair-pads": conv_spec([4, 3], [3, 2], stride=2, padding=[(1, 0), (0, 1)], transpose=True, bias=True),
    # 3-d
    "3d-strided": conv_spec([3, 2, 3], [2, 3, 2], stride=[2, 1, 2], padding=[0, 1, 1], output_padding=[1, 0, 1],
                            groups=2, c_in=1, c_out=2, transpose=True, bias=True),
}


@pytest.mark.parametrize("spec", list(CASES.values()), ids=list(CASES))
def test_transpose_matches_torch(spec: Conv) -> None:
    """float64 and float32, and two batch sizes bound at call time on the same compiled module."""
    module = cases.load(cases.source(spec))
    for batch, dtype in ((1, torch.float64), (3, torch.float64), (2, torch.float32)):
        arguments = cases.argument_list(spec, batch, dtype, seed=batch)
        cases.assert_close(module.y(*arguments), cases.forward(spec, *arguments))


def test_output_sizes_match_torch() -> None:
    """The declared i sizes are PyTorch's output sizes (so the references above compare like with like)."""
    for name, spec in CASES.items():
        x, w, *b = cases.argument_list(spec, 1, torch.float64)
        assert cases.forward(spec, x, w).shape[2:] == spec.pattern_in(), name


def test_transpose_source_declares_both_sizes() -> None:
    source = cases.source(CASES["1d-stride2-pad1-outpad1"])
    assert "index i1 = 12, o1 = 6, k1 = 3" in source
    assert "y[n, (g d), i1] = x[n, (g c), o1] * p1(i1, o1, k1) * w[(g c), d, k1]" in source


def test_output_padding_of_a_full_stride_is_a_size_clash() -> None:
    """output_padding >= stride cannot be written: the declared o disagrees with the one inferred from i."""
    spec = conv_spec([4], [3], stride=2, output_padding=2, transpose=True)
    with pytest.raises(tncompiler.TncError, match="size clash"):
        tncompiler.compile_source(cases.source(spec))

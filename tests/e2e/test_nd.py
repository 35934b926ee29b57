"""4-d and 5-d convolutions (which torch.nn.functional lacks) against a dense einsum over explicit patterns.

The reference builds each index pattern Π[i, o, k] = 1 iff i = o·S + k·D − P_left entry by entry from the
definition and contracts everything in one torch.einsum; the same reference is first checked against
F.conv1d/2d/3d and F.conv_transpose1d/2d/3d so that it can be trusted where PyTorch has no convolution.
"""

from __future__ import annotations

import functools

import pytest
import torch

from tests import cases
from tests.cases import Conv, pattern_tensor

# Every file writes the group index, also for one group: x[n, (g c), i1, ...] with g = 1.
conv_spec = functools.partial(cases.conv, group_index=True)

REFERENCE_CASES: dict[str, Conv] = {
    "1d": conv_spec([9], [3], stride=2, padding=(2, 1), dilation=2, groups=2, c_in=1, c_out=2, bias=True),
    "1d-same-even": conv_spec([8], [4], padding="same"),
    "2d": conv_spec([7, 6], [3, 2], stride=[2, 1], padding=[1, (0, 1)], dilation=[1, 2], c_in=3, c_out=2),
    "3d": conv_spec([5, 4, 6], [2, 3, 2], stride=[1, 2, 2], padding=[0, 1, (1, 0)], groups=2, c_in=1, c_out=1,
                    bias=True),
    "1d-transpose": conv_spec([5], [3], stride=2, padding=1, output_padding=1, dilation=2, groups=2, c_in=1,
                              c_out=2, transpose=True, bias=True),
    "2d-transpose": conv_spec([3, 4], [2, 3], stride=[2, 3], padding=[(1, 0), 1], output_padding=[1, 0],
                              transpose=True),
    "3d-transpose": conv_spec([2, 3, 2], [2, 2, 3], stride=[2, 1, 2], padding=[0, 1, 1], groups=2, c_in=1, c_out=1,
                              transpose=True),
}

ND_CASES: dict[str, Conv] = {
    "4d": conv_spec([4, 3, 5, 3], [2, 1, 3, 2], stride=[2, 1, 1, 2], padding=[(1, 0), 0, "same", 1],
                    dilation=[1, 1, 2, 1], groups=2, c_in=1, c_out=2, bias=True),
    "4d-valid": conv_spec([3, 4, 3, 4], [2, 2, 2, 3], padding="valid", stride=[1, 2, 1, 1], c_in=2, c_out=2),
    "5d": conv_spec([3, 4, 3, 3, 4], [2, 2, 1, 3, 2], stride=[1, 2, 1, 1, 2], padding=[0, 1, 0, "same", (0, 1)],
                    c_in=2, c_out=1, bias=True),
    "4d-transpose": conv_spec([2, 3, 2, 3], [2, 2, 3, 1], stride=[2, 1, 2, 1], padding=[0, 1, 1, 0],
                              output_padding=[1, 0, 1, 0], groups=2, c_in=1, c_out=1, transpose=True, bias=True),
}


def test_pattern_tensor_follows_the_definition() -> None:
    """I = 5, O = 3, K = 3, S = 2, D = 1, P_left = 1: o = 0 sees i = -1 (padding), 0, 1; o = 1 sees 1, 2, 3;
    o = 2 sees 3, 4, 5 (padding)."""
    pattern = pattern_tensor(5, 3, 3, 2, 1, 1)
    assert pattern.sum().item() == 7  # 9 (o, k) pairs, two of them on the padding
    assert [pattern[:, 0, k].nonzero().flatten().tolist() for k in range(3)] == [[], [0], [1]]
    assert [pattern[:, 1, k].argmax().item() for k in range(3)] == [1, 2, 3]
    assert pattern[4, 2, 1].item() == 1 and pattern[:, 2, 2].sum().item() == 0


@pytest.mark.parametrize("spec", list(REFERENCE_CASES.values()), ids=list(REFERENCE_CASES))
def test_pattern_reference_matches_torch(spec: Conv) -> None:
    """The einsum reference itself is right where PyTorch can check it (1-3 d)."""
    arguments = cases.argument_list(spec, 2, torch.float64)
    expected = cases.forward(spec, *arguments)  # F.conv*d or F.conv_transpose*d
    cases.assert_close(cases.pattern_reference(spec, *arguments), expected)


@pytest.mark.parametrize("spec", list(ND_CASES.values()), ids=list(ND_CASES))
def test_nd_conv_matches_pattern_reference(spec: Conv) -> None:
    module = cases.load(cases.source(spec))
    for batch, dtype in ((1, torch.float64), (2, torch.float64), (2, torch.float32)):
        arguments = cases.argument_list(spec, batch, dtype, seed=batch)
        cases.assert_close(module.y(*arguments), cases.pattern_reference(spec, *arguments))

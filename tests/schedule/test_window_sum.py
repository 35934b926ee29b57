"""The generated modules' `_window_sum` helper (KFAC-reduce): Σ_o t[.., o·S + k·D − P, ..] for each k, checked
against a contraction with the index pattern written out entry by entry, over random hyper-parameters (negative
padding, stride beyond the kernel, windows that only partly overlap the input, any axis)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.cases import pattern_tensor
from tncompiler.backend.runtime import helper_source

NAMESPACE: dict[str, object] = {"torch": torch}
exec("\n\n".join(helper_source({"_window_sum"})), NAMESPACE)  # the helpers exactly as generated modules carry them
window_sum = NAMESPACE["_window_sum"]


@st.composite
def patterns(draw: st.DrawFn) -> tuple[int, int, int, int, int, int]:
    """(I, O, K, stride, pad_left, dilation) with 1 ≤ O ≤ the number of windows that start before the end."""
    size, kernel = draw(st.integers(1, 30)), draw(st.integers(1, 6))
    stride, dilation, pad = draw(st.integers(1, 5)), draw(st.integers(1, 4)), draw(st.integers(-4, 9))
    windows = (size + 2 * max(pad, 0) - dilation * (kernel - 1) - 1) // stride + 1
    out = draw(st.integers(1, max(1, windows)))
    return size, out, kernel, stride, pad, dilation


@settings(max_examples=300, deadline=None)
@given(patterns(), st.integers(0, 2))
def test_window_sums_equal_the_pattern_product(pattern: tuple[int, int, int, int, int, int], axis: int) -> None:
    size, out, kernel, stride, pad, dilation = pattern
    shape = [2, 3, 2]
    shape[axis] = size
    t = torch.randn(shape, dtype=torch.float64)
    expected = torch.tensordot(t, pattern_tensor(size, out, kernel, stride, pad, dilation).sum(1), dims=([axis], [0]))
    actual = window_sum(t, axis, size, out, kernel, stride, pad, dilation)  # type: ignore[operator]
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12)


def test_the_pad_helper_crops_and_pads_like_a_shifted_window() -> None:
    """_pad(t, (left, right)) gives t_padded[j] = t[j - left] (zero outside t) for j < size + left + right, also
    where a crop goes past the end (only padding stays) and where nothing changes (t itself, no copy)."""
    exec("\n\n".join(helper_source({"_pad"})), NAMESPACE)
    pad = NAMESPACE["_pad"]
    t = torch.arange(1.0, 4.0)
    for left in range(-5, 4):
        for right in range(-5, 4):
            length = 3 + left + right
            expected = torch.tensor([t[j - left].item() if 0 <= j - left < 3 else 0.0 for j in range(max(length, 0))])
            torch.testing.assert_close(pad(t, (left, right)), expected)  # type: ignore[operator]
    assert pad(t, (0, 0)) is t  # type: ignore[operator]
    grid = torch.arange(12.0).reshape(3, 4)
    torch.testing.assert_close(pad(grid, (1, -2, -1, 0)), torch.nn.functional.pad(grid[1:, :2], (1, 0)))  # type: ignore[operator]
    assert pad(grid, (4, -9, 0, 0)).shape == (3, 0)  # type: ignore[operator,union-attr]

"""One file, any shape: every operation of a sweep of (transpose) convolutions, compiled with the batch, the batch
and spatial sizes, or the batch, spatial and channel sizes left open, and called at two sizes each, against
PyTorch in float64 (1e-10)."""

from __future__ import annotations

import inspect

import pytest

from tests import cases
from tests.cases import Conv, conv

CASES: dict[str, Conv] = {
    "1d k3 s1 p1 bias": conv([7], [3], padding=1, bias=True),
    "1d k3 s2 p(1,2)": conv([9], [3], stride=2, padding=(1, 2)),
    "1d k2 d3 valid": conv([10], [2], dilation=3, padding="valid"),
    "1d k4 same": conv([8], [4], padding="same", bias=True),
    "2d k3 s2 p1 g2": conv([7, 6], [3, 3], stride=2, padding=1, groups=2),
    "2d depthwise k3 p1": conv([6, 5], [3, 3], padding=1, groups=3, c_in=1, c_out=2),
    "2d k(2,3) s(1,2) d(2,1) p(0,(1,0))": conv([7, 8], [2, 3], stride=[1, 2], dilation=[2, 1], padding=[0, (1, 0)]),
    "2d k1 s2 (shortcut)": conv([6, 7], [1, 1], stride=2, bias=True),
    "2d k2 s2 (patchify)": conv([6, 8], [2, 2], stride=2),
    "3d k(2,3,2) s(1,2,1) p1": conv([4, 5, 4], [2, 3, 2], stride=[1, 2, 1], padding=1),
    "transpose 1d k3 s2 p1 op1": conv([4], [3], stride=2, padding=1, output_padding=1, transpose=True, bias=True),
    "transpose 1d k3 s1 p1": conv([5], [3], padding=1, transpose=True),
    "transpose 2d k3 s(2,1) p(1,0) g2": conv([3, 4], [3, 3], stride=[2, 1], padding=[1, 0], groups=2, transpose=True),
    "transpose 2d k2 s2 p(0,1)": conv([3, 3], [2, 2], stride=2, padding=[0, (1, 0)], transpose=True),
}
# Each case is called twice: as written, then larger by one entry per spatial axis (and per channel group when
# the channels are open) with another batch.
CALLS = ((2, 0, 0), (3, 1, 1))


def _calls(case: Conv, level: str) -> list[Conv]:
    spatial, channels = "spatial" in cases.OPEN_LEVELS[level], "channels" in cases.OPEN_LEVELS[level]
    return [case.resized(batch, grow if spatial else 0, more if channels else 0) for batch, grow, more in CALLS]


@pytest.mark.parametrize("level", list(cases.OPEN_LEVELS))
@pytest.mark.parametrize("name", list(CASES))
def test_every_operation_at_two_call_sizes(name: str, level: str) -> None:
    case = CASES[name]
    module = cases.load(cases.source(case, cases.OPEN_LEVELS[level], cases.statements(case)))
    for call in _calls(case, level):
        args = cases.all_arguments(call)
        for op in cases.operations(case):
            actual = cases.call(getattr(module, op.name), call, op.takes, args)
            expected = cases.reference(op, call, args)
            assert actual.shape == expected.shape, (op.name, call)
            scale = expected.abs().max().item() or 1.0
            error = (actual - expected).abs().max().item() / scale
            assert error <= 1e-10, f"{op.name} at {call}: relative error {error:.3g}"


def test_the_input_vjp_of_a_strided_convolution_takes_its_input_size_as_keywords() -> None:
    """As torch.nn.grad.conv2d_input takes input_size: the output size does not say which input it came from."""
    case = CASES["2d k3 s2 p1 g2"]
    module = cases.load(cases.source(case, cases.OPEN_LEVELS["spatial"], ["gx = vjp(y, x)"]))
    assert str(inspect.signature(module.gx)) == "(w, grad_y, *, i1, i2)"
    assert "i1: " in (module.gx.__doc__ or "")


def test_a_stride_one_input_vjp_solves_the_input_size() -> None:
    case = CASES["1d k3 s1 p1 bias"]
    module = cases.load(cases.source(case, cases.OPEN_LEVELS["spatial"], ["gx = vjp(y, x)"]))
    assert str(inspect.signature(module.gx)) == "(w, grad_y)"

"""kfac_factors on layers called as users call them."""

from __future__ import annotations

import torch
from torch import nn

import tncompiler


class Upsample(nn.Module):
    def __init__(self, extra: int, output_size: list[int] | None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.up = nn.ConvTranspose2d(3, 2, 3, stride=2, padding=1, output_padding=extra)
        self.output_size = output_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x, output_size=self.output_size).flatten(1)


def test_a_transpose_convolution_called_with_output_size() -> None:
    """The input factor was built from the module's own output size, then divided by the call's positions (74 %
    off): a call with output_size= must give the factors of the layer whose output padding gives that size."""
    x = torch.randn(4, 3, 5, 5, dtype=torch.float64)
    called = Upsample(0, [10, 10]).double()
    padded = Upsample(1, None).double()
    target = torch.randn(4, 200, dtype=torch.float64)
    for approx in ("expand", "reduce"):
        ours = tncompiler.kfac_factors(called, nn.MSELoss(), (x, target), approx=approx)["up"]
        expected = tncompiler.kfac_factors(padded, nn.MSELoss(), (x, target), approx=approx)["up"]
        for a, b in zip(ours, expected):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

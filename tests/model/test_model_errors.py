"""Model-level errors name the module and say why; the model-level API takes what users pass."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import tncompiler


def test_a_model_without_a_supported_layer_is_named() -> None:
    """kfac_factors raised torch's "`inputs` argument to `grad()` cannot be empty"."""
    model = nn.Sequential(nn.Flatten(), nn.ReLU())
    data = [(torch.randn(4, 3), torch.randint(0, 3, (4,)))]
    with pytest.raises(ValueError, match=r"kfac_factors: model Sequential has no supported layer .* nn.Linear"):
        tncompiler.kfac_factors(model, nn.CrossEntropyLoss(), data)
    with pytest.raises(ValueError, match=r"KFAC: model Sequential has no supported layer"):
        tncompiler.KFAC(model, nn.CrossEntropyLoss())


def test_a_subclass_that_overrides_forward_says_why() -> None:
    class Scaled(nn.Conv2d):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match=r"Scaled, a subclass of nn.Conv2d that overrides forward"):
        tncompiler.compile_layer(Scaled(2, 3, 3))
    model = nn.Sequential(Scaled(2, 3, 3), nn.Flatten())
    with pytest.raises(TypeError, match=r"'0' .* overrides forward"):
        tncompiler.kfac_factors(model, nn.MSELoss(), [(torch.randn(2, 2, 5, 5), torch.randn(2, 27))])


def test_one_pair_is_data_too() -> None:
    """kfac_factors(model, loss, (x, y)) failed with "too many values to unpack"."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    one = tncompiler.kfac_factors(model, nn.MSELoss(), (x, y))
    listed = tncompiler.kfac_factors(model, nn.MSELoss(), [(x, y)])
    assert one.keys() == listed.keys() == {"0", "2"}
    for name in one:
        for a, b in zip(one[name], listed[name]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)

"""Plain-PyTorch references for the examples: what each generated function must equal.

`REFERENCES[file][function]` takes the same arguments, in the same order, as the function that
`tncompiler.load(file)` generates for that definition. `CALL_TIME_SIZES` gives the demo a size for
every index that a file declares without one (it is bound from the arguments at call time).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = ["CALL_TIME_SIZES", "REFERENCES", "Reference"]

Reference = Callable[..., torch.Tensor]

# Sizes for the indices declared without one, e.g. `index n` (the batch).
CALL_TIME_SIZES: dict[str, int] = {"n": 4, "batch": 3}


def conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv1d(x, w, b, stride=2, padding=1)


def conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, b, stride=2, padding=1, groups=2)


def depthwise_conv2d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, w, padding=1, groups=x.shape[1])


def conv3d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv3d(x, w, b, stride=(1, 2, 2), padding=(1, 1, 0))


def transpose_conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)


def dilated_conv1d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return F.conv1d(x, w, b, padding="same", dilation=2)


REFERENCES: dict[str, dict[str, Reference]] = {
    "conv1d.tnd": {"y": conv1d},
    "conv2d.tnd": {"y": conv2d},
    "depthwise_conv2d.tnd": {"y": depthwise_conv2d},
    "conv3d.tnd": {"y": conv3d},
    "transpose_conv2d.tnd": {"y": transpose_conv2d},
    "dilated_conv1d.tnd": {"y": dilated_conv1d},
    "matmul.tnd": {"c": torch.matmul, "bc": torch.matmul},
}

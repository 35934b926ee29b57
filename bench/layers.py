"""The benchmark's layer suite: convolutions with the hyper-parameters of real CNN layers.

Kernel size, stride, padding, dilation, groups and channel counts are those of the named layer. To keep the whole
CPU run at a few minutes on two cores, the batch is small (2 to 8) and some spatial sizes are smaller than in the
real network; each entry says what it scaled. `QUICK` is a subset for `--quick` and the GPU check.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["LAYERS", "QUICK", "Layer", "by_name"]


@dataclass(frozen=True)
class Layer:
    """One convolution: `x [batch, c_in, *size] -> y [batch, c_out, *output]`, weight `[c_out, c_in/groups, *k]`."""

    name: str
    origin: str  # where the hyper-parameters come from, and what was scaled
    c_in: int
    c_out: int
    kernel: tuple[int, ...]
    size: tuple[int, ...]
    batch: int
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1

    def __post_init__(self) -> None:
        ones, zeros = (1,) * self.dims, (0,) * self.dims
        object.__setattr__(self, "stride", self.stride or ones)
        object.__setattr__(self, "padding", self.padding or zeros)
        object.__setattr__(self, "dilation", self.dilation or ones)
        lengths = {len(self.kernel), len(self.size), len(self.stride), len(self.padding), len(self.dilation)}
        if len(lengths) != 1 or self.c_in % self.groups or self.c_out % self.groups:
            raise ValueError(f"inconsistent layer {self.name}")

    @property
    def dims(self) -> int:
        return len(self.kernel)

    @property
    def output(self) -> tuple[int, ...]:
        return tuple(
            (i + 2 * p - d * (k - 1) - 1) // s + 1
            for i, k, s, p, d in zip(self.size, self.kernel, self.stride, self.padding, self.dilation, strict=True)
        )

    @property
    def positions(self) -> int:
        return math.prod(self.output)

    @property
    def in_features(self) -> int:
        """Rows of the unfolded input per group: (c_in / groups) * prod(kernel)."""
        return self.c_in // self.groups * math.prod(self.kernel)

    def describe(self) -> str:
        size, k = "x".join(map(str, self.size)), "x".join(map(str, self.kernel))
        text = f"{self.dims}d {self.c_in}->{self.c_out} k{k} s{self.stride[0]} p{self.padding[0]}"
        text += f" d{self.dilation[0]}" if max(self.dilation) > 1 else ""
        text += f" g{self.groups}" if self.groups > 1 else ""
        return f"{text} in {size} batch {self.batch}"


def _layer(name: str, dims: int, c_in: int, c_out: int, k: int, size: int | tuple[int, ...], **kw: int | str) -> Layer:
    """A layer with the same kernel, stride (s), padding (p) and dilation (d) along every spatial axis."""
    each = {key: (int(kw[key]),) * dims for key in ("s", "p", "d") if key in kw}
    sizes = size if isinstance(size, tuple) else (size,) * dims
    hyper = {"stride": each.get("s", ()), "padding": each.get("p", ()), "dilation": each.get("d", ())}
    groups, batch, origin = int(kw.get("groups", 1)), int(kw["batch"]), str(kw["origin"])
    return Layer(name, origin, c_in, c_out, (k,) * dims, sizes, batch, groups=groups, **hyper)


# fmt: off
LAYERS: tuple[Layer, ...] = (
    _layer("resnet18.conv1", 2, 3, 64, 7, 56, batch=8, s=2, p=3, origin="ResNet-18 stem; input 224 scaled to 56"),
    _layer("resnet18.layer1", 2, 64, 64, 3, 28, batch=8, p=1, origin="ResNet-18 layer1 3x3; input 56 scaled to 28"),
    _layer("resnet18.layer2.down", 2, 64, 128, 3, 28, batch=8, s=2, p=1,
           origin="ResNet-18 layer2 first 3x3, stride 2; input 56 scaled to 28"),
    _layer("resnet18.layer2.short", 2, 64, 128, 1, 28, batch=8, s=2,
           origin="ResNet-18 layer2 1x1 shortcut, stride 2; input 56 scaled to 28"),
    _layer("resnet18.layer3", 2, 256, 256, 3, 14, batch=4, p=1, origin="ResNet-18 layer3 3x3; real size (14)"),
    _layer("alexnet.conv1", 2, 3, 64, 11, 224, batch=4, s=4, p=2, origin="AlexNet conv1 11x11/4; real size (224)"),
    _layer("alexnet.conv2", 2, 64, 192, 5, 27, batch=2, p=2, origin="AlexNet conv2 5x5; real size (27)"),
    _layer("mobilenetv2.dw.s2", 2, 144, 144, 3, 56, batch=8, s=2, p=1, groups=144,
           origin="MobileNetV2 depthwise 3x3, stride 2, 144 channels; real size (56)"),
    _layer("mobilenetv2.dw.s1", 2, 384, 384, 3, 14, batch=8, p=1, groups=384,
           origin="MobileNetV2 depthwise 3x3, 384 channels; real size (14)"),
    _layer("convnext.stem", 2, 3, 96, 4, 224, batch=4, s=4, origin="ConvNeXt-T patchify stem 4x4/4; real size (224)"),
    _layer("audio.dilated1d", 1, 128, 128, 3, 4000, batch=4, p=8, d=8,
           origin="WaveNet/TCN-style dilated 1-d conv, k3 dilation 8, 128 channels; 4000 samples"),
    _layer("video.r3d18.down", 3, 64, 128, 3, (8, 28, 28), batch=2, s=2, p=1,
           origin="R3D-18 layer2 3x3x3, stride 2; clip 16x56x56 scaled to 8x28x28"),
)
# fmt: on

QUICK: tuple[Layer, ...] = tuple(
    layer
    for layer in LAYERS
    if layer.name in {"resnet18.layer2.down", "mobilenetv2.dw.s1", "audio.dilated1d", "convnext.stem"}
)


def by_name(name: str) -> Layer:
    for layer in LAYERS:
        if layer.name == name:
            return layer
    raise KeyError(f"no layer {name!r}; layers: {', '.join(layer.name for layer in LAYERS)}")

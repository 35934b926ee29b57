"""`compile_layer(m).y(x, w, b)` is `m(x)`: one signature, `y(x, w, b=None, *, output_size=None)`, for every supported
module and setting, transposed ones included (sizes from output_padding, or output_size= as m(x, output_size=...)),
without a bias, and on unbatched inputs. Swept over module settings, float64, against the module itself."""

from __future__ import annotations

import copy
import inspect
import itertools
import random

import pytest
import torch
from torch import nn

import tncompiler


def _modules() -> list[tuple[str, nn.Module]]:
    rng = random.Random(0)
    found: list[tuple[str, nn.Module]] = [
        ("linear", nn.Linear(4, 3)),
        ("linear-no-bias", nn.Linear(4, 3, bias=False)),
    ]
    for dims, transpose, case in itertools.product((1, 2, 3), (False, True), range(6)):
        groups = rng.choice([1, 2])
        kernel = tuple(rng.randint(1, 3) for _ in range(dims))
        stride = tuple(rng.choice([1, 2, 3]) for _ in range(dims))
        dilation = tuple(rng.choice([1, 2]) for _ in range(dims))
        bias = rng.random() < 0.7
        if transpose:
            padding: object = tuple(rng.randint(0, 2) for _ in range(dims))
            extra = tuple(rng.randrange(max(s, d)) for s, d in zip(stride, dilation))
            module: nn.Module = [nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d][dims - 1](
                2 * groups, 3 * groups, kernel, stride=stride, padding=padding, output_padding=extra,
                dilation=dilation, groups=groups, bias=bias,
            )  # fmt: skip
        else:
            padding = rng.choice([tuple(rng.randint(0, 2) for _ in range(dims)), "valid"])
            if all(s == 1 for s in stride) and rng.random() < 0.4:
                padding = "same"
            module = [nn.Conv1d, nn.Conv2d, nn.Conv3d][dims - 1](
                2 * groups, 3 * groups, kernel, stride=stride, padding=padding, dilation=dilation, groups=groups,
                bias=bias,
            )  # fmt: skip
        found.append((f"{'transpose' if transpose else 'conv'}{dims}d-{case}", module))
    return found


MODULES = _modules()


def _input(module: nn.Module, batch: tuple[int, ...] = (2,)) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return torch.randn(*batch, module.in_features, dtype=torch.float64)
    assert isinstance(module, nn.modules.conv._ConvNd)
    dims = len(module.kernel_size)
    extent = max(d * (k - 1) + 1 for d, k in zip(module.dilation, module.kernel_size))
    return torch.randn(*batch, module.in_channels, *[extent + 3 - j for j in range(dims)], dtype=torch.float64)


def _agree(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(("name", "module"), MODULES, ids=[name for name, _ in MODULES])
def test_y_is_the_module_itself(name: str, module: nn.Module) -> None:
    module = module.double()
    y = tncompiler.compile_layer(module).y
    x = _input(module)
    _agree(y(x, module.weight, module.bias), module(x))


@pytest.mark.parametrize(("name", "module"), MODULES, ids=[name for name, _ in MODULES])
def test_y_without_a_bias_and_unbatched(name: str, module: nn.Module) -> None:
    module = module.double()
    y = tncompiler.compile_layer(module).y
    x = _input(module)
    plain = copy.deepcopy(module)
    plain.bias = None
    _agree(y(x, module.weight, None), plain(x))
    _agree(y(x, module.weight), plain(x))
    single = x[0]  # unbatched: the module accepts it
    _agree(y(single, module.weight, module.bias), module(single))


TRANSPOSES = [(name, m) for name, m in MODULES if isinstance(m, nn.modules.conv._ConvTransposeNd)]


@pytest.mark.parametrize(("name", "module"), TRANSPOSES, ids=[name for name, _ in TRANSPOSES])
def test_output_size_overrides_the_output_padding(name: str, module: nn.Module) -> None:
    assert isinstance(module, nn.modules.conv._ConvTransposeNd)
    module = module.double()
    y = tncompiler.compile_layer(module).y
    x = _input(module)
    base = [
        (i - 1) * s - 2 * p + d * (k - 1) + 1
        for i, s, p, d, k in zip(x.shape[2:], module.stride, module.padding, module.dilation, module.kernel_size)  # type: ignore[arg-type]
    ]
    spans = list(module.stride)  # PyTorch's range of output_size: output paddings below the stride
    for extra in itertools.product(*[range(span) for span in spans]):
        size = [b + e for b, e in zip(base, extra)]
        # an output padding past the padding plus stride - 1 would need a negative pattern padding: refused
        representable = all(p - e + s - 1 >= 0 for p, e, s in zip(module.padding, extra, module.stride))  # type: ignore[arg-type]
        if representable:
            _agree(y(x, module.weight, module.bias, output_size=size), module(x, output_size=size))
    with pytest.raises(ValueError, match="output_size"):
        y(x, module.weight, module.bias, output_size=[b - 1 for b in base])


def test_one_signature_for_every_module() -> None:
    signatures = {str(inspect.signature(tncompiler.compile_layer(m).y)) for _, m in MODULES}
    wanted = "(x: 'Tensor', w: 'Tensor', b: 'Tensor | None' = None, *, output_size: 'Size | None' = None) -> 'Tensor'"
    assert signatures == {wanted}


def test_the_reported_transpose_convolution() -> None:
    """compile_layer(ConvTranspose2d(..., output_padding=1)).y(x, w, b) raised TypeError: missing 'i1' and 'i2'."""
    module = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    _agree(tncompiler.compile_layer(module).y(x, module.weight, module.bias), module(x))


def test_a_linear_layer_takes_any_leading_axes() -> None:
    module = nn.Linear(4, 3).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    _agree(tncompiler.compile_layer(module).y(x, module.weight, module.bias), module(x))


def test_wrong_calls_say_why() -> None:
    conv = nn.Conv2d(2, 3, 3, bias=False).double()
    y = tncompiler.compile_layer(conv).y
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    with pytest.raises(TypeError, match="no output_size"):
        y(x, conv.weight, output_size=[3, 3])
    with pytest.raises(TypeError, match="has no bias"):
        y(x, conv.weight, torch.zeros(3, dtype=torch.float64))
    with pytest.raises(TypeError, match="argument 'x' must be a torch.Tensor"):
        y([1.0], conv.weight)

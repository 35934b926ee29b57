"""`tncompiler.layer_source` / `compile_layer`: the `.tnd` text of PyTorch layers with every hyper-parameter, each
generated function against PyTorch at two input sizes (the sizes are open), the caches and the errors."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import tncompiler
from tests.model.model_references import jacobian_unfold, relative_error
from tncompiler.model import cache, layers

Tensor = torch.Tensor
TOLERANCE = 1e-10

MODULES: dict[str, Callable[[], nn.Module]] = {
    "linear": lambda: nn.Linear(5, 3),
    "linear-nobias": lambda: nn.Linear(5, 3, bias=False),
    "conv1d-strided-dilated": lambda: nn.Conv1d(2, 4, 3, stride=2, padding=1, dilation=2),
    "conv1d-same-even": lambda: nn.Conv1d(2, 2, 4, padding="same", bias=False),
    "conv2d-grouped": lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 0), groups=2),
    "conv2d-depthwise-valid": lambda: nn.Conv2d(3, 3, 3, groups=3, padding="valid"),
    "conv3d": lambda: nn.Conv3d(2, 2, (2, 3, 1), stride=(1, 2, 1), padding=(1, 0, 0)),
    "tconv1d-stride1-outpad": lambda: nn.ConvTranspose1d(2, 3, 3, dilation=2, padding=1, output_padding=1),
    "tconv1d-outpad-past-stride": lambda: nn.ConvTranspose1d(
        2, 2, 3, stride=2, dilation=3, padding=2, output_padding=2
    ),
    "tconv2d-grouped": lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
    "tconv2d-dilated": lambda: nn.ConvTranspose2d(2, 2, 3, stride=3, dilation=2, output_padding=2),
    "tconv3d": lambda: nn.ConvTranspose3d(2, 2, 2, stride=2, bias=False),
}


def make(name: str) -> nn.Module:
    torch.manual_seed(0)
    return MODULES[name]().double()


def inputs(module: nn.Module, size: int) -> Tensor:
    generator = torch.Generator().manual_seed(size)
    if isinstance(module, nn.Linear):
        return torch.randn(size, module.in_features, generator=generator, dtype=torch.float64)
    spatial = (size,) * len(module.kernel_size)  # type: ignore[arg-type]
    return torch.randn(2, module.in_channels, *spatial, generator=generator, dtype=torch.float64)  # type: ignore[arg-type]


def test_the_text_is_readable() -> None:
    """Names from the layer, batch and positions open, PyTorch's layouts, one line per function."""
    assert (
        tncompiler.layer_source(nn.Conv2d(3, 8, 3, stride=2, padding=1))
        == """\
# Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1))
# written by tncompiler.layer_source; sizes without a value are bound at call time
index n                             # the batch
index c = 3, d = 8                  # in- and out-channels
index i1, i2                        # input positions
index k1 = 3, k2 = 3
pattern p1(i1, o1, k1) = conv(stride=2, padding=1, dilation=1)
pattern p2(i2, o2, k2) = conv(stride=2, padding=1, dilation=1)

input x[n, c, i1, i2]
input w[d, c, k1, k2]
input b[d]

y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]

vjp_x = vjp(y, x)
vjp_w = vjp(y, w)
vjp_b = vjp(y, b)
jvp_x = jvp(y, x)
jvp_w = jvp(y, w)

# im2col: each output position's window of x, laid out as F.unfold lays it out
unfold[n, (c k1 k2), (o1 o2)] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2)
# the unfolded input summed over the batch and the positions: a bias's row in KFAC's input factor
unfold_sum[(c k1 k2)] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * delta(n) * delta(o1) * delta(o2)

kfac_expand = kfac(y, w, batch=n, approx=expand)
kfac_reduce = kfac(y, w, batch=n, approx=reduce)
kfac_grad_expand = kfac_grad(y, w, batch=n, approx=expand)
kfac_grad_reduce = kfac_grad(y, w, batch=n, approx=reduce)
"""
    )


def test_a_transpose_convolution_declares_its_output_positions() -> None:
    text = tncompiler.layer_source(nn.ConvTranspose1d(4, 2, 3, stride=2, output_padding=1, groups=2))
    assert "index i1, o1" in text and "input x[n, (g c), o1]" in text and "input w[(g c), d, k1]" in text
    assert "y[n, (g d), i1] = x[n, (g c), o1] * p1(i1, o1, k1) * w[(g c), d, k1] + b[(g d)]" in text


def _reference(module: nn.Module, x: Tensor, grad_y: Tensor) -> dict[str, Tensor]:
    """Every function's value from PyTorch: the layer, autograd, torch.func.jvp and its weight Jacobian."""
    leaf_x, weight = x.clone().requires_grad_(), module.weight
    y = module(leaf_x)
    wanted = [leaf_x, weight] + ([module.bias] if module.bias is not None else [])
    grads = torch.autograd.grad(y, wanted, grad_y)
    values = {"y": y.detach(), "vjp_x": grads[0], "vjp_w": grads[1]} | ({"vjp_b": grads[2]} if len(grads) > 2 else {})
    tangent_x, tangent_w = torch.ones_like(x).cumsum(-1).sin(), torch.ones_like(weight).cumsum(-1).cos()

    def of_weight(w: Tensor) -> Tensor:
        return torch.func.functional_call(module, {"weight": w}, (x,))  # type: ignore[no-any-return]

    values["jvp_x"] = torch.func.jvp(module, (x,), (tangent_x,))[1]
    values["jvp_w"] = torch.func.jvp(of_weight, (weight.detach(),), (tangent_w,))[1]
    u = jacobian_unfold(module, x)  # [n, g, P, in]
    n, groups, positions = u.shape[:3]
    values["unfold"] = u.permute(0, 1, 3, 2).reshape(n, -1, positions) if x.dim() > 2 else u.reshape(n, -1)
    values["unfold_sum"] = u.sum((0, 2))
    values["kfac_expand"] = torch.einsum("ngpi,ngpj->gij", u, u) / n
    values["kfac_reduce"] = torch.einsum("ngi,ngj->gij", u.sum(2), u.sum(2)) / (n * positions**2)
    g = grad_y.reshape(n, groups, -1, positions)
    values["kfac_grad_expand"] = torch.einsum("ngip,ngjp->gij", g, g) / n
    values["kfac_grad_reduce"] = torch.einsum("ngi,ngj->gij", g.sum(3), g.sum(3)) / n
    if groups == 1:
        for name in ("unfold_sum", "kfac_expand", "kfac_reduce", "kfac_grad_expand", "kfac_grad_reduce"):
            values[name] = values[name][0]
    values |= {"tangent_x": tangent_x, "tangent_w": tangent_w}
    return values


def _ours(module: nn.Module, x: Tensor, grad_y: Tensor, tangents: dict[str, Tensor]) -> dict[str, Tensor]:
    compiled, spec = tncompiler.compile_layer(module), layers.spec_of(module)
    sizes = spec.sizes(x) | {f"i{j + 1}": size for j, size in enumerate(x.shape[2:]) if spec.kind == "conv"}

    def call(name: str, *args: Tensor) -> Tensor:
        return layers.with_sizes(getattr(compiled, name), sizes)(*args)

    w, b = module.weight.detach(), module.bias
    params = (w,) + ((b.detach(),) if b is not None else ())
    values = {
        "y": call("y", x, *params), "vjp_x": call("vjp_x", w, grad_y), "vjp_w": call("vjp_w", x, grad_y),
        "jvp_x": call("jvp_x", w, tangents["tangent_x"]), "jvp_w": call("jvp_w", x, tangents["tangent_w"]),
        "kfac_grad_expand": call("kfac_grad_expand", grad_y), "kfac_grad_reduce": call("kfac_grad_reduce", grad_y),
    }  # fmt: skip
    if b is not None:
        values["vjp_b"] = call("vjp_b", grad_y)
    for name in ("unfold", "unfold_sum", "kfac_expand", "kfac_reduce"):
        values[name] = call(name, x)
    return values


@pytest.mark.parametrize("name", list(MODULES))
def test_every_function_matches_pytorch(name: str) -> None:
    """y, the VJPs and JVPs, unfold and the KFAC factors, at two input sizes with one compiled module."""
    module = make(name)
    three_d = isinstance(module, nn.Conv3d | nn.ConvTranspose3d)
    for size in (3, 4) if three_d else (7, 10):  # the reference's Jacobian has an entry per output and weight entry
        x = inputs(module, size)
        grad_y = torch.randn_like(module(x))
        expected = _reference(module, x, grad_y)
        actual = _ours(module, x, grad_y, expected)
        for function, value in actual.items():
            assert relative_error(value, expected[function]) <= TOLERANCE, (name, size, function)


def test_compiled_once_per_hyper_parameters() -> None:
    first, second = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(3, 4, 3, padding=1)
    assert tncompiler.compile_layer(first) is tncompiler.compile_layer(second)
    assert tncompiler.compile_layer(first) is not tncompiler.compile_layer(nn.Conv2d(3, 4, 3, padding=2))


def test_disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiled module is written once, read back by later loads (no compile), keyed by the text and the compiler,
    and a damaged file is compiled again; TNC_CACHE_DIR=off writes nothing."""
    monkeypatch.setenv("TNC_CACHE_DIR", str(tmp_path))
    module = nn.Conv1d(2, 3, 5, dilation=3)
    cache.clear_memory()
    tncompiler.compile_layer(module)
    (written,) = tmp_path.glob("conv1d-*.py")
    stamp = written.stat().st_mtime_ns
    compiles: list[str] = []
    real = tncompiler.compile_source
    monkeypatch.setattr(tncompiler, "compile_source", lambda *a, **k: compiles.append("compiled") or real(*a, **k))
    cache.clear_memory()
    assert hasattr(tncompiler.compile_layer(module), "kfac_expand") and compiles == []
    assert written.stat().st_mtime_ns == stamp
    written.write_text("def y(:\n")  # damaged
    cache.clear_memory()
    assert hasattr(tncompiler.compile_layer(module), "kfac_expand") and compiles == ["compiled"]
    assert "def y(" in written.read_text() and written.read_text() != "def y(:\n"
    monkeypatch.setattr(cache, "compiler_fingerprint", lambda: "another compiler")
    cache.clear_memory()
    tncompiler.compile_layer(module)
    assert len(list(tmp_path.glob("conv1d-*.py"))) == 2
    off = tmp_path / "off"
    monkeypatch.setenv("TNC_CACHE_DIR", "off")
    cache.clear_memory()
    tncompiler.compile_layer(nn.Conv1d(2, 3, 5, dilation=4))
    assert not off.exists() and len(list(tmp_path.glob("conv1d-*.py"))) == 2
    cache.clear_memory()


class Standardized(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) * 2


def test_unsupported_settings_name_the_module() -> None:
    with pytest.raises(ValueError, match=r"Conv2d\(2, 2.*padding_mode='circular'"):
        tncompiler.layer_source(nn.Conv2d(2, 2, 3, padding=1, padding_mode="circular"))
    with pytest.raises(TypeError, match=r"Bilinear.*not a layer tnc can write; supported: nn.Linear"):
        tncompiler.compile_layer(nn.Bilinear(2, 2, 2))
    with pytest.raises(TypeError, match=r"Standardized"):
        tncompiler.layer_source(Standardized(2, 2, 3))
    with pytest.raises(ValueError, match=r"output_padding=1 with padding=0 and stride=1"):
        tncompiler.layer_source(nn.ConvTranspose1d(2, 2, 3, dilation=2, output_padding=1))
    model = nn.Sequential(nn.Linear(2, 2), nn.Sequential(nn.Conv1d(2, 2, 3, padding_mode="reflect", padding=1)))
    with pytest.raises(ValueError, match=r"'1.0' \(Conv1d"):
        list(layers.supported_layers(model))


def test_a_model_loads_from_the_disk_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of the disk cache: a second process finds every layer compiled (here: the memory cache cleared).
    bench/models.py measures it on 50 layers."""
    monkeypatch.setenv("TNC_CACHE_DIR", str(tmp_path))
    model = [nn.Conv2d(c, c + 1, 3, padding=p) for c in range(1, 11) for p in (0, 1)]
    cache.clear_memory()
    for module in model:
        tncompiler.compile_layer(module)
    assert len(list(tmp_path.glob("*.py"))) == 20
    cache.clear_memory()
    compiles: list[str] = []
    monkeypatch.setattr(tncompiler, "compile_source", lambda *a, **k: compiles.append("compiled"))
    for module in model:
        tncompiler.compile_layer(module)
    assert compiles == []
    cache.clear_memory()

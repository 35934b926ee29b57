"""`tncompiler.sampled`'s fast path: the same estimates as the compiled `sample(vjp(y, w), ...)`, draw for draw, for
every layer type; unbiased; exact input and bias gradients on every input-gradient route; p = 1 untouched; dtype,
memory format and autocast kept; the model as it was after the block. Timings live in bench/sampled_model.py.

All in float64 on small layers (the references are PyTorch's own autograd and the compiled `.tnd` functions of
`tncompiler.model.layers.sampled_source`), so the module runs in seconds."""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tncompiler
from tncompiler.model import layers, sampling

Tensor = torch.Tensor
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

# name -> (layer, input shape): every layer type `sampled` handles, small; "big strided" is a strided layer with
# enough work per example to take PyTorch's kernel for its input gradient (the others small enough for the phases)
LAYERS: dict[str, tuple[nn.Module, tuple[int, ...]]] = {
    "dense": (nn.Conv2d(3, 4, 3, padding=1), (5, 3, 7, 6)),
    "strided": (nn.Conv2d(3, 4, 3, stride=2, padding=1), (5, 3, 9, 8)),
    "strided uneven": (nn.Conv2d(2, 3, (3, 2), stride=(2, 3), padding=(1, 0)), (4, 2, 8, 9)),
    "big strided": (nn.Conv2d(16, 16, 3, stride=2, padding=1), (2, 16, 16, 16)),
    "grouped": (nn.Conv2d(4, 6, 3, stride=2, groups=2), (5, 4, 8, 7)),
    "depthwise": (nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False), (5, 4, 6, 6)),
    "1x1 strided": (nn.Conv2d(4, 6, 1, stride=2), (5, 4, 7, 7)),
    "dilated": (nn.Conv2d(2, 3, 3, dilation=(2, 1), padding=2), (5, 2, 8, 6)),
    "same even": (nn.Conv2d(2, 3, 4, padding="same"), (4, 2, 6, 7)),
    "conv1d": (nn.Conv1d(2, 4, 3, stride=2, padding=1), (6, 2, 11)),
    "conv3d": (nn.Conv3d(2, 3, 2, stride=2, padding=1), (3, 2, 4, 5, 4)),
    "transposed": (nn.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1), (5, 4, 4, 5)),
    "transposed grouped": (nn.ConvTranspose1d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2), (5, 4, 6)),
    "transposed dilated": (
        nn.ConvTranspose2d(2, 3, 3, stride=(2, 1), dilation=(1, 2), padding=1, output_padding=1),
        (4, 2, 4, 5),
    ),  # fmt: skip
    "linear": (nn.Linear(6, 3), (7, 6)),
    # batches and rows long enough that the kept counts are padded to buckets of 2 (`_padded`)
    "long conv1d": (nn.Conv1d(2, 3, 3, stride=2, padding=1), (20, 2, 41)),
    "long transposed": (nn.ConvTranspose1d(2, 3, 3, stride=2, padding=1), (20, 2, 21)),
    "long linear": (nn.Linear(3, 2), (24, 3)),
}
OVERS = ("positions", "batch")


@pytest.fixture(scope="module", autouse=True)
def memory_cache() -> Iterator[None]:
    """The compiled references stay in memory: nothing is written to the user's cache folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TNC_CACHE_DIR", "off")
        yield


def _layer(name: str) -> tuple[nn.Module, Tensor, Tensor]:
    """The layer in float64, an input and an output cotangent (fixed seeds)."""
    module, shape = LAYERS[name]
    layer = copy.deepcopy(module).double()  # a fresh copy per test: nothing a block does can reach another test
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    cotangent = torch.randn(layer(x).shape, generator=generator, dtype=torch.float64)
    return layer, x, cotangent


def _gradients(layer: nn.Module, x: Tensor, cotangent: Tensor) -> dict[str, Tensor]:
    leaf = x.clone().requires_grad_()
    output = layer(leaf)
    names = ["x", *(name for name, _ in layer.named_parameters())]
    gradients = torch.autograd.grad(output, [leaf, *layer.parameters()], cotangent)
    return {"y": output.detach(), **dict(zip(names, gradients))}


def _relative(actual: Tensor, expected: Tensor) -> float:
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    actual, expected = actual.detach(), expected.detach()
    return float((actual - expected).abs().max() / (expected.abs().max() or 1.0))


def _compiled_weight_vjp(layer: nn.Module, x: Tensor, cotangent: Tensor, over: str, p: float, seed: int) -> Tensor:
    """The compiled `sample(vjp(y, w), index=..., p=p)` of `layers.sampled_source`, with a generator seeded `seed`:
    the estimate `sampled` must give, draw for draw."""
    spec = layers.spec_of(layer)
    module = layers.compile_sampled(spec, over)  # type: ignore[arg-type]
    generator = torch.Generator().manual_seed(seed)
    keywords = layers.size_keywords(module.vjp_w_sampled, spec.sizes(x))
    return module.vjp_w_sampled(x, cotangent, p=p, generator=generator, **keywords)  # type: ignore[no-any-return]


@pytest.mark.parametrize("over", OVERS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_the_estimate_is_the_compiled_one_draw_for_draw(name: str, over: str) -> None:
    """For each of several seeds and p, the weight gradient under `sampled` equals the compiled tnc function of the
    layer's sampled_source with the same generator seed (padding the kept count to a bucket adds nothing); the
    output, the input gradient and the bias gradient equal plain autograd's; a linear layer over positions keeps its
    exact gradient."""
    layer, x, cotangent = _layer(name)
    exact = _gradients(layer, x, cotangent)
    for seed, p in [(0, 0.5), (1, 0.25), (2, 0.8)]:
        with tncompiler.sampled(layer, p=p, over=over, generator=torch.Generator().manual_seed(seed)):  # type: ignore[arg-type]
            ours = _gradients(layer, x, cotangent)
        for key in ours:
            if key != "weight":
                assert _relative(ours[key], exact[key]) <= 1e-12, (key, seed)
        if isinstance(layer, nn.Linear) and over == "positions":
            assert _relative(ours["weight"], exact["weight"]) <= 1e-12
            continue
        reference = _compiled_weight_vjp(layer, x, cotangent, over, p, seed)
        assert _relative(ours["weight"], reference) <= 1e-12, seed


@pytest.mark.parametrize("over", [*OVERS, "block"])
@pytest.mark.parametrize("name", ["strided", "depthwise", "transposed", "conv1d", "linear"])
def test_each_layer_type_is_unbiased(name: str, over: str) -> None:
    """300 draws at p = 0.3: the mean of a fixed projection of the weight estimates is within 3 standard errors of
    the exact value, and the draws differ."""
    if name == "linear" and over == "positions":
        pytest.skip("a linear layer has no positions: its gradient is exact (checked above)")
    layer, x, cotangent = _layer(name)
    exact = _gradients(layer, x, cotangent)["weight"]
    projection = torch.randn(exact.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    values = []
    with tncompiler.sampled(layer, p=0.3, over=over, generator=torch.Generator().manual_seed(3)):  # type: ignore[arg-type]
        for _ in range(300):
            values.append(float((_gradients(layer, x, cotangent)["weight"] * projection).sum()))
    samples = torch.tensor(values, dtype=torch.float64)
    error = samples.std().item() / len(samples) ** 0.5
    assert samples.std() > 0
    assert abs(samples.mean().item() - float((exact * projection).sum())) <= 3 * error


def _small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, stride=2), nn.Tanh(), nn.Flatten(),
        nn.Linear(6 * 3 * 3, 3),
    ).double()  # fmt: skip


@pytest.mark.parametrize("over", [*OVERS, "block"])
def test_a_model_is_unbiased_through_a_loss(over: str) -> None:
    """A CNN under cross-entropy, 300 draws at p = 0.5: every sampled weight's projected mean within 3 standard
    errors; the input and bias gradients exact on every draw."""
    model = _small_cnn()
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(6, 2, 8, 8, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (6,), generator=generator)

    def gradients() -> dict[str, Tensor]:
        leaf = x.clone().requires_grad_()
        loss = F.cross_entropy(model(leaf), labels)
        names = ["x", *(name for name, _ in model.named_parameters())]
        return dict(zip(names, torch.autograd.grad(loss, [leaf, *model.parameters()])))

    exact = gradients()
    draws = []
    with tncompiler.sampled(model, p=0.5, over=over, generator=torch.Generator().manual_seed(5)):  # type: ignore[arg-type]
        for _ in range(300):
            draws.append(gradients())
    directions = torch.Generator().manual_seed(6)
    for name, value in exact.items():
        estimates = torch.stack([draw[name] for draw in draws])
        if name == "x" or name.endswith("bias") or (over == "positions" and name == "5.weight"):
            assert _relative(estimates, value.expand_as(estimates)) <= 1e-12, name
            continue
        projection = torch.randn(value.shape, generator=directions, dtype=torch.float64)
        samples = (estimates * projection).flatten(1).sum(1)
        error = samples.std().item() / len(samples) ** 0.5
        assert abs(samples.mean().item() - float((value * projection).sum())) <= 3 * error, name


@pytest.mark.parametrize("name", [name for name in LAYERS if name != "linear"])
def test_the_block_estimate_is_the_kept_examples_gradient(name: str) -> None:
    """over="block", for every layer type and several seeds and p: the weight gradient is plain autograd's on the
    examples of the block `_block` draws from the same generator state (one range, or two where it wraps), scaled by
    N / their count; the output, input and bias gradients are exact."""
    layer, x, cotangent = _layer(name)
    exact = _gradients(layer, x, cotangent)
    for seed, p in [(0, 0.5), (1, 0.25), (2, 0.8), (3, 0.3)]:
        with tncompiler.sampled(layer, p=p, over="block", generator=torch.Generator().manual_seed(seed)):
            ours = _gradients(layer, x, cotangent)
        for key in ours:
            if key != "weight":
                assert _relative(ours[key], exact[key]) <= 1e-12, (key, seed)
        ranges, scale = sampling._block(x.shape[0], p, torch.Generator().manual_seed(seed))
        kept = torch.cat([torch.arange(a, b) for a, b in ranges])
        reference = _gradients(layer, x[kept], cotangent[kept])["weight"] * scale
        assert _relative(ours["weight"], reference) <= 1e-12, (seed, ranges)


@pytest.mark.parametrize(("size", "p"), [(8, 0.5), (12, 0.25), (10, 0.3), (7, 0.9), (5, 1e-9), (6, 1.0)])
def test_the_block_keeps_every_entry_with_the_same_probability(size: int, p: float) -> None:
    """`_block` draws each of its size / gcd(size, count) starts (count = round(p * size), at least 1) and covers
    every entry from count / gcd of them: over all the starts drawn (2000 draws see them all), each entry is kept
    equally often, so with the scale size / count the estimate is unbiased exactly; the ranges have count entries."""
    generator = torch.Generator().manual_seed(0)
    count = min(size, max(1, round(p * size)))
    seen = set()
    for _ in range(2000):
        ranges, scale = sampling._block(size, p, generator)
        assert sum(b - a for a, b in ranges) == count and scale == size / count
        assert all(0 <= a < b <= size for a, b in ranges) and len(ranges) <= 2
        seen.add(tuple(ranges))
    assert len(seen) == size // math.gcd(size, count)
    covered = [sum(a <= i < b for ranges in seen for a, b in ranges) for i in range(size)]
    assert covered == [count // math.gcd(size, count)] * size


@pytest.mark.parametrize(
    "layer",
    [
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.Conv2d(4, 6, 1, stride=2),
        nn.Conv2d(2, 3, 2, stride=4),
        nn.Conv2d(4, 8, 3, stride=2, groups=2),
        nn.Conv2d(4, 4, 5, stride=2, padding=2, groups=4),
        nn.Conv1d(3, 5, 4, stride=3, padding=2),
        nn.Conv3d(2, 3, 2, stride=(2, 1, 3), padding=1),
    ],
    ids=lambda layer: repr(layer),
)
@pytest.mark.parametrize("size", [7, 8, 9])
def test_the_input_gradient_per_phase_is_pytorchs(layer: nn.Module, size: int) -> None:
    """The phases route (`sampling._phases`) of a strided input gradient equals convolution_backward's for odd and
    even sizes, strides wider than the kernel (entries no tap reads), groups, 1-d and 3-d."""
    layer = layer.double()
    x = torch.randn(3, layer.in_channels, *[size] * len(layer.kernel_size), dtype=torch.float64)
    gy = torch.randn_like(layer(x))
    plan = sampling._plan(layer, "layer", "batch")
    assert isinstance(plan, sampling._ConvPlan) and plan.phased
    expected = torch.ops.aten.convolution_backward(gy, x, layer.weight, None, *plan.settings, [True, False, False])[0]
    assert _relative(sampling._phases(gy, layer.weight, plan.settings, x), expected) <= 1e-12


def test_p_one_leaves_the_model_alone_and_its_gradients_bit_for_bit() -> None:
    model = _small_cnn()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    cotangent = torch.randn(4, 3, dtype=torch.float64)
    expected = _gradients(model, x, cotangent)
    for over in OVERS:
        with tncompiler.sampled(model, p=1.0, over=over):  # type: ignore[arg-type]
            assert not any("forward" in vars(module) for module in model.modules())
            actual = _gradients(model, x, cotangent)
        assert all(torch.equal(actual[key], expected[key]) for key in expected)


def _state(model: nn.Module) -> list[object]:
    """Per module: its attribute names, which objects its parameters and buffers are, its hooks and mode."""
    return [
        (
            name, sorted(vars(module)), {k: id(v) for k, v in module._parameters.items()},
            {k: id(v) for k, v in module._buffers.items()}, len(module._forward_hooks),
            len(module._forward_pre_hooks), module.training,
        )
        for name, module in model.named_modules()
    ]  # fmt: skip


def test_the_block_leaves_the_model_as_it_was() -> None:
    """Entering and leaving (also on an error, also twice in a row) leaves every module's attributes, parameters and
    forward pass as they were; the second block builds no plan and compiles nothing."""
    model = _small_cnn()
    x = torch.randn(4, 2, 8, 8, dtype=torch.float64)
    before, output = _state(model), model(x)
    parameters = [p.clone() for p in model.parameters()]
    with tncompiler.sampled(model, p=0.5):
        model(x).sum().backward()
    with pytest.raises(ZeroDivisionError), tncompiler.sampled(model, p=0.5, over="batch"):
        raise ZeroDivisionError
    assert _state(model) == before
    assert all(torch.equal(a, b) for a, b in zip(parameters, model.parameters()))
    assert torch.equal(model(x), output)
    plans = len(sampling._PLANS)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers, "load_compiled", None)  # any compile would fail: `sampled` must not compile
        with tncompiler.sampled(model, p=0.25):
            model(x).sum().backward()
    assert len(sampling._PLANS) == plans


def test_nested_blocks_and_bad_settings_are_refused() -> None:
    model = _small_cnn()
    with tncompiler.sampled(model, p=0.5):
        with pytest.raises(RuntimeError, match="nested"), tncompiler.sampled(model, p=0.5):
            pass
        assert all("forward" in vars(m) for m in model.modules() if isinstance(m, nn.Conv2d))
    assert not any("forward" in vars(module) for module in model.modules())
    with pytest.raises(TypeError, match="p must be"), tncompiler.sampled(model, p=True):
        pass
    with pytest.raises(ValueError, match="p must be"), tncompiler.sampled(model, p=1.5):
        pass
    with pytest.raises(TypeError, match="generator"), tncompiler.sampled(model, generator=3):  # type: ignore[arg-type]
        pass


def test_unbatched_inputs_and_output_size() -> None:
    """A layer called on one unbatched example, and a transpose convolution given output_size, as PyTorch's."""
    conv, transposed = nn.Conv2d(2, 3, 3).double(), nn.ConvTranspose2d(3, 2, 3, stride=2).double()
    x = torch.randn(2, 6, 6, dtype=torch.float64)
    expected = transposed(conv(x), output_size=[10, 10])
    with tncompiler.sampled(conv, p=0.5), tncompiler.sampled(transposed, p=0.5):
        actual = transposed(conv(x), output_size=[10, 10])
        actual.sum().backward()
    assert actual.shape == (2, 10, 10) and torch.equal(actual, expected)
    assert conv.weight.grad is not None and transposed.weight.grad is not None


def _cnn32(memory_format: torch.memory_format = torch.contiguous_format) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU())
    return model.to(memory_format=memory_format)  # type: ignore[call-overload,no-any-return]


@pytest.mark.parametrize("over", [*OVERS, "block"])
def test_channels_last_stays_channels_last(over: str) -> None:
    """A channels-last model on a channels-last input: the output, the input gradient and every parameter's gradient
    have the strides PyTorch's own backward gives them, the output is PyTorch's bit for bit, the input gradient is
    PyTorch's (float32 rounding)."""
    model = _cnn32(torch.channels_last)
    x = torch.randn(4, 3, 12, 12).to(memory_format=torch.channels_last)
    cotangent = torch.randn_like(model(x))
    expected = _gradients(model, x, cotangent)
    with tncompiler.sampled(model, p=0.5, over=over):  # type: ignore[arg-type]
        actual = _gradients(model, x, cotangent)
    for key, value in expected.items():
        assert actual[key].stride() == value.stride(), key
        assert actual[key].dtype == value.dtype, key
    assert torch.equal(actual["y"], expected["y"])
    torch.testing.assert_close(actual["x"], expected["x"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_gives_pytorchs_dtypes_and_output(dtype: torch.dtype) -> None:
    """Under torch.autocast("cpu"): the output has the autocast dtype and is PyTorch's bit for bit, the gradients
    have the parameters' and the input's dtype (float32), the input gradient is PyTorch's to the low precision."""
    model = _cnn32()
    x = torch.randn(4, 3, 12, 12)
    with torch.autocast("cpu", dtype=dtype):
        cotangent = torch.randn_like(model(x))
        expected = _gradients(model, x, cotangent)
        with tncompiler.sampled(model, p=0.5, over="batch"):
            actual = _gradients(model, x, cotangent)
    assert actual["y"].dtype == expected["y"].dtype == dtype
    assert torch.equal(actual["y"], expected["y"])
    for key, value in expected.items():
        assert actual[key].dtype == value.dtype, key
    torch.testing.assert_close(actual["x"], expected["x"], rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_a_model_in_another_dtype_keeps_it(dtype: torch.dtype) -> None:
    model = _cnn32().to(dtype)
    x = torch.randn(4, 3, 12, 12, dtype=dtype)
    cotangent = torch.randn_like(model(x))
    expected = _gradients(model, x, cotangent)
    with tncompiler.sampled(model, p=0.5):
        actual = _gradients(model, x, cotangent)
    assert all(actual[key].dtype == dtype for key in expected)
    assert torch.equal(actual["y"], expected["y"])


def test_the_kept_count_is_padded_to_a_bucket() -> None:
    """`_padded`: the count rounded up to a power of two no larger than its standard deviation, never past the
    axis, the added entries copies of the first kept one; small axes are not padded."""
    kept = list(range(3, 200, 2))  # 99 of 512 at p = 0.2: deviation 9.05, bucket 8
    padded = sampling._padded(kept, 512, 0.2)
    assert len(padded) == 104 and padded[:99] == kept and set(padded[99:]) == {3}
    assert sampling._padded_index(torch.tensor(kept), 512, 0.2).tolist() == padded  # the batch's tensor form
    assert sampling._padded([1, 4], 8, 0.5) == [1, 4]  # deviation 1.41: bucket 1
    assert len(sampling._padded(list(range(63)), 64, 0.5)) == 64  # bucket 4, never past the 64 examples


@pytest.mark.parametrize("over", [*OVERS, "block"])
def test_a_compiled_model_samples_as_in_eager(over: str) -> None:
    """Under torch.compile a draw cannot be traced into the backward graph (torch._dynamo.explain raised on the kept
    count's shapes): the sampled layers are graph breaks and run eagerly, and give the eager estimates for the same
    seed."""
    model = _small_cnn().float()
    x = torch.randn(4, 2, 8, 8)
    torch._dynamo.reset()
    with tncompiler.sampled(model, p=0.5, over=over):  # type: ignore[arg-type]
        assert torch._dynamo.explain(lambda x: model(x).sum())(x).graph_break_count >= 1

    def gradients(run: nn.Module) -> tuple[Tensor, ...]:
        with tncompiler.sampled(model, p=0.5, over=over, generator=torch.Generator().manual_seed(0)):  # type: ignore[arg-type]
            return torch.autograd.grad(run(x).square().sum(), list(model.parameters()))

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    for a, b in zip(gradients(compiled), gradients(model)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

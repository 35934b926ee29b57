"""tnc inside a PyTorch 2 script: generated modules are importable by name (sys.modules), every model-level path runs
under torch.compile called from inside a user's nn.Module (eager, aot_eager; inductor in the slow suite), and a model
that holds compiled modules survives copy.deepcopy, pickle and torch.save/torch.load."""

from __future__ import annotations

import copy
import io
import pickle
import re
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

import tncompiler
from tncompiler.model import layers

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
BACKENDS = ["eager", "aot_eager", pytest.param("inductor", marks=pytest.mark.slow)]


class Holder(nn.Module):
    """A user's module that holds a compiled layer and calls its functions in forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.layer = tncompiler.compile_layer(self.conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer.y(x, self.conv.weight, self.conv.bias).relu().flatten(1).sum(1)


def _compiled_agrees(model: nn.Module, backend: str, *args: torch.Tensor) -> None:
    """Forward and parameter gradients of torch.compile(model) equal the eager model's."""
    expected = model(*args).sum()
    want = torch.autograd.grad(expected, list(model.parameters()))
    torch._dynamo.reset()
    actual = torch.compile(model, backend=backend)(*args).sum()
    got = torch.autograd.grad(actual, list(model.parameters()))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- names -------------------------------------------------------------------------------------------------------


def test_every_generated_module_is_registered_under_one_naming_scheme() -> None:
    """TorchDynamo failed with 'No module named conv2d': generated modules were never in sys.modules."""
    text = (EXAMPLES / "conv2d.tnd").read_text()
    loaded = tncompiler.load(EXAMPLES / "conv2d.tnd")
    from_text = tncompiler.load_source(text, "conv2d.tnd")
    layer = tncompiler.compile_layer(nn.Conv2d(3, 4, 3))
    for module in (loaded, from_text, layer, layers.layer_functions(nn.Conv2d(3, 4, 3))):
        assert re.fullmatch(r"tnc_\w+_[0-9a-f]{12}", module.__name__), module.__name__
        assert module.y.__module__ in sys.modules
        assert sys.modules[module.__name__].y.__code__.co_code == module.y.__code__.co_code
    assert sys.modules[from_text.__name__] is from_text  # the latest of equal modules answers to the name
    assert loaded.__name__ == from_text.__name__  # stable: the same code gives the same name
    assert tncompiler.load(EXAMPLES / "conv2d.tnd", rewrite=False).__name__ != loaded.__name__  # unique


def test_a_class_of_a_generated_module_resolves_by_its_name() -> None:
    module = tncompiler.load(EXAMPLES / "conv2d_sampled.tnd")
    cls = module.y_sampled_autograd
    assert getattr(sys.modules[cls.__module__], cls.__qualname__) is cls


# -- torch.compile ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_layer_functions_inside_a_module(backend: str) -> None:
    torch.manual_seed(0)
    _compiled_agrees(Holder(), backend, torch.randn(2, 3, 8, 8))


def test_compile_layer_functions_inside_a_module_trace_as_one_graph() -> None:
    torch._dynamo.reset()
    explained = torch._dynamo.explain(Holder())(torch.randn(2, 3, 8, 8))
    assert explained.graph_break_count == 0, [str(r.reason)[:300] for r in explained.break_reasons]


class Loaded(nn.Module):
    """A module that calls a file's functions (load) and an autograd class of sampled VJPs."""

    def __init__(self, sampled: bool) -> None:
        super().__init__()
        self.functions = tncompiler.load(EXAMPLES / "conv2d_sampled.tnd")
        self.w = nn.Parameter(torch.randn(4, 3, 3, 3))
        self.b = nn.Parameter(torch.randn(4))
        self.sampled = sampled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sampled:  # p = 1: exact, so the gradients can be compared
            return self.functions.y_sampled_autograd.apply(x, self.w, self.b, None, 1.0)
        return self.functions.y(x, self.w, self.b)


@pytest.mark.parametrize("sampled", [False, True], ids=["function", "autograd-class"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_loaded_functions_and_autograd_classes_inside_a_module(backend: str, sampled: bool) -> None:
    torch.manual_seed(0)
    _compiled_agrees(Loaded(sampled), backend, torch.randn(2, 3, 10, 8))


def test_an_autograd_class_takes_keywords_under_compile_when_none_is_skipped() -> None:
    """TorchDynamo maps keywords to positions without defaults: apply(..., generator=None, p=...) traces."""
    functions = tncompiler.load(EXAMPLES / "conv2d_sampled.tnd")
    x, w, b = torch.randn(2, 3, 10, 8), torch.randn(4, 3, 3, 3, requires_grad=True), torch.randn(4)
    torch._dynamo.reset()
    out = torch.compile(lambda x, w, b: functions.y_sampled_autograd.apply(x, w, b, generator=None, p=1.0),
                        backend="eager")(x, w, b)  # fmt: skip
    torch.testing.assert_close(out, functions.y(x, w, b))


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, groups=2), nn.ReLU(),
        nn.Flatten(), nn.Linear(4 * 3 * 3, 3),
    )  # fmt: skip


@pytest.mark.parametrize("backend", BACKENDS)
def test_sampled_model_under_compile(backend: str) -> None:
    """`with tncompiler.sampled(model)` failed under a compiled model: No module named 'conv2d_sampled'."""
    model, x = _network(), torch.randn(4, 2, 8, 8)
    expected = torch.autograd.grad(model(x).square().sum(), list(model.parameters()))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    with tncompiler.sampled(model, p=1.0):
        got = torch.autograd.grad(compiled(x).square().sum(), list(model.parameters()))
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_count_sampling_traces_as_one_graph_inside_a_module() -> None:
    source = """index n = 4, c = 3, d = 2, i = 9, k = 3
pattern p(i, o, k) = conv(padding=1)
input x[n, c, i]
input w[d, c, k]
y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k]
gw = sample(vjp(y, w), index=o, count=4)
"""
    module = tncompiler.load_source(source, "count.tnd")

    class Step(nn.Module):
        def forward(self, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
            return module.gw(x, grad, generator=None)

    torch._dynamo.reset()
    x, grad = torch.randn(4, 3, 9), torch.randn(4, 2, 9)
    out = torch.compile(Step(), fullgraph=True, backend="eager")(x, grad)
    assert out.shape == (2, 3, 3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kfac_steps_with_a_compiled_model(backend: str) -> None:
    def train(compiled: bool) -> list[torch.Tensor]:
        model = _network()
        kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), damping=1e-2, update_every=1, invert_every=1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        forward = torch.compile(model, backend=backend) if compiled else model
        generator = torch.Generator().manual_seed(0)
        for _ in range(2):
            x, y = torch.randn(8, 2, 8, 8, generator=generator), torch.randint(0, 3, (8,), generator=generator)
            loss = nn.functional.cross_entropy(forward(x), y)
            optimizer.zero_grad()
            loss.backward()
            kfac.step()
            optimizer.step()
        return [p.detach() for p in model.parameters()]

    torch._dynamo.reset()
    for a, b in zip(train(True), train(False)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# -- checkpoints -----------------------------------------------------------------------------------------------------


def _round_trips() -> list[tuple[str, Callable[[nn.Module], nn.Module]]]:
    def saved(model: nn.Module) -> nn.Module:
        buffer = io.BytesIO()
        torch.save(model, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert isinstance(loaded, nn.Module)
        return loaded

    return [("deepcopy", copy.deepcopy), ("pickle", lambda m: pickle.loads(pickle.dumps(m))), ("torch.save", saved)]


@pytest.mark.parametrize(("how", "trip"), _round_trips(), ids=[name for name, _ in _round_trips()])
@pytest.mark.parametrize("make", [Holder, lambda: Loaded(False)], ids=["compile_layer", "load"])
def test_a_model_holding_compiled_modules_survives_checkpoints(
    make: Callable[[], nn.Module], how: str, trip: Callable[[nn.Module], nn.Module]
) -> None:
    """copy.deepcopy and pickle failed: cannot pickle 'module' object."""
    torch.manual_seed(0)
    model, x = make(), torch.randn(2, 3, 10, 8)
    copied = trip(model)
    torch.testing.assert_close(copied(x), model(x), rtol=0, atol=0)
    held = [value for value in vars(copied).values() if isinstance(value, types.ModuleType)]
    assert held and all(sys.modules[m.__name__] is not None for m in held)


def test_a_pickled_model_loads_in_a_fresh_process(tmp_path: Path) -> None:
    """A compiled module pickles as its recipe: another process rebuilds it (from the cache or by compiling)."""
    torch.manual_seed(0)
    model, x = Holder(), torch.randn(2, 3, 8, 8)
    torch.save({"model": model, "x": x, "y": model(x)}, tmp_path / "checkpoint.pt")
    script = (
        "import sys, torch; sys.path.insert(0, sys.argv[2]);"
        "c = torch.load(sys.argv[1], weights_only=False);"
        "torch.testing.assert_close(c['model'](c['x']), c['y'], rtol=0, atol=0); print('same')"
    )
    root = str(Path(__file__).resolve().parents[2])
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "checkpoint.pt"), root],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == "same", done.stderr[-2000:]


def test_graph_breaks_are_where_the_docs_say() -> None:
    """README, "In a PyTorch 2 script": each layer sampled with p < 1 runs eagerly (a break per layer), p = 1 none."""
    model, x = _network(), torch.randn(4, 2, 8, 8)

    def step(x: torch.Tensor) -> torch.Tensor:
        return model(x).square().sum()

    layers = sum(isinstance(m, nn.Conv2d) for m in model.modules())  # over positions: a linear layer stays exact
    for p, breaks in ((1.0, 0), (0.5, layers)):
        torch._dynamo.reset()
        with tncompiler.sampled(model, p=p):
            explained = torch._dynamo.explain(step)(x)
        assert explained.graph_break_count == breaks, (p, [str(r.reason)[:200] for r in explained.break_reasons])


@pytest.mark.parametrize("backend", BACKENDS)
def test_curvature_and_kfac_operator_of_a_compiled_model(backend: str) -> None:
    """The model-level functions take a torch.compile'd model: named as the model it compiles, equal results."""
    model, loss = _network(), nn.CrossEntropyLoss()
    batch = (torch.randn(8, 2, 8, 8), torch.randint(0, 3, (8,)))
    quantities = ["batch_l2", "diag_ggn_exact"]
    expected = tncompiler.curvature(model, loss, batch, quantities=quantities)
    operator = tncompiler.KFACOperator(model, loss, batch, approx="expand", fisher="type-2")
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    got = tncompiler.curvature(compiled, loss, batch, quantities=quantities)
    for quantity in quantities:
        assert got[quantity].keys() == expected[quantity].keys()
        for name in expected[quantity]:
            torch.testing.assert_close(got[quantity][name], expected[quantity][name], rtol=1e-5, atol=1e-6)
    vector = [torch.randn_like(p) for p in model.parameters()]
    again = tncompiler.KFACOperator(compiled, loss, batch, approx="expand", fisher="type-2")
    for a, b in zip(again @ vector, operator @ vector):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

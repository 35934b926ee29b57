"""The keep-probability and the count are arguments of each call: keyword-only, their defaults the file's values
(`gw(x, grad_y, *, p=0.25, generator=None)`), named after the index where a function samples several, checked at
call time, and taken by the autograd classes too. p = 1 given per call is exact, and the draws at any p are those
of `rand(|c|) < p` on the host, whatever the arguments' device."""

from __future__ import annotations

import inspect
import types

import pytest
import torch

import tncompiler

Tensor = torch.Tensor

SOURCE = """
index n
index c = 3, d = 4, i1 = 9, i2 = 6, k1 = 3, k2 = 2
pattern p1(i1, o1, k1) = conv(padding=1)
pattern p2(i2, o2, k2) = conv(stride=2)
input x[n, c, i1, i2]
input w[d, c, k1, k2]
input b[d]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2] + b[d]
gw = sample(vjp(y, w), index=o1, p=0.25)
gw_n = sample(vjp(y, w), index=n, p=0.5)
gw_count = sample(vjp(y, w), index=o1, count=3)
gw_both = sample(sample(vjp(y, w), index=n, p=0.5), index=o1, count=4)
gx = sample(vjp(y, x), index=o1, p=0.5)
y_c = sample(y, index=c, p=0.5)
"""
CONV = {"padding": (1, 0), "stride": (1, 2)}
O1 = 9


@pytest.fixture(scope="module")
def module() -> types.ModuleType:
    return tncompiler.load_source(SOURCE, "per_call.tnd")


@pytest.fixture(scope="module")
def arguments() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"x": (3, 3, 9, 6), "w": (4, 3, 3, 2), "b": (4,), "grad_y": (3, 4, 9, 3)}
    return {name: torch.randn(shape, generator=g, dtype=torch.float64) for name, shape in shapes.items()}


def weight_vjp(a: dict[str, Tensor], grad_y: Tensor | None = None) -> Tensor:
    return torch.nn.grad.conv2d_weight(a["x"], a["w"].shape, a["grad_y"] if grad_y is None else grad_y, **CONV)


def assert_exact(result: Tensor, expected: Tensor) -> None:
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10 * expected.abs().max().item())


def test_the_signatures(module: types.ModuleType) -> None:
    def keywords(name: str) -> dict[str, object]:
        parameters = inspect.signature(getattr(module, name)).parameters.values()
        return {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}

    assert keywords("gw") == {"p": 0.25, "generator": None}
    assert keywords("gw_count") == {"count": 3, "generator": None}
    assert keywords("gw_both") == {"p_n": 0.5, "count_o1": 4, "generator": None}
    assert "p=0.25" in (module.gw.__doc__ or "") or "p: keyword-only float" in (module.gw.__doc__ or "")


# -- p = 1 per call is exact -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["gw", "gw_n"])
def test_p_one_per_call_is_the_exact_weight_vjp(
    module: types.ModuleType, arguments: dict[str, Tensor], name: str
) -> None:
    for seed in range(3):
        result = getattr(module, name)(
            arguments["x"], arguments["grad_y"], p=1, generator=torch.Generator().manual_seed(seed)
        )
        assert_exact(result, weight_vjp(arguments))


def test_p_one_per_call_is_exact_for_every_sampled_function(
    module: types.ModuleType, arguments: dict[str, Tensor]
) -> None:
    a = arguments
    assert_exact(module.gw_both(a["x"], a["grad_y"], p_n=1.0, count_o1=O1), weight_vjp(a))
    assert_exact(
        module.gx(a["w"], a["grad_y"], p=1.0), torch.nn.grad.conv2d_input(a["x"].shape, a["w"], a["grad_y"], **CONV)
    )
    assert_exact(module.y_c(a["x"], a["w"], a["b"], p=1.0), torch.nn.functional.conv2d(a["x"], a["w"], a["b"], **CONV))


def test_the_autograd_class_takes_p_per_call(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    """The first sampled VJP of each argument: gw for w, gx for x; several are sampled, so the class names p after
    the argument."""
    parameters = inspect.signature(module.y_sampled_autograd.forward).parameters
    assert [name for name in parameters][3:] == ["generator", "p_x", "p_w"]
    x, w, b = (arguments[k].clone().requires_grad_() for k in ("x", "w", "b"))
    out = module.y_sampled_autograd.apply(x, w, b, p_w=1, p_x=1.0)
    grads = torch.autograd.grad(out, (x, w, b), arguments["grad_y"])
    reference = torch.nn.functional.conv2d(x, w, b, **CONV)
    for got, expected in zip(grads, torch.autograd.grad(reference, (x, w, b), arguments["grad_y"]), strict=True):
        assert_exact(got, expected)


# -- the draws at a per-call p ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [0.3, 0.8])
def test_a_per_call_p_draws_as_rand_below_p(module: types.ModuleType, arguments: dict[str, Tensor], p: float) -> None:
    """The estimate at p is the exact VJP of grad_y masked to the rows where rand(|o1|) < p, scaled by 1/p; with
    no generator the draw comes from torch's default CPU generator."""
    for seed in range(4):
        mask = (torch.rand(O1, generator=torch.Generator().manual_seed(seed)) < p).double().view(1, 1, -1, 1)
        expected = weight_vjp(arguments, arguments["grad_y"] * mask / p)
        result = module.gw(arguments["x"], arguments["grad_y"], p=p, generator=torch.Generator().manual_seed(seed))
        assert_exact(result, expected)
        torch.manual_seed(seed)
        assert_exact(module.gw(arguments["x"], arguments["grad_y"], p=p), expected)


def test_the_file_value_is_the_default(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    a = arguments
    default = module.gw(a["x"], a["grad_y"], generator=torch.Generator().manual_seed(1))
    assert_exact(module.gw(a["x"], a["grad_y"], p=0.25, generator=torch.Generator().manual_seed(1)), default)


# -- checked at call time ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (0, "must be in (0, 1], got 0"),
        (1.5, "got 1.5"),
        (-0.1, "got -0.1"),
        (True, "must be a number, got bool"),
        ("0.5", "got str"),
        (torch.tensor(0.5), "got Tensor"),
    ],  # fmt: skip
)
def test_a_wrong_p_names_the_function_and_the_argument(
    module: types.ModuleType, arguments: dict[str, Tensor], value: object, fragment: str
) -> None:
    error = ValueError if isinstance(value, int | float) and not isinstance(value, bool) else TypeError
    with pytest.raises(error, match=r"^gw\(\): keyword p= is the probability to keep each entry") as info:
        module.gw(arguments["x"], arguments["grad_y"], p=value)
    assert fragment in str(info.value)
    with pytest.raises(error, match=r"^gw_both\(\): keyword p_n="):
        module.gw_both(arguments["x"], arguments["grad_y"], p_n=value)


def test_a_wrong_count_names_the_function_and_the_index(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    with pytest.raises(ValueError, match=r"^gw_count\(\): keyword count=10, but index o1 has 9 entries"):
        module.gw_count(arguments["x"], arguments["grad_y"], count=10)
    with pytest.raises(ValueError, match=r"^gw_both\(\): keyword count_o1=0, but index o1 has 9 entries"):
        module.gw_both(arguments["x"], arguments["grad_y"], count_o1=0)


# -- names that could meet ------------------------------------------------------------------------------------------


def test_an_input_named_p_gives_way_to_the_keyword() -> None:
    text = "index n, c = 3\ninput p[n, c]\ns[n] = p[n, c] * delta(c)\nt = sample(s, index=c, p=0.5)\n"
    module = tncompiler.load_source(text)
    parameters = list(inspect.signature(module.t).parameters)
    assert parameters == ["p_2", "p", "generator"]
    value = torch.randn(2, 3, dtype=torch.float64)
    assert_exact(module.t(value, p=1), value.sum(1))


def test_an_open_index_named_p_that_is_a_keyword_size_is_refused() -> None:
    """A strided layer's input VJP takes its open input size as a keyword named after the index: an index named p
    would meet the keep-probability, so the compile fails where the function is defined."""
    text = (
        "index n, c = 2, d = 2, p, k = 3\npattern q(p, o, k) = conv(stride=2)\ninput x[n, c, p]\ninput w[d, c, k]\n"
        "y[n, d, o] = x[n, c, p] * q(p, o, k) * w[d, c, k]\ngx = sample(vjp(y, x), index=d, p=0.5)\n"
    )
    with pytest.raises(tncompiler.TncError, match="'p' cannot be one") as info:
        tncompiler.compile_source(text, "f.tnd")
    assert str(info.value).startswith("f.tnd:6:")


@pytest.mark.parametrize("generator", ["seed", 3, torch.randn(2)])
def test_a_wrong_generator_is_a_type_error_naming_the_function(
    module: types.ModuleType, arguments: dict[str, Tensor], generator: object
) -> None:
    """generator="seed" reached torch's draw and raised an AttributeError."""
    with pytest.raises(TypeError, match=r"^gw\(\): keyword generator= must be a torch.Generator or None, got "):
        module.gw(arguments["x"], arguments["grad_y"], generator=generator)

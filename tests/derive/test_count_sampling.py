"""`sample(z, index=c, count=K)`: tensor dropout with a fixed budget. Exactly K distinct entries of c, drawn
uniformly without replacement, scaled by |c|/K: unbiased, exact at K = |c|, with static shapes, so the function
traces as one graph under torch.compile(fullgraph=True); its variance against Bernoulli sampling at p = K/|c| is
the one docs/language.md derives; what cannot be counted is refused (in the file, or at call time)."""

from __future__ import annotations

import math
import types

import pytest
import torch

import tncompiler
from tests.cases import GROUPED_CONV, GROUPED_LAYER
from tncompiler.errors import TncError

Tensor = torch.Tensor

HEAD = GROUPED_LAYER
SOURCE = (
    HEAD
    + """
w_o1 = sample(gw, index=o1, count=2)         # the weight VJP's output rows: the kernel on 2 of 5 windows
w_n = sample(gw, index=n, count=3)           # the batch (sized at call time)
x_o1 = sample(gx, index=o1, count=2)         # the input VJP's output rows
y_c = sample(y, index=c, count=1)            # a contraction on gathered tensors
w_both = sample(sample(gw, index=o1, count=3), index=n, p=0.5)
w_all = sample(gw, index=o1, count=5)        # every entry: exact
"""
)
CONV = GROUPED_CONV
BATCH = 4
DRAWS = 3000


@pytest.fixture(scope="module")
def module() -> types.ModuleType:
    return tncompiler.load_source(SOURCE, "count.tnd")


@pytest.fixture(scope="module")
def arguments() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    shapes = {"x": (BATCH, 4, 10, 7), "w": (6, 2, 3, 2), "b": (6,), "grad_y": (BATCH, 6, 5, 5)}
    return {name: torch.randn(shape, generator=g, dtype=torch.float64) for name, shape in shapes.items()}


def exact(name: str, a: dict[str, Tensor]) -> Tensor:
    """What the sampled function `name` estimates, from PyTorch."""
    if name.startswith("y_"):
        return torch.nn.functional.conv2d(a["x"], a["w"], a["b"], **CONV)
    if name.startswith("x_"):
        return torch.nn.grad.conv2d_input(a["x"].shape, a["w"], a["grad_y"], **CONV)
    return torch.nn.grad.conv2d_weight(a["x"], a["w"].shape, a["grad_y"], **CONV)


def call(module: types.ModuleType, name: str, a: dict[str, Tensor], **keywords: object) -> Tensor:
    names = {"y": ("x", "w", "b"), "x": ("w", "grad_y"), "w": ("x", "grad_y")}[name[0]]
    return getattr(module, name)(*[a[k] for k in names], **keywords)  # type: ignore[no-any-return]


# -- the draw: K distinct entries, uniformly ---------------------------------------------------------------------------

# t[d] = (N/K) Σ over K kept c of z[c, d]: with z the identity, t shows which entries were kept.
REVEAL = "index c = 10, d = 10\ninput z[c, d]\ns[d] = z[c, d] * delta(c)\nt = sample(s, index=c, count=3)\n"


def test_exactly_count_distinct_entries_uniformly() -> None:
    module = tncompiler.load_source(REVEAL)
    identity, generator = torch.eye(10, dtype=torch.float64), torch.Generator().manual_seed(5)
    hits = torch.zeros(10)
    for _ in range(DRAWS):
        draw = module.t(identity, generator=generator)
        kept = draw != 0
        assert kept.sum() == 3 and torch.allclose(draw[kept], torch.full((3,), 10 / 3, dtype=torch.float64))
        hits += kept
    # each entry is among the 3 with probability 3/10: binomial counts within 4 standard deviations
    sd = math.sqrt(DRAWS * 0.3 * 0.7)
    assert ((hits - DRAWS * 0.3).abs() < 4 * sd).all(), hits


def test_the_same_seed_gives_the_same_draw(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    first = call(module, "w_o1", arguments, generator=torch.Generator().manual_seed(3))
    again = call(module, "w_o1", arguments, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    torch.manual_seed(3)  # without a generator: torch's default CPU generator
    torch.testing.assert_close(call(module, "w_o1", arguments), first, rtol=0, atol=0)


# -- unbiased, and exact with every entry ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["w_o1", "w_n", "x_o1", "y_c", "w_both"])
def test_the_mean_of_many_draws_is_within_three_standard_errors(
    module: types.ModuleType, arguments: dict[str, Tensor], name: str
) -> None:
    """Projected on a few fixed directions (the sum and two random ones), the mean of the draws lies within three
    standard errors (estimated from the draws) of the exact value."""
    generator = torch.Generator().manual_seed(1234)
    draws = torch.stack([call(module, name, arguments, generator=generator) for _ in range(DRAWS)]).flatten(1)
    expected = exact(name, arguments).flatten()
    directions = torch.cat([torch.ones(1, expected.numel()), torch.randn(2, expected.numel(), generator=generator)])
    projected, target = draws @ directions.double().T, directions.double() @ expected
    assert projected.std(0).min() > 1e-6 * target.abs().max(), "the draws do not vary: nothing was sampled"
    errors = (projected.mean(0) - target).abs() / (projected.std(0) / math.sqrt(DRAWS))
    assert (errors <= 3).all(), f"the mean is {errors.max():.2f} standard errors from the exact value"


def test_count_of_every_entry_is_exact(module: types.ModuleType, arguments: dict[str, Tensor]) -> None:
    expected = exact("gw", arguments)
    for seed in range(3):
        result = call(module, "w_all", arguments, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(result, expected, rtol=0, atol=1e-10 * expected.abs().max().item())
        per_call = call(module, "w_o1", arguments, count=5, generator=torch.Generator().manual_seed(seed))
        torch.testing.assert_close(per_call, expected, rtol=0, atol=1e-10 * expected.abs().max().item())
    result = call(module, "w_n", arguments, count=BATCH)  # the batch, sized at call time
    torch.testing.assert_close(result, expected, rtol=0, atol=1e-10 * expected.abs().max().item())


# -- static shapes: one graph ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["w_o1", "w_n", "x_o1", "y_c"])
def test_count_sampling_traces_as_one_graph(module: types.ModuleType, arguments: dict[str, Tensor], name: str) -> None:
    function = getattr(module, name)
    args = [arguments[k] for k in {"y": ("x", "w", "b"), "x": ("w", "grad_y"), "w": ("x", "grad_y")}[name[0]]]
    torch._dynamo.reset()
    explained = torch._dynamo.explain(function)(*args)
    assert explained.graph_break_count == 0, [str(reason.reason)[:300] for reason in explained.break_reasons]
    assert explained.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(function, fullgraph=True, backend="aot_eager")
    torch.manual_seed(11)
    result = compiled(*args)
    torch.manual_seed(11)
    torch.testing.assert_close(result, function(*args))  # the same draws as the eager call


# -- variance: count= against Bernoulli at p = K / N ----------------------------------------------------------------

VARIANCE = """
index c = 12, d = 2
input z[c, d]
s[d] = z[c, d] * delta(c)
by_count = sample(s, index=c, count=3)
by_p = sample(s, index=c, p=0.25)
"""


def test_the_variances_are_those_derived_in_the_docs() -> None:
    """For T = (N/K) Σ_kept z_j: Var = N (N - K) / K · S² (S² the unbiased variance of the z_j); Bernoulli at p:
    Var = (1/p - 1) Σ z_j². Column 0 has terms of one sign (count= wins), column 1 terms that cancel (Bernoulli
    wins, by at most N / (N - 1) · (1 + ...))."""
    module = tncompiler.load_source(VARIANCE)
    g = torch.Generator().manual_seed(2)
    z = torch.stack(
        [torch.rand(12, generator=g, dtype=torch.float64) + 1, torch.randn(12, generator=g, dtype=torch.float64)], 1
    )
    z[:, 1] -= z[:, 1].mean()
    draws = 40000
    generator = torch.Generator().manual_seed(9)
    by_count = torch.stack([module.by_count(z, generator=generator) for _ in range(draws)])
    by_p = torch.stack([module.by_p(z, generator=generator) for _ in range(draws)])
    n, k, p = 12, 3, 0.25
    expected_count = n * (n - k) / k * z.var(0)
    expected_p = (1 / p - 1) * (z**2).sum(0)
    torch.testing.assert_close(by_count.var(0), expected_count, rtol=0.05, atol=0)
    torch.testing.assert_close(by_p.var(0), expected_p, rtol=0.05, atol=0)
    assert by_count.var(0)[0] < by_p.var(0)[0] and by_count.var(0)[1] > by_p.var(0)[1]


# -- what cannot be counted ------------------------------------------------------------------------------------------

ERRORS = [
    ("s = sample(gw, index=o1, p=0.5, count=2)", 33, "sample() takes p= or count=, not both"),
    ("s = sample(gw, index=o1, count=0)", 26, "count= takes a whole number of entries, at least 1"),
    ("s = sample(gw, index=o1, count=2.5)", 26, "count= takes a whole number"),
    ("s = sample(gw, index=o1, count=6)", 26, "count=6 is more than the 5 entries of 'o1'"),
]


@pytest.mark.parametrize(("line", "column", "message"), ERRORS, ids=[line for line, _, _ in ERRORS])
def test_a_wrong_count_is_a_located_error(line: str, column: int, message: str) -> None:
    with pytest.raises(TncError) as info:
        tncompiler.compile_source(HEAD + line + "\n", "f.tnd")
    text = str(info.value)
    assert text.startswith(f"f.tnd:{HEAD.count(chr(10)) + 1}:{column}: error: {message}"), text
    assert text.split("\n")[2] == " " * (4 + column - 1) + "^" * (len(line.split(", ")[-1].rstrip(")"))), text


@pytest.mark.parametrize(
    ("count", "fragment"),
    [(5, "keyword count=5, but index n has 4 entries"), (0, "keyword count=0"), (2.0, "must be an int, got float")],
)
def test_a_wrong_count_per_call_names_the_function_and_the_index(
    module: types.ModuleType, arguments: dict[str, Tensor], count: object, fragment: str
) -> None:
    error = TypeError if isinstance(count, float) else ValueError
    with pytest.raises(error, match=r"^w_n\(\): ") as info:
        call(module, "w_n", arguments, count=count)
    assert fragment in str(info.value)

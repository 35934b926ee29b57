"""Differential fuzzing of whole programs: each random program (tests/properties/programs.py) is compiled with
rewrites and without, and every function it defines is compared in float64 with a dense einsum of the formula as
written (derivatives through torch.autograd / torch.func on it). A failure names the seed and prints the program.

`make test` runs QUICK programs of each family (500 in all); `make test-all` (`-m slow`) runs SLOW more (5,000).
"""

from __future__ import annotations

import inspect
import os
import types

import pytest
import torch

from tests.cases import TOLERANCE, relative_error
from tests.properties import programs
from tests.properties.programs import Program, Transform
from tncompiler.api import load_source
from tncompiler.errors import TncError

# Programs per family: 500 in `make test` (sums compile in a tenth of the time of N-d convolutions), 5,000 with -m slow.
QUICK = {"sums": int(os.environ.get("TNC_PROGRAMS", "400")), "conv": int(os.environ.get("TNC_PROGRAMS", "100"))}
SLOW = {"sums": 3000, "conv": 2000}


def _extra(program: Program, transform: Transform, generator: torch.Generator) -> torch.Tensor | None:
    """The new argument of a transform (or of the diagram it slices): a cotangent of y or a tangent of x."""
    while transform.kind == "slice" and transform.of != "y":
        transform = next(t for t in program.transforms if t.name == transform.of)
    if transform.kind in ("vjp", "sample_vjp"):
        shape = [program.sizes[leg] for leg in program.left]
    elif transform.kind == "jvp":
        shape = [program.sizes[leg] for leg in program.inputs[transform.wrt]]
    else:
        return None
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _extra_layout(program: Program, name: str, extra: torch.Tensor) -> list[int]:
    transform = next(t for t in program.transforms if t.name == name)
    while transform.kind == "slice" and transform.of != "y":
        transform = next(t for t in program.transforms if t.name == transform.of)
    legs = program.inputs[transform.wrt] if transform.kind == "jvp" else program.left
    return list(programs.flat(program, legs, extra).shape)  # mypy: the extra has one axis per leg


def _call(
    function: object, values: dict[str, torch.Tensor], extra: torch.Tensor | None, sizes: dict[str, int]
) -> torch.Tensor:
    """Call a generated function by its parameters' names; sampled functions at p = 1 (exact); an open size that no
    argument carries as its keyword."""
    assert callable(function)
    kwargs: dict[str, object] = {}
    for name, parameter in inspect.signature(function).parameters.items():
        if name in values:
            kwargs[name] = values[name]
        elif name.startswith(("grad_", "tangent_")):
            kwargs[name] = extra
        elif name == "p" or name.startswith("p_"):
            kwargs[name] = 1.0
        elif name in sizes:
            kwargs[name] = sizes[name]
        elif name == "dtype":  # a function without tensor arguments
            kwargs[name] = torch.float64
        elif parameter.default is inspect.Parameter.empty:
            raise AssertionError(f"no value for parameter {name}")
    return function(**kwargs)


def _compiled(program: Program, seed: int) -> types.ModuleType:
    """The program compiled with rewrites; a sample transform over an index that its VJP does not sum in every term
    is dropped first (the generator guesses the summed indices; the compiler refuses the others with a located
    error, tested elsewhere)."""
    try:
        return load_source(program.source(), f"seed{seed}.tnd")
    except TncError as error:
        if "does not sum over" not in error.message:
            raise
    program.transforms = [t for t in program.transforms if t.kind != "sample_vjp"]
    return load_source(program.source(), f"seed{seed}.tnd")


def check_program(program: Program, seed: int) -> None:
    modules = {True: _compiled(program, seed)}
    source = program.source()
    modules[False] = load_source(source, f"seed{seed}.tnd", rewrite=False)
    generator = torch.Generator().manual_seed(seed)
    values = programs.arguments(program, generator)
    extras = {t.name: _extra(program, t, generator) for t in program.transforms}
    wanted = [("y", programs.reference(program, values))]
    wanted += [(t.name, programs.expected(program, t, values, extras[t.name])) for t in program.transforms]
    flat = {name: programs.flat(program, program.inputs[name], value) for name, value in values.items()}
    for rewrite, module in modules.items():
        for name, reference in wanted:
            extra = extras.get(name)
            if extra is not None:  # a cotangent laid out as y, a tangent as x
                extra = extra.reshape(_extra_layout(program, name, extra))
            actual = _call(getattr(module, name), flat, extra, program.sizes)
            error = relative_error(actual, programs.flat(program, programs.layout(program, name), reference))
            assert error <= TOLERANCE[torch.float64], (
                f"seed {seed}, {name}, rewrite={rewrite}: relative error {error:.3g}\n{source}"
            )


@pytest.mark.parametrize("family", ["sums", "conv"])
def test_programs_agree_with_dense_einsum(family: str) -> None:
    build = programs.sums_program if family == "sums" else programs.conv_program
    for seed in range(QUICK[family]):
        check_program(build(seed), seed)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sums", "conv"])
def test_programs_agree_with_dense_einsum_many(family: str) -> None:
    build = programs.sums_program if family == "sums" else programs.conv_program
    for seed in range(QUICK[family], QUICK[family] + SLOW[family]):
        check_program(build(seed), seed)


# Programs that have failed before, kept so that they stay fixed (issue 19's reproducers among them).
KNOWN = [
    ("index f = 4\ninput x[f]\ny[] = x[f] * delta(f) + x[f] * delta(f) * 3\n", "y", lambda x: 4 * x.sum()),
    ("index f = 4\ninput x[f]\ny[] = x[f] * x[f] * 3\ngx = vjp(y, x)\n", "gx", lambda x: 6 * x),
    ("index f = 4\ninput x[f]\nloss[] = 0.5 * x[f] * x[f]\ngrad = vjp(loss, x)\n", "grad", lambda x: x),
    (
        "index f = 4\ninput x[f]\ny[] = 3 * x[f] * x[f] + 0.5 * x[f] * x[f] + 2 * x[f] * x[f]\n",
        "y",
        lambda x: 5.5 * (x * x).sum(),
    ),
]


@pytest.mark.parametrize("rewrite", [True, False])
@pytest.mark.parametrize("number", range(len(KNOWN)))
def test_scalar_factors_on_repeated_networks(number: int, rewrite: bool) -> None:
    """A network computed once and scaled in place was then reused by an equal term as if unscaled."""
    source, name, expected = KNOWN[number]
    x = torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    function = getattr(load_source(source, rewrite=rewrite), name)
    args = (x,) if len(inspect.signature(function).parameters) == 1 else (x, torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(function(*args), expected(x), rtol=1e-12, atol=0)


@pytest.mark.parametrize("rewrite", [True, False])
def test_scalar_factor_on_a_repeated_term_of_a_matrix_product(rewrite: bool) -> None:
    source = "index f = 3, g = 4\ninput x[f, g]\ninput w[g]\ny[f] = x[f, g] * w[g] + 3 * x[f, g] * w[g]\n"
    x, w = torch.randn(3, 4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(load_source(source, rewrite=rewrite).y(x, w), 4 * x @ w, rtol=1e-12, atol=1e-14)

"""Edge cases with a defined result or a ValueError that says why: windows that read only padding, empty batches,
results that would alias a cached constant, sums too long for Python's parser, complex and half-precision dtypes."""

from __future__ import annotations

import pytest
import torch

import tncompiler
from tests import cases
from tests.cases import conv

TOLERANCE = {torch.float16: 1e-2, torch.bfloat16: 4e-2}


@pytest.mark.parametrize("kernel", [1, 2, 3])
def test_windows_that_read_only_padding(kernel: int) -> None:
    """`conv(stride=4, padding=(6, 0))` on a length-2 input: the input VJP died in narrow(); where no window reads
    the input, the answer is zeros."""
    case = conv([2], [kernel], stride=4, padding=(6, 0), c_in=1, c_out=1)
    module = cases.load(cases.source(case, cases.OPEN_LEVELS["batch"], cases.statements(case)))
    args = cases.all_arguments(case)
    for op in cases.operations(case):
        expected = cases.reference(op, case, args)
        torch.testing.assert_close(cases.call(getattr(module, op.name), case, op.takes, args), expected)
    if kernel == 1:
        assert not cases.call(module.gx, case, ("w", "grad_y"), args).any()


@pytest.mark.parametrize("level", ["batch", "spatial"])
def test_an_empty_batch(level: str) -> None:
    """Every op takes a batch of 0 and returns what PyTorch does (empty, or zeros for a weight gradient); a KFAC
    factor, which divides by the batch size, raises a ValueError naming it."""
    case = conv([6, 5], [3, 2], stride=2, padding=1, groups=2, bias=True)
    module = cases.load(cases.source(case, cases.OPEN_LEVELS[level], cases.statements(case)))
    empty = case.resized(0, 0)
    args = cases.all_arguments(empty)
    for op in cases.operations(case):
        if op.name in ("A", "Ar", "B", "Br"):
            with pytest.raises(ValueError, match=rf"{op.name}\(\): index n has size 0 \(an empty batch\?\)"):
                cases.call(getattr(module, op.name), empty, op.takes, args)
            continue
        expected = cases.reference(op, empty, args)
        torch.testing.assert_close(cases.call(getattr(module, op.name), empty, op.takes, args), expected)


def test_dividing_by_an_empty_size_is_refused() -> None:
    module = tncompiler.load_source("index n, c = 2\ninput x[n, c]\nm[c] = x[n, c] * delta(n) / size(n)\n")
    torch.testing.assert_close(module.m(torch.ones(4, 2)), torch.ones(2))
    with pytest.raises(ValueError, match=r"m\(\): index n has size 0"):
        module.m(torch.ones(0, 2))


CONSTANTS = """index i = 5, o = 3, k = 3, j = 2
pattern p(i, o, k) = conv(padding=1, stride=2)
pattern q(i, j, k) = conv(stride=2)
y[i, o, k] = p(i, o, k)
z[i, o, k] = p(i, o, k) * 1
t[o, i, k] = p(i, o, k)
s[o] = p(i, o, k) * delta(i) * delta(k)
u[i, j, k] = q(i, j, k)
"""


@pytest.mark.parametrize("name", ["y", "z", "t", "s", "u"])
def test_a_result_is_never_the_cached_constant(name: str) -> None:
    """A definition that is just an index pattern returned the cached tensor itself: a caller that changed it in
    place changed every later result, also of other functions that share the constant."""
    module = tncompiler.load_source(CONSTANTS)
    before = {other: getattr(module, other)().clone() for other in ("y", "z", "t", "s", "u")}
    getattr(module, name)().mul_(7).add_(1)
    for other, value in before.items():
        torch.testing.assert_close(getattr(module, other)(), value)


def test_a_sum_of_thousands_of_terms_compiles_and_imports() -> None:
    """`result = t1 + t2 + ... + t3000` nested too deeply for Python's parser (RecursionError on import)."""
    terms = 3000
    module = tncompiler.load_source("index n\ninput x[n]\ny[n] = " + " + ".join(["x[n]"] * terms) + "\n")
    x = torch.randn(3, dtype=torch.float64)
    torch.testing.assert_close(module.y(x), terms * x)


def test_complex_arguments_are_refused() -> None:
    """PyTorch's VJP of a complex function is the conjugate transpose, tnc's the transpose: they would disagree."""
    module = tncompiler.load_source("index n, c = 2\ninput x[n, c]\ninput w[c]\ny[n] = x[n, c] * w[c]\n")
    with pytest.raises(ValueError, match=r"y\(\): argument 'x' must have a real floating dtype .*complex64"):
        module.y(torch.ones(2, 2, dtype=torch.complex64), torch.ones(2, dtype=torch.complex64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize(
    "case",
    [
        conv([7, 6], [3, 3], stride=2, padding=1, groups=2, bias=True),
        conv([4], [3], stride=2, padding=1, transpose=True),
    ],
    ids=["conv2d", "transpose1d"],
)
def test_half_precision_runs_every_op(dtype: torch.dtype, case: cases.Conv) -> None:
    """float16 and bfloat16 run every operation on the CPU, in that dtype, to that dtype's accuracy."""
    module = cases.load(cases.source(case, cases.OPEN_LEVELS["spatial"], cases.statements(case)))
    args = cases.all_arguments(case)
    low = {name: value.to(dtype) for name, value in args.items()}
    for op in cases.operations(case):
        expected = cases.reference(op, case, args)
        actual = cases.call(getattr(module, op.name), case, op.takes, low)
        assert actual.dtype == dtype, op.name
        error = (actual.double() - expected).abs().max().item() / (expected.abs().max().item() or 1.0)
        assert error <= TOLERANCE[dtype], f"{op.name}: {error:.3g}"

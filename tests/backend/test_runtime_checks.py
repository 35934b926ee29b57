"""A wrong argument raises a ValueError (a wrong value or shape) or a TypeError (a wrong type) that names the
function, the argument and the index or axis."""

from __future__ import annotations

import re

import pytest
import torch

import tncompiler
from tests import cases

CONV = """
index n
index g = 2, c = 2, d = 3
index i1 = 6, i2 = 5, k1 = 3, k2 = 2
pattern p1(i1, o1, k1) = conv(stride=2, padding=1)
pattern p2(i2, o2, k2) = conv()
input x[n, (g c), i1, i2]
input w[(g d), c, k1, k2]
input b[(g d)]
z[n, (g d), o1, o2] = x[n, (g c), i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[(g d), c, k1, k2] + b[(g d)]
"""

# Two inputs share the call-time index n, and m is bound from inside the grouped axis (m c).
SHARED = """
index n, m, c = 3, i = 4
input a[n, (m c)]
input u[n, c, i]
v[n, m, i] = a[n, (m c)] * u[n, c, i]
"""


def conv_arguments(**changes: object) -> dict[str, object]:
    arguments: dict[str, object] = {"x": torch.randn(2, 4, 6, 5, dtype=torch.float64),
                                    "w": torch.randn(6, 2, 3, 2, dtype=torch.float64),
                                    "b": torch.randn(6, dtype=torch.float64)}
    arguments.update(changes)
    return arguments


def shared_arguments(**changes: object) -> dict[str, object]:
    arguments: dict[str, object] = {"a": torch.randn(2, 6), "u": torch.randn(2, 3, 4)}
    arguments.update(changes)
    return arguments


def raises_naming(
    call: object, arguments: dict[str, object], *fragments: str, error: type[Exception] = ValueError
) -> str:
    """Call with `arguments` (positionally, in file order); the error's message holds every fragment."""
    assert callable(call)
    with pytest.raises(error) as caught:
        call(*arguments.values())
    message = str(caught.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def test_good_arguments_pass() -> None:
    module = cases.load(CONV)
    assert module.z(**conv_arguments()).shape == (2, 6, 3, 4)
    assert cases.load(SHARED).v(**shared_arguments()).shape == (2, 2, 4)


RANK_CASES = {
    "x-too-few-axes": ({"x": torch.randn(4, 6, 5, dtype=torch.float64)}, "'x'", "4 axes", "[n, (g c), i1, i2]"),
    "x-too-many-axes": ({"x": torch.randn(1, 2, 4, 6, 5, dtype=torch.float64)}, "'x'", "4 axes", "(1, 2, 4, 6, 5)"),
    "w-too-few-axes": ({"w": torch.randn(6, 2, 3, dtype=torch.float64)}, "'w'", "4 axes", "[(g d), c, k1, k2]"),
    "b-scalar": ({"b": torch.tensor(1.0, dtype=torch.float64)}, "'b'", "1 axes", "[(g d)]"),
}


@pytest.mark.parametrize(("changes", "fragments"), [(c, f) for c, *f in RANK_CASES.values()], ids=list(RANK_CASES))
def test_wrong_rank(changes: dict[str, object], fragments: list[str]) -> None:
    raises_naming(cases.load(CONV).z, conv_arguments(**changes), "z()", *fragments)


def test_the_fast_check_tests_a_rank_only_where_an_axis_is_read_before_the_shapes() -> None:
    """x's batch is read from its axis 0 before the shape check, so its rank is tested first; w's and b's whole
    shapes are compared, so a wrong rank there is found by that comparison (test_wrong_rank: the same message).
    Layouts, dtypes and devices are each one chained comparison."""
    text = tncompiler.compile_source(CONV)
    fast = text[text.index("    if not (") : text.index("_check_arguments(\n")]
    assert "x.dim() == 4" in fast and "w.dim()" not in fast and "b.dim()" not in fast
    assert "x.layout == w.layout == b.layout == torch.strided" in fast
    assert "x.dtype == w.dtype == b.dtype" in fast and "x.device == w.device == b.device" in fast


SIZE_CASES = {
    "x-grouped-channels": ({"x": torch.randn(2, 5, 6, 5, dtype=torch.float64)}, "'x'", "axis 1", "(g c)", "5", "4"),
    "x-first-spatial": ({"x": torch.randn(2, 4, 7, 5, dtype=torch.float64)}, "'x'", "axis 2", "(i1)", "7", "6"),
    "x-second-spatial": ({"x": torch.randn(2, 4, 6, 6, dtype=torch.float64)}, "'x'", "axis 3", "(i2)", "6", "5"),
    "w-out-channels": ({"w": torch.randn(4, 2, 3, 2, dtype=torch.float64)}, "'w'", "axis 0", "(g d)"),
    "w-in-channels": ({"w": torch.randn(6, 4, 3, 2, dtype=torch.float64)}, "'w'", "axis 1", "(c)"),
    "w-kernel": ({"w": torch.randn(6, 2, 3, 3, dtype=torch.float64)}, "'w'", "axis 3", "(k2)", "3", "2"),
    "b-channels": ({"b": torch.randn(3, dtype=torch.float64)}, "'b'", "axis 0", "(g d)", "3", "6"),
}


@pytest.mark.parametrize(("changes", "fragments"), [(c, f) for c, *f in SIZE_CASES.values()], ids=list(SIZE_CASES))
def test_wrong_size(changes: dict[str, object], fragments: list[str]) -> None:
    raises_naming(cases.load(CONV).z, conv_arguments(**changes), "z()", *fragments)


def test_call_time_index_disagrees_between_arguments() -> None:
    message = raises_naming(cases.load(SHARED).v, shared_arguments(u=torch.randn(3, 3, 4)),
                            "v()", "'u'", "axis 0", "(n)")
    assert re.search(r"\b3\b", message) and re.search(r"\b2\b", message), message


def test_call_time_index_in_a_group_must_divide() -> None:
    raises_naming(cases.load(SHARED).v, shared_arguments(a=torch.randn(2, 7)),
                  "v()", "'a'", "axis 1", "(m c)", "7", "multiple of 3")


def test_call_time_index_in_a_group_must_agree_with_the_file() -> None:
    raises_naming(cases.load(SHARED).v, shared_arguments(u=torch.randn(2, 2, 4)), "v()", "'u'", "axis 1", "(c)")


def test_mixed_dtypes() -> None:
    arguments = conv_arguments(w=torch.randn(6, 2, 3, 2, dtype=torch.float32))
    raises_naming(cases.load(CONV).z, arguments, "z()", "'w'", "'x'", "torch.float32", "torch.float64")


def test_integer_dtype() -> None:
    arguments = conv_arguments(x=torch.ones(2, 4, 6, 5, dtype=torch.int64))
    raises_naming(cases.load(CONV).z, arguments, "z()", "'x'", "torch.int64")


def test_mixed_devices() -> None:
    """A tensor on the meta device stands in for a second device on machines without a GPU."""
    arguments = conv_arguments(b=torch.empty(6, dtype=torch.float64, device="meta"))
    raises_naming(cases.load(CONV).z, arguments, "z()", "'b'", "'x'", "meta")


NON_TENSORS = {"list": [[0.0] * 5] * 6, "float": 1.0, "none": None, "string": "x"}


@pytest.mark.parametrize("value", list(NON_TENSORS.values()), ids=list(NON_TENSORS))
@pytest.mark.parametrize("argument", ["x", "w", "b"])
def test_non_tensor(argument: str, value: object) -> None:
    raises_naming(cases.load(CONV).z, conv_arguments(**{argument: value}), "z()", f"'{argument}'", "torch.Tensor",
                  type(value).__name__, error=TypeError)


@pytest.mark.parametrize("argument", ["x", "w", "b"])
def test_a_sparse_tensor_is_a_type_error_naming_the_argument(argument: str) -> None:
    """A sparse argument passed every check and failed inside a kernel with an untyped RuntimeError."""
    sparse = conv_arguments()[argument].to_sparse()  # type: ignore[union-attr]
    raises_naming(cases.load(CONV).z, conv_arguments(**{argument: sparse}), "z()", f"'{argument}'", "dense",
                  "sparse_coo", error=TypeError)


JACOBIAN = "index a = 3\ninput x[a]\ny[a] = 2 * x[a]\nj = jacobian(y, x)\n"


def test_a_function_without_tensor_arguments_takes_dtype_and_device() -> None:
    """It returned float32 on the CPU whatever the caller wanted."""
    j = cases.load(JACOBIAN).j
    assert j().dtype == torch.get_default_dtype()
    torch.testing.assert_close(j(dtype=torch.float64), 2 * torch.eye(3, dtype=torch.float64), rtol=0, atol=0)
    on_meta = j(dtype=torch.float16, device="meta")
    assert (on_meta.dtype, on_meta.device.type, on_meta.shape) == (torch.float16, "meta", (3, 3))


@pytest.mark.parametrize(
    ("keywords", "error", "fragment"),
    [
        ({"dtype": "float64"}, TypeError, "keyword dtype= must be a torch.dtype, got str"),
        ({"dtype": torch.int64}, ValueError, "real floating dtype"),
        ({"device": 1.5}, TypeError, "keyword device= must be"),
        ({"device": "nowhere"}, ValueError, "keyword device='nowhere' is not a device"),
    ],
)
def test_wrong_dtype_or_device_keywords_name_the_function(
    keywords: dict[str, object], error: type[Exception], fragment: str
) -> None:
    with pytest.raises(error, match=r"^j\(\): ") as caught:
        cases.load(JACOBIAN).j(**keywords)
    assert fragment in str(caught.value)

"""Each mistake in a .tnd file gives FILE:LINE:COL, a clear message, the source line and a caret."""

from __future__ import annotations

import inspect

import pytest
import torch

import tncompiler
from tncompiler import TncError

HEAD = "index n, c = 3, d = 4, i = 8, k = 3\ninput x[n, c, i]\ninput w[d, c, k]\n"


def error_of(source: str) -> TncError:
    with pytest.raises(TncError) as caught:
        tncompiler.compile_source(source, "bad.tnd")
    return caught.value


def check(source: str, line: int, column: int, *fragments: str) -> str:
    error = error_of(source)
    text = str(error)
    assert text.startswith(f"bad.tnd:{line}:{column}: error: "), text
    for fragment in fragments:
        assert fragment in text, text
    lines = text.splitlines()
    assert lines[1].strip() == source.splitlines()[line - 1].strip(), text
    assert lines[2].index("^") == lines[1].index(source.splitlines()[line - 1].strip()) + column - 1 - (
        len(source.splitlines()[line - 1]) - len(source.splitlines()[line - 1].lstrip())
    ), text
    return text


def test_undeclared_index_in_input() -> None:
    check("index n\ninput x[n, q]\n", 2, 12, "undeclared index 'q'")


def test_undeclared_index_in_term_suggests_a_near_name() -> None:
    text = check(HEAD + "y[n, d] = x[n, cc, i] * w[d, c, k]\n", 4, 16, "undeclared index 'cc'")
    assert "did you mean 'c'" in text


def test_unknown_tensor() -> None:
    check(HEAD + "y[n] = z[n, c]\n", 4, 8, "unknown tensor 'z'")


def test_size_clash_between_index_and_axis() -> None:
    check(HEAD + "y[n, d] = x[n, d, i] * w[d, c, i]\n", 4, 16, "size clash", "expected 3")


def test_size_clash_between_declared_and_inferred_pattern_output() -> None:
    check("index i = 8, k = 3, o = 7\npattern p(i, o, k) = conv(stride=1)\n", 2, 14, "size clash", "size 6")


def test_free_index_on_the_right_missing_on_the_left() -> None:
    check(HEAD + "y[n, d] = x[n, c, i] * w[d, c, k]\n", 4, 11, "index 'i' appears once on the right")


def test_summed_index_on_both_sides_is_fine_but_a_repeated_left_index_is_not() -> None:
    check(HEAD + "y[n, n] = x[n, c, i] * x[n, c, i]\n", 4, 6, "index 'n' appears twice")


def test_pattern_with_two_legs() -> None:
    check("index i = 8, k = 3\npattern p(i, k) = conv()\n", 2, 1, "has 2 legs", "three")


def test_pattern_used_with_two_legs() -> None:
    source = HEAD + "pattern p(i, o, k) = conv()\ny[n, d, o] = x[n, c, i] * p(i, k) * w[d, c, k]\n"
    check(source, 5, 27, "takes three indices")


def test_unknown_pattern_argument_lists_valid_ones() -> None:
    check("index i = 8, k = 3\npattern p(i, o, k) = conv(strides=2)\n", 2, 27, "unknown argument 'strides'",
          "stride, padding, dilation")


def test_stride_zero() -> None:
    check("index i = 8, k = 3\npattern p(i, o, k) = conv(stride=0)\n", 2, 34, "stride must be at least 1")


def test_negative_padding() -> None:
    check("index i = 8, k = 3\npattern p(i, o, k) = conv(padding=-1)\n", 2, 35, "padding must not be negative")


def test_unknown_padding_word() -> None:
    check("index i = 8, k = 3\npattern p(i, o, k) = conv(padding=full)\n", 2, 35, "unknown padding 'full'", "same")


def test_same_padding_needs_stride_one() -> None:
    check("index i = 8, k = 3\npattern p(i, o, k) = conv(stride=2, padding=same)\n", 2, 1, "stride 1")


def test_unknown_pattern_kind() -> None:
    check("index i = 8, k = 3\npattern p(i, o, k) = conv2(stride=1)\n", 2, 22, "unknown pattern kind 'conv2'", "conv")


def test_inferred_output_size_not_positive() -> None:
    check("index i = 4, k = 7\npattern p(i, o, k) = conv(dilation=1)\n", 2, 1, "output size -2",
          "kernel", "larger than the padded input")


@pytest.mark.parametrize(
    ("source", "line", "column", "fragment"),
    [
        ("index n\nindex n = 2\n", 2, 7, "'n' is already declared as an index at line 1"),
        ("index n\ninput n[n]\n", 2, 7, "already declared as an index"),
        (HEAD + "x[n] = x[n, c, i] * delta(c) * delta(i)\n", 4, 1, "already declared as an input at line 2"),
        ("index i = 8, k = 3\npattern p(i, o, k) = conv()\npattern p(i, o2, k) = conv()\n", 3, 9, "already declared"),
    ],
    ids=["index-index", "index-input", "input-definition", "pattern-pattern"],
)
def test_duplicate_names(source: str, line: int, column: int, fragment: str) -> None:
    check(source, line, column, fragment)


def test_unknown_transform_lists_the_transforms() -> None:
    source = HEAD + "y[n, d] = x[n, c, i] * w[d, c, k] * delta(i) * delta(k)\nz = vjpp(y, x)\n"
    check(source, 5, 5, "unknown transform 'vjpp'", "vjp, jvp, jacobian, kfac, kfac_grad, slice, sample")


def test_syntax_error_points_at_the_token() -> None:
    check("index n\ninput x[n,, c]\n", 2, 11, "unexpected ','")


def test_a_definition_cannot_use_a_later_one() -> None:
    check(HEAD + "y[n] = z[n] * delta(n)\nz[n] = x[n, c, i] * delta(c) * delta(i)\n", 4, 8, "defined later")


def test_a_definition_cannot_use_itself() -> None:
    check(HEAD + "y[n] = y[n] * delta(n)\n", 4, 8, "refers to itself")


def test_division_by_a_tensor() -> None:
    check(HEAD + "y[n, c, i] = x[n, c, i] / x[n, c, i]\n", 4, 27, "only a number or size(...) can divide")


def test_call_time_size_that_no_argument_carries_is_a_keyword() -> None:
    """It used to be an error; the contract makes it a keyword-only argument named after the index."""
    module = tncompiler.load_source("index n, m\ninput x[n]\ny[n, m] = x[n]\n")
    assert str(inspect.signature(module.y)) == "(x, *, m)"
    x = torch.arange(3.0)
    assert torch.equal(module.y(x, m=2), x[:, None].expand(3, 2))
    with pytest.raises(ValueError, match=r"y\(\): keyword m= .* at least 1, got 0"):
        module.y(x, m=0)
    with pytest.raises(TypeError, match="m"):
        module.y(x)

"""The memory guard (tncompiler/guard.py): the sizes it reads (`parse_size`, for --max-memory)."""

from __future__ import annotations

import pytest

from tncompiler.guard import parse_size


# -- parse_size -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "size"),
    [("4GiB", 4 * 2**30), ("500 MB", 500 * 10**6), ("1e9", 10**9), (".5KiB", 512), (" 7 ", 7), ("2kb", 2000)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_takes_a_huge_size_as_no_limit() -> None:
    assert parse_size("1e999") == parse_size("1e99999999999999999999") >= 2**80


@pytest.mark.parametrize("text", ["nan", "inf", "-5", "abc", "0", "1e-3", "5 XB", "1.2.3", "", "1_000", "e5", "１２"])
def test_parse_size_refuses_with_a_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not a size|too small") as caught:
        parse_size(text)
    assert "examples: 4GiB" in str(caught.value)

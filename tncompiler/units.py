"""Byte sizes for people: messages print `3.2 KiB`, never `0.00 GiB`."""

from __future__ import annotations

__all__ = ["format_bytes"]

_BINARY_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def format_bytes(count: int) -> str:
    """`512` -> '512 B', `3277` -> '3.2 KiB', `46_277_485_364` -> '43.1 GiB', `2**80` -> '1048576.0 EiB'.

    The unit is the largest one in which the number is at least 1 once rounded, so a message never shows `0.00 GiB`
    for a size that matters, nor `1024.0 KiB` for one MiB. Sizes a file can ask for are unbounded (an index of size
    10**100), so beyond a billion EiB the number is written with an exponent, from the integer, without a float.
    """
    sign, count = ("-" if count < 0 else ""), abs(int(count))
    if count < 1024:
        return f"{sign}{count} B"
    if count >= 10**9 * 2**60:
        digits = str(count // 2**60)
        return f"{sign}{digits[0]}.{digits[1]}e+{len(digits) - 1} EiB"
    value = float(count)
    for unit in _BINARY_UNITS[:-1]:
        value /= 1024
        if round(value, 1) < 1024:
            return f"{sign}{value:.1f} {unit}"
    return f"{sign}{value / 1024:.1f} {_BINARY_UNITS[-1]}"

"""Resource guard: refuse, at compile time, a diagram whose known sizes would need more memory than a limit. It runs
after the schedule, on the scheduled ops (the estimate is tncompiler/memory.py's), before any code is printed."""

from __future__ import annotations

import os
import re

from tncompiler.errors import TncError
from tncompiler.ir.network import Diagram
from tncompiler.memory import BYTES_PER_ENTRY, estimate_bytes
from tncompiler.schedule.ops import Function
from tncompiler.units import format_bytes

__all__ = ["default_limit", "parse_size", "check_memory", "estimate_bytes", "BYTES_PER_ENTRY"]

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}
_NO_LIMIT = 2**80  # a yobibyte: larger than any machine, so a --max-memory beyond it means "no limit"


def default_limit() -> int:
    """Half of this machine's physical memory."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):  # pragma: no cover - platforms without sysconf
        return 8 * 2**30


def parse_size(text: str) -> int:
    """'4GiB', '500 MB', '1e9' -> bytes; anything else is a ValueError, whose message the command line shows as is.

    The number is read by a strict pattern (no sign, no 'nan' or 'inf'), so float() only sees plain decimals; a size
    beyond any machine (1e999 overflows to infinity) is taken as _NO_LIMIT rather than refused: it says "no limit".
    """
    examples = "examples: 4GiB, 500MB, 1e9"
    match = re.fullmatch(r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z]*)\s*", text, re.ASCII)
    if match is None:
        raise ValueError(f"not a size: {text!r} ({examples})")
    number, unit = match.groups()
    if unit.lower() not in _UNITS:
        units = ", ".join(name.upper().replace("IB", "iB") for name in _UNITS if name)
        raise ValueError(f"not a size: {text!r}: unknown unit {unit!r}; units: {units} ({examples})")
    value = float(number) * _UNITS[unit.lower()]
    if value < 1:
        raise ValueError(f"too small: {text!r} is less than one byte ({examples})")
    return _NO_LIMIT if value >= _NO_LIMIT else int(value)


def check_memory(diagram: Diagram, function: Function, limit: int) -> None:
    """Refuse `function`, the scheduled ops of `diagram`, where it needs more than `limit` bytes."""
    needed = estimate_bytes(function, diagram)
    if needed > limit:
        raise TncError(
            f"diagram {diagram.name!r} needs about {format_bytes(needed)} (what its code allocates at once, with "
            f"call-time sizes 1), over the limit of {format_bytes(limit)}",
            diagram.span,
            "make the sizes smaller, or raise the limit with --max-memory",
        )

"""Resource guard: refuse, at compile time, a diagram whose known sizes would need more memory than a limit."""

from __future__ import annotations

import os
import re

import sympy

from tncompiler.errors import TncError
from tncompiler.ir.network import Diagram, Network, natural_shape
from tncompiler.order import plan_network

__all__ = ["default_limit", "parse_size", "check_memory", "estimate_bytes", "BYTES_PER_ENTRY"]

BYTES_PER_ENTRY = 8  # float64, the widest dtype the generated code is used with
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


def _entries(size: sympy.Expr | int) -> int:
    """Entries with every call-time size taken as 1: what the file alone says."""
    value = sympy.sympify(size)
    return int(value.subs({s: 1 for s in value.free_symbols}))


def _term_entries(term: Network) -> int:
    constants = [natural_shape(f) for f in term.factors]
    largest = sum(_entries(sympy.Mul(*shape)) for shape in constants if shape is not None)
    if term.lowering.native is not None:
        return largest + _entries(sympy.Mul(*[term.size(leg) for leg in term.outputs]))
    plans = plan_network(term)
    return largest + min(plan.largest({}) for plan in plans) if plans[0].steps else largest


def estimate_bytes(diagram: Diagram) -> int:
    """The memory of the largest term: its constants and its largest intermediate, in float64."""
    return max((_term_entries(term) for term in diagram.terms), default=0) * BYTES_PER_ENTRY


def check_memory(diagram: Diagram, limit: int) -> None:
    needed = estimate_bytes(diagram)
    if needed > limit:
        raise TncError(
            f"diagram {diagram.name!r} needs about {needed / 2**30:.2f} GiB (largest intermediate and "
            f"constants, with call-time sizes 1), over the limit of {limit / 2**30:.2f} GiB",
            diagram.span,
            "make the sizes smaller, or raise the limit with --max-memory",
        )

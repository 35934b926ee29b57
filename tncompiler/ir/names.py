"""Fresh index names for derived networks: primes, so that derived layouts stay readable (c, c', c'')."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["fresh_name", "fresh_names"]


def fresh_name(base: str, taken: set[str]) -> str:
    """`base` if free, else `base'`, `base''`, ...; the result is added to `taken`."""
    name = base
    while name in taken:
        name += "'"
    taken.add(name)
    return name


def fresh_names(bases: Iterable[str], taken: set[str]) -> dict[str, str]:
    """A fresh name for each base (in order), all distinct from `taken` and from each other."""
    return {base: fresh_name(base + "'", taken) for base in bases}

"""Python's slice semantics on an axis of known size, for slices in index lists and for slice()."""

from __future__ import annotations

from tncompiler.errors import TncError

__all__ = ["normalise"]


def normalise(size: int, start: int | None, stop: int | None, step: int | None) -> tuple[int, int, int]:
    """Python's slice semantics on an axis of `size` entries, as explicit non-negative start, stop, step."""
    if step is not None and step < 1:
        raise TncError("a slice step must be at least 1")
    begin, end, stride = slice(start, stop, step).indices(size)
    if len(range(begin, end, stride)) == 0:
        raise TncError(f"the slice {_text(start, stop, step)} of an axis of size {size} is empty")
    return begin, end, stride


def _text(start: int | None, stop: int | None, step: int | None) -> str:
    parts = ["" if v is None else str(v) for v in (start, stop)]
    return ":".join(parts) + ("" if step is None else f":{step}")

"""Compiled modules of generated `.tnd` text, cached in memory and on disk.

A model has many layers with the same hyper-parameters, and the same layers come back in every run; compiling a
layer takes tenths of a second, reading its module back a millisecond. The disk cache is keyed by the text, the tnc
version and a hash of the compiler's own files, so a changed compiler never loads code an older one wrote. It lives
in `$TNC_CACHE_DIR`, else `$XDG_CACHE_HOME/tncompiler` or `~/.cache/tncompiler`; `TNC_CACHE_DIR=off` turns it off.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
import types
from pathlib import Path

import tncompiler

__all__ = ["cache_dir", "clear_memory", "compiler_fingerprint", "load_compiled"]

_ENVIRONMENT = "TNC_CACHE_DIR"
_memory: dict[str, types.ModuleType] = {}
_lock = threading.Lock()


def cache_dir() -> Path | None:
    """Where compiled modules are kept, or None when the disk cache is off."""
    chosen = os.environ.get(_ENVIRONMENT)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tncompiler"


@functools.cache
def compiler_fingerprint() -> str:
    """A hash of the compiler's source files and grammar (this package's files excluded): changes with the code."""
    root = Path(tncompiler.__file__).parent
    model = Path(__file__).parent
    digest = hashlib.sha256(tncompiler.__version__.encode())
    files = sorted(path for path in root.rglob("*") if path.suffix in (".py", ".lark") and model not in path.parents)
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _key(source: str) -> str:
    return hashlib.sha256(f"{compiler_fingerprint()}\0{source}".encode()).hexdigest()


def clear_memory() -> None:
    """Forget the modules loaded in this process (the disk cache stays)."""
    with _lock:
        _memory.clear()


def load_compiled(source: str, name: str) -> types.ModuleType:
    """The module compiled from `source`: from memory, else from the disk cache, else compiled (and stored)."""
    key = _key(source)
    with _lock:
        module = _memory.get(key)
        if module is None:
            module = _memory[key] = _load(source, name, key)
    return module


def _load(source: str, name: str, key: str) -> types.ModuleType:
    folder = cache_dir()
    path = folder / f"{name}-{key[:32]}.py" if folder is not None else None
    if path is not None and path.is_file():
        try:
            return _module(path.read_text(encoding="utf-8"), name, str(path))
        except (OSError, SyntaxError, UnicodeDecodeError):
            pass  # unreadable or damaged: compile again and replace it
    code = tncompiler.compile_source(source, f"{name}.tnd")
    if path is not None:
        _store(path, code)
    return _module(code, name, str(path) if path is not None else f"<tnc:{name}>")


def _store(path: Path, code: str) -> None:
    """Write atomically (a temporary file, then a rename), so concurrent processes never read half a module; a
    folder that cannot be written only costs the cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent, suffix=".tmp", delete=False) as out:
            out.write(code)
        os.replace(out.name, path)
    except OSError:
        pass


def _module(code: str, name: str, filename: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__file__ = filename
    exec(compile(code, filename, "exec"), module.__dict__)  # the compiler's own output
    return module

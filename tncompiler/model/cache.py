"""Compiled modules of generated `.tnd` text, cached in memory and on disk.

A model has many layers with the same hyper-parameters, and the same layers come back in every run; compiling a
layer takes tenths of a second, reading its module back a millisecond. The disk cache is keyed by the text, the tnc
version and a hash of the compiler's own files, so a changed compiler never loads code an older one wrote. It lives
in `$TNC_CACHE_DIR`, else `$XDG_CACHE_HOME/tncompiler` or `~/.cache/tncompiler`; `TNC_CACHE_DIR=off` turns it off.

The folder may be shared (by processes, or by a user who points the variable somewhere others can write), and what
is in it is executed, so nothing in it is trusted:

- a file's name is `NAME-HASH.py`, NAME the module name with anything but [A-Za-z0-9_] replaced and cut to 40
  characters, HASH from the text and the compiler: a hostile layer name cannot reach outside the folder;
- an entry's first line holds the compiler's fingerprint, its full key and the sha256 of the code after it; an entry
  whose line does not match, that is not a regular file of this user writable by no one else, or that is a symbolic
  link (never followed), is deleted and compiled again, never executed;
- entries are written atomically (a temporary file in the folder, then a rename), folders tnc makes are 0700;
- the entries together stay under `$TNC_CACHE_MAX_BYTES` (default 256 MiB): the least recently used go first.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import os
import re
import stat
import tempfile
import threading
import time
import types
from pathlib import Path

import tncompiler
from tncompiler.generated import NAME_LENGTH, identifier, make_module, module_name
from tncompiler.guard import parse_size

__all__ = ["cache_dir", "clear_cache", "clear_memory", "compiler_fingerprint", "load_compiled", "max_bytes"]

_ENVIRONMENT = "TNC_CACHE_DIR"
_SIZE_ENVIRONMENT = "TNC_CACHE_MAX_BYTES"
_DEFAULT_MAX_BYTES = 256 * 2**20
_ENTRY = re.compile(rf"[A-Za-z0-9_]{{1,{NAME_LENGTH}}}-[0-9a-f]{{32}}\.py")
_TEMPORARY = re.compile(r"\.tnc-[A-Za-z0-9_]+\.tmp")
_STALE_SECONDS = 3600  # a temporary file this old was left by a process that died while writing it
_FORMAT = "tnc-cache 1"
_memory: dict[str, types.ModuleType] = {}
_lock = threading.Lock()


def cache_dir() -> Path | None:
    """Where compiled modules are kept, or None when the disk cache is off."""
    chosen = os.environ.get(_ENVIRONMENT)
    if chosen is not None:
        return None if chosen.strip().lower() in ("", "off", "0", "none") else Path(chosen)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tncompiler"


def max_bytes() -> int:
    """The bound on the entries' total size: `$TNC_CACHE_MAX_BYTES` (e.g. 1GiB, 500MB, 1e9), else 256 MiB."""
    text = os.environ.get(_SIZE_ENVIRONMENT)
    if text is None or not text.strip():
        return _DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except ValueError as error:
        raise ValueError(f"tncompiler: {_SIZE_ENVIRONMENT}={text!r} is not a size: {error}") from None


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


def _header(key: str, code: str) -> str:
    """An entry's first line: what it was compiled by, from what, and a digest of the code that follows it."""
    digest = hashlib.sha256(code.encode()).hexdigest()
    return f"# {_FORMAT} fingerprint={compiler_fingerprint()} key={key} sha256={digest}\n"


def clear_memory() -> None:
    """Forget the modules loaded in this process (the disk cache stays)."""
    with _lock:
        _memory.clear()


def clear_cache() -> int:
    """Delete every entry of the disk cache (and temporary files left by writes); the number of entries deleted.
    Other files in the folder are left alone, and so are the modules already loaded in this process."""
    folder = _folder(create=False)
    if folder is None:
        return 0
    removed = 0
    with _lock, os.scandir(folder) as found:
        for item in found:
            if _ENTRY.fullmatch(item.name):
                removed += _unlink(Path(item.path))
            elif _TEMPORARY.fullmatch(item.name):
                _unlink(Path(item.path))
    return removed


def load_compiled(source: str, name: str) -> types.ModuleType:
    """The module compiled from `source`: from memory, else from the disk cache, else compiled (and stored)."""
    key = _key(source)
    with _lock:
        module = _memory.get(key)
        if module is None:
            module = _memory[key] = _load(source, identifier(name), key)
    return module


def _load(source: str, name: str, key: str) -> types.ModuleType:
    folder = _folder(create=True)
    path = _entry_path(folder, name, key) if folder is not None else None
    bound = max_bytes() if path is not None else 0  # a bad setting is refused before any work
    if path is not None:
        text = _read_entry(path, key)
        if text is not None:
            try:
                return _module(text, name, str(path), source, key)
            except (SyntaxError, ValueError):
                _unlink(path)  # verified, yet not Python: a compiler's bug, which compiling again will show
    code = tncompiler.compile_source(source, f"{name}.tnd")
    text = _header(key, code) + code  # executed with its header too, so tracebacks' line numbers are the file's
    if path is not None:
        _store(path, text, bound)
    return _module(text, name, str(path) if path is not None else f"<tnc:{name}>", source, key)


def _folder(create: bool) -> Path | None:
    """The cache folder, its symbolic links resolved (the user chose it), made with mode 0700 if missing and
    `create`; None when the cache is off, or the folder is missing or cannot be made (that only costs the cache)."""
    chosen = cache_dir()
    if chosen is None:
        return None
    try:
        if create:
            _make_folders(chosen.absolute())
        folder = chosen.resolve(strict=True)
    except OSError:
        return None
    return folder if folder.is_dir() else None


def _make_folders(folder: Path) -> None:
    """Each missing folder on the way, with mode 0700 (Path.mkdir gives the parents it makes the umask's mode)."""
    missing = [folder, *folder.parents]
    missing = [path for path in missing if not path.exists()]
    for path in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it first
            path.mkdir(mode=0o700)


def _entry_path(folder: Path, name: str, key: str) -> Path | None:
    """The entry's path, or None (no disk cache for it) unless it is a plain name whose folder resolves to the
    cache folder itself (the entry, should it be a symbolic link, is refused when read)."""
    filename = f"{name}-{key[:32]}.py"
    path = folder / filename
    if not _ENTRY.fullmatch(filename) or Path(os.path.realpath(path.parent)) != folder:
        return None
    return path


def _read_entry(path: Path, key: str) -> str | None:
    """The entry's code where it is one this compiler wrote for this key, marked as just used; else None, with the
    entry deleted if there was one (a symbolic link is removed, never followed)."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags)  # not following a link; a FIFO there cannot block the open
    except OSError as error:
        if error.errno == errno.ELOOP:  # a symbolic link: removed, and the entry written afresh
            _unlink(path)
        return None  # missing or unreadable: the new entry replaces it
    with os.fdopen(descriptor, "rb") as file:
        status = os.fstat(descriptor)
        text = _verified(file.read(), key) if _trusted(status) else None
        if text is not None:
            _touch(descriptor, status)
    if text is None:
        _unlink(path)
    return text


def _trusted(status: os.stat_result) -> bool:
    """A regular file of this user that no one else may write: nobody else can have put it there or changed it."""
    owner = not hasattr(os, "getuid") or status.st_uid == os.getuid()
    return stat.S_ISREG(status.st_mode) and owner and not status.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def _verified(data: bytes, key: str) -> str | None:
    """The file's text if its first line is the header of its code, this key and this compiler; else None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    header, newline, code = text.partition("\n")
    return text if newline and header + newline == _header(key, code) else None


def _touch(descriptor: int, status: os.stat_result) -> None:
    """Mark the entry as just used, for the eviction: its access time now, its modification time kept."""
    if os.utime in os.supports_fd:
        with contextlib.suppress(OSError):
            os.utime(descriptor, ns=(time.time_ns(), status.st_mtime_ns))


def _store(path: Path, text: str, bound: int) -> None:
    """Write atomically (a temporary file in the folder, then a rename), so concurrent processes never read half a
    module, and remove the temporary file on any failure; a folder that cannot be written only costs the cache."""
    try:
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tnc-", suffix=".tmp")
    except OSError:
        return
    replaced = False
    try:
        with os.fdopen(descriptor, "wb") as out:
            out.write(text.encode("utf-8"))
        os.replace(temporary, path)  # a symbolic link there is replaced, not followed
        replaced = True
    except OSError:
        pass
    finally:  # an exception of any kind (a full disk, an interrupt) leaves no temporary file behind
        if not replaced:
            _unlink(Path(temporary))
    if replaced:
        _evict(path.parent, bound)


def _evict(folder: Path, bound: int) -> None:
    """Delete the least recently used entries until they total at most `bound` bytes, and stale temporary files."""
    entries: list[tuple[int, int, Path]] = []
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(folder) as found:
        for item in found:
            with contextlib.suppress(OSError):
                status = item.stat(follow_symlinks=False)
                if _ENTRY.fullmatch(item.name) and stat.S_ISREG(status.st_mode):
                    entries.append((status.st_atime_ns, status.st_size, Path(item.path)))
                elif _TEMPORARY.fullmatch(item.name) and now - status.st_mtime > _STALE_SECONDS:
                    _unlink(Path(item.path))
    total = sum(size for _, size, _ in entries)
    for _, size, path in sorted(entries, key=lambda entry: entry[0]):
        if total <= bound:
            break
        _unlink(path)
        total -= size


def _unlink(path: Path) -> bool:
    """Delete the file (a symbolic link itself, not what it points to); whether it was there to delete."""
    try:
        os.unlink(path)
    except OSError:
        return False
    return True


def _module(code: str, name: str, filename: str, source: str, key: str) -> types.ModuleType:
    """The entry's code as module `tnc_<name>_<hash>` in `sys.modules`; it pickles as `load_compiled(source, name)`."""
    return make_module(code, module_name(name, key), filename, (load_compiled, (source, name)))

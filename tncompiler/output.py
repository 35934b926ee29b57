"""The one writer of tnc's outputs: every file or none, each replaced atomically, and only regular files.

`tnc compile` hands it the module and every DOT file at once, `tnc dot -o` its one DOT text or picture; all of it
is made in memory first, so a failing compile never reaches this module and a failing write leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from tncompiler.errors import TncError, escape_name
from tncompiler.units import format_bytes

__all__ = ["file_kind", "output_path", "write_files"]

_OWN_PATH = "each output needs a path of its own"


@dataclass(frozen=True)
class _Target:
    """One output, checked: where it goes and what it replaces."""

    given: Path  # as the user wrote it: every message names this, never a temporary file
    path: Path  # where the file is renamed to: `given`, or the file a symbolic link `given` points to
    data: bytes
    mode: int | None  # the mode of the regular file it replaces, kept; None for a new file (the umask decides)
    key: tuple[int, int] | str  # (device, inode) of the file it replaces, else its real path: finds duplicates


def write_files(files: Iterable[tuple[Path, str | bytes]], source: Path | None = None) -> None:
    """Write every (path, text or bytes) pair or none; a refusal or failure is a `TncError` naming the path as given.

    Text is written as UTF-8. Pairs rather than a dict, so that a path given twice (`-o dots/y.built.dot --dot dots`)
    is refused instead of one text silently replacing the other.

    Guaranteed:
    - Every target is checked before anything is written (no folder made, no temporary file): an existing target
      must be a regular file (not a folder, device, FIFO or socket) and not the input `source` (compared by device
      and inode, so a hard link or a symbolic link to it is refused too); the nearest existing folder above a new
      target must be a folder; no two targets may be the same file, nor one the folder of another.
    - Each file is written in full to a temporary file beside it and renamed over the target only after every
      temporary file was written; should any write fail (no space, a read-only folder) or be interrupted (Ctrl-C,
      or SIGTERM where the caller turns it into an exception, as `tnc` does), the temporary files and the folders
      made for them are removed and every existing file is left as it was.
    - A process killed outright (SIGKILL, a power cut) cannot clean up: its temporary files, named
      `.NAME.tnc-PID-RANDOM.tmp`, are removed by the next write into the same folder once process PID is gone on
      this machine, or after an hour whatever the PID (it may have been reused).
    - A replaced file keeps its mode; a new file gets 0o666 less the umask (the kernel applies it, with any default
      ACL). A symbolic link is followed: the file it points to is replaced and the link stays.

    Not guaranteed:
    - The set is not replaced atomically, only each file: the renames run one after another, so a rename failing
      part-way (a target turned into a folder since the check, a crash) leaves the earlier files new and the rest
      old; the error names the files already replaced. Checks and renames are not atomic against other processes
      changing the same paths in between.
    - A replaced file gets a new inode: its other hard links keep the old text, and its owner becomes whoever runs
      tnc (extended attributes are not copied).
    - The sweep judges a PID on this machine only: in a folder shared with another machine (NFS) or another PID
      namespace (a container), a temporary file of a write still running there may be removed, failing that write.
    """
    targets = _check_all(files, source)
    _sweep({target.path.parent for target in targets})
    created: list[Path] = []
    temporaries: list[Path] = []  # each named here before it is created, so an interrupt at any point finds it
    try:
        for target in targets:
            _make_folders(target, created)
            _write_temporary(target, temporaries)
        _rename_all(list(zip(temporaries, targets, strict=True)))
    except BaseException:
        _discard(temporaries, created)  # a renamed one is gone already; a folder holding a renamed file stays
        raise


def output_path(given: str, name: str) -> Path:
    """The file `-o GIVEN` names: GIVEN itself, or GIVEN/NAME when GIVEN is a folder (it exists, or ends in `/`).

    A path ending in a separator must be an existing folder: `-o newdir/` for a folder not there is refused rather
    than written as a file `newdir` (or a folder made, which a typo would do silently).
    """
    as_folder = given.endswith(os.sep) or bool(os.altsep and given.endswith(os.altsep))
    if os.path.isdir(given):
        return Path(given) / name
    if not as_folder:
        return Path(given)
    folder = given.rstrip(os.sep + (os.altsep or "")) or given
    try:
        info = os.stat(folder)
    except (FileNotFoundError, NotADirectoryError):
        raise TncError(
            f"cannot write {_shown(given)}: the folder {_shown(folder)} does not exist",
            hint=f"make it first (mkdir {_shown(folder)}), or give the module's path: -o {_shown(Path(folder) / name)}",
        ) from None
    except OSError as error:
        raise _cannot_check(Path(given), error) from None
    raise TncError(
        f"cannot write {_shown(given)}: {_shown(folder)} is {file_kind(info.st_mode)}, not a folder",
        hint=f"give a folder, or the module's path without the trailing {given[-1]}",
    )


# -- checks: all of them before the first byte is written ---------------------------------------------------------
def _check_all(files: Iterable[tuple[Path, str | bytes]], source: Path | None) -> list[_Target]:
    source_key = _identity(source) if source is not None else None
    targets = []
    for given, data in files:
        target = _inspect(Path(given), data.encode("utf-8") if isinstance(data, str) else data)
        if source is not None and target.key == source_key:
            raise _refuse_source(target.given, source)
        targets.append(target)
    _check_distinct(targets)
    return targets


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _inspect(given: Path, data: bytes) -> _Target:
    """What replacing `given` means; a refusal for anything but a regular file or a new file in a folder.

    The kind comes from stat() of the path as given, so the kernel follows every link, `/dev/stdout`'s too (a pipe or
    a terminal, which realpath() cannot see); the place to rename to is the file a symbolic link points to.
    """
    if _names_a_descriptor(given):
        raise TncError(
            f"cannot write {_shown(given)}: it names an open file descriptor (like /dev/stdout), not a file",
            hint="replacing the file behind it would lose what it holds (a shell may append to it); give a file's path",
        )
    path = Path(os.path.realpath(given)) if os.path.islink(given) else given
    try:
        info = os.stat(given)
    except (FileNotFoundError, NotADirectoryError):
        _check_folders(given, path.parent)
        return _Target(given, path, data, None, os.path.realpath(path))
    except OSError as error:
        raise _cannot_check(given, error) from None
    if not stat.S_ISREG(info.st_mode):
        raise TncError(
            f"cannot write {_shown(given)}: it is {file_kind(info.st_mode)}, not a regular file",
            hint="tnc writes a new file and renames it over the old one, which only a regular file allows; "
            "give the path of a file",
        )
    if path != given and _identity(path) != (info.st_dev, info.st_ino):
        raise TncError(f"cannot write {_shown(given)}: the file this link points to has no name to replace")
    return _Target(given, path, data, stat.S_IMODE(info.st_mode), (info.st_dev, info.st_ino))


def _names_a_descriptor(given: Path) -> bool:
    """Whether `given` reaches /proc/PID/fd/N, as /dev/stdout and /dev/fd/N do on Linux.

    Such a link points at whatever the descriptor holds: a pipe or a terminal (refused anyway) or a file that a shell
    opened, maybe to append (`>> log`); replacing that file would lose its text, so a descriptor is refused as such.
    """
    current = given
    for _ in range(40):  # the kernel's own limit on a chain of links
        if re.fullmatch(r"/proc/[^/]+/fd", os.path.realpath(current.parent)):
            return True
        if not os.path.islink(current):
            return False
        current = current.parent / os.readlink(current)
    return False


def _check_folders(given: Path, folder: Path) -> None:
    """The nearest existing path above a new file must be a folder (the missing ones below it will be made)."""
    for above in (folder, *folder.parents):
        try:
            info = os.stat(above)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as error:
            raise _cannot_check(given, error) from None
        if not stat.S_ISDIR(info.st_mode):
            raise TncError(
                f"cannot write {_shown(given)}: {_shown(above)} is {file_kind(info.st_mode)}, not a folder",
                hint=f"give a path in a folder, or move {_shown(above)} out of the way",
            )
        return


def _check_distinct(targets: list[_Target]) -> None:
    seen: dict[tuple[int, int] | str, Path] = {}
    for target in targets:
        if target.key in seen:
            first = seen[target.key]
            if str(first) == str(target.given):
                raise TncError(f"cannot write {_shown(first)}: two outputs have this path", hint=_OWN_PATH)
            both = f"{_shown(first)} and {_shown(target.given)}"
            raise TncError(f"cannot write {both}: they are the same file", hint=_OWN_PATH)
        seen[target.key] = target.given
    files = {os.path.realpath(target.path): target.given for target in targets}
    for target in targets:
        for above in Path(os.path.realpath(target.path)).parents:
            if str(above) in files:
                folder = _shown(files[str(above)])
                raise TncError(
                    f"cannot write {_shown(target.given)}: its folder {folder} is also an output file",
                    hint=_OWN_PATH,
                )


def _refuse_source(given: Path, source: Path) -> TncError:
    same_name = os.path.abspath(given) == os.path.abspath(source)
    return TncError(
        f"cannot write {_shown(given)}: it is the input file {_shown(source)}"
        + ("" if same_name else " (under another name)"),
        hint="writing there would destroy the input; choose another output path",
    )


def file_kind(mode: int) -> str:
    """`a folder`, `a FIFO (named pipe)` ...: what a stat() mode says a path is, for a message."""
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISREG, "a file"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


# -- writing: folders, then every temporary file, then the renames --------------------------------------------------
def _make_folders(target: _Target, created: list[Path]) -> None:
    missing = []
    folder = target.path.parent
    while not folder.is_dir() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except OSError as error:
            raise _cannot_write(target.given, error, folder.parent) from None
        created.append(folder)


def _write_temporary(target: _Target, temporaries: list[Path]) -> None:
    """The whole text in a new file beside the target (so the rename stays on one file system), synced to disk."""
    temporary, handle = _open_temporary(target, temporaries)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(target.data)
            stream.flush()
            os.fsync(stream.fileno())
        if target.mode is not None:
            os.chmod(temporary, target.mode)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _cannot_write(target.given, error, target.path.parent, len(target.data)) from None
        raise


def _open_temporary(target: _Target, temporaries: list[Path]) -> tuple[Path, int]:
    """A new file `.NAME.tnc-PID-RANDOM.tmp` opened with mode 0o666, so the umask (and a default ACL) sets its mode.

    Its name is listed before it is made: an interrupt between the two leaves a name to remove, never a file unlisted.
    The PID lets a later write tell the file of a killed process from one still being written (`_sweep`).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        name = f".{_cut(target.path.name)}.tnc-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        temporaries.append(target.path.with_name(name))
        try:
            return temporaries[-1], os.open(temporaries[-1], flags, 0o666)
        except FileExistsError:
            temporaries.pop()  # not ours (a name drawn twice): never removed
            continue
        except OSError as error:
            temporaries.pop()
            raise _cannot_write(target.given, error, target.path.parent) from None


def _cut(name: str, limit: int = 200) -> str:
    """`name` cut to `limit` bytes as the file system stores it, so the temporary name fits where the target's does."""
    while len(os.fsencode(name)) > limit:
        name = name[:-1]
    return name


# The temporary files of `_open_temporary`, and how old one may get before its PID is no longer trusted.
_TEMPORARY = re.compile(r"\..+\.tnc-([0-9]{1,12})-[0-9a-f]{8}\.tmp", re.DOTALL)
_STALE_AFTER_S = 3600.0


def _sweep(folders: Iterable[Path]) -> None:
    """Remove the temporary files that a killed tnc left in these folders (SIGKILL allows no cleanup).

    Only names of tnc's own pattern, only regular files, and only those whose process is gone or that are older than
    `_STALE_AFTER_S`; a file that cannot be looked at or removed is left (the write goes on: it needs none of this).
    """
    for folder in folders:
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            found = _TEMPORARY.fullmatch(entry.name)
            if found is not None and _stale(entry, int(found[1])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def _stale(entry: os.DirEntry[str], pid: int) -> bool:
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError:
        return False
    old = time.time() - info.st_mtime > _STALE_AFTER_S
    return stat.S_ISREG(info.st_mode) and (old or not _alive(pid))


def _alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (signal 0 checks without sending anything)."""
    if os.name == "nt" or pid <= 0:  # Windows' os.kill(pid, 0) would send Ctrl-C; 0 would mean our process group
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except OSError:  # EPERM: it runs, as another user
        return True
    return True


def _rename_all(written: list[tuple[Path, _Target]]) -> None:
    """Each temporary file over its target; the caller removes the temporary files left when one fails."""
    replaced: list[str] = []
    for temporary, target in written:
        try:
            os.replace(temporary, target.path)
        except OSError as error:
            failure = _cannot_write(target.given, error, target.path.parent)
            if replaced:
                failure = TncError(f"{failure.message}; already replaced: {', '.join(replaced)}", hint=failure.hint)
            raise failure from None
        replaced.append(_shown(target.given))


def _discard(temporaries: list[Path], created: list[Path]) -> None:
    """Remove what a failed write made: its temporary files, then its new folders, deepest first."""
    for temporary in temporaries:
        temporary.unlink(missing_ok=True)
    for folder in reversed(created):
        with contextlib.suppress(OSError):  # not empty: someone else wrote there meanwhile; leave it
            folder.rmdir()


# -- messages -------------------------------------------------------------------------------------------------------
def _cannot_write(given: Path, error: OSError, folder: Path, size: int | None = None) -> TncError:
    """`cannot write out.py: the folder /ro is read-only`: the path as given and the reason, never a temporary name."""
    where = "the current folder" if str(folder) == "." else f"the folder {_shown(folder)}"
    reasons = {
        errno.EACCES: (f"{where} is read-only", "choose a folder you may write in, or change its permissions"),
        errno.EPERM: (f"{where} is read-only", "choose a folder you may write in, or change its permissions"),
        errno.EROFS: (f"{where} is on a read-only file system", "choose a folder on a writable disk"),
        errno.ENOSPC: (f"no space left on the disk of {where}", "free some space, or write elsewhere"),
        getattr(errno, "EDQUOT", -1): (f"{where} is over your disk quota", "free some space, or write elsewhere"),
        errno.ENAMETOOLONG: ("the name is too long", "choose a shorter name"),
    }
    reason, hint = reasons.get(error.errno or 0, ((error.strerror or str(error)).lower(), None))
    if size is not None and error.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
        reason += f" (it needs {format_bytes(size)})"
    return TncError(f"cannot write {_shown(given)}: {reason}", hint=hint)


def _cannot_check(given: Path, error: OSError) -> TncError:
    """A path that cannot even be looked at (a folder on the way not searchable, a loop of links)."""
    return TncError(f"cannot write {_shown(given)}: {(error.strerror or str(error)).lower()}")


def _shown(path: str | Path) -> str:
    """A path in a message, with what a terminal would act on escaped (`\\x1b`), newlines included."""
    return escape_name(path)

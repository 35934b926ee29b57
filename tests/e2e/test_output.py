"""The one output writer (tncompiler/output.py): every file or none, only regular files replaced, modes kept or set
by the umask; and the byte sizes of its messages (tncompiler/units.py). The sizes the command line reads
(parse_size) are the memory guard's: tests/schedule/test_guard.py."""

from __future__ import annotations

import errno
import os
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tncompiler import TncError, output
from tncompiler.output import write_files
from tncompiler.units import format_bytes


@pytest.fixture
def umask() -> Iterator[None]:
    """Tests set the umask they need; it is restored afterwards."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def listing(folder: Path) -> list[str]:
    """Every path under `folder`, relative, so that a stray temporary file or folder shows up."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def refusal(files: list[tuple[Path, str | bytes]], source: Path | None = None) -> str:
    with pytest.raises(TncError) as caught:
        write_files(files, source)
    return str(caught.value)


# -- writing --------------------------------------------------------------------------------------------------------
def test_writes_text_and_bytes_and_makes_folders(tmp_path: Path) -> None:
    write_files([(tmp_path / "m.py", "x = 1\n"), (tmp_path / "a" / "b" / "p.png", b"\x89PNG")])
    assert (tmp_path / "m.py").read_text() == "x = 1\n"
    assert (tmp_path / "a" / "b" / "p.png").read_bytes() == b"\x89PNG"
    assert listing(tmp_path) == ["a", "a/b", "a/b/p.png", "m.py"]


def test_text_is_utf8_with_unix_line_ends(tmp_path: Path) -> None:
    write_files([(tmp_path / "m.py", "# Größe\n")])
    assert (tmp_path / "m.py").read_bytes() == "# Größe\n".encode()


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_a_new_file_and_folder_get_the_umasks_mode(tmp_path: Path, umask: None, mask: int) -> None:
    os.umask(mask)
    write_files([(tmp_path / "new" / "m.py", "x\n")])
    assert stat.S_IMODE((tmp_path / "new" / "m.py").stat().st_mode) == 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o777 & ~mask


@pytest.mark.parametrize("mode", [0o640, 0o755, 0o600, 0o444])
def test_a_replaced_file_keeps_its_mode(tmp_path: Path, umask: None, mode: int) -> None:
    path = tmp_path / "m.py"
    path.write_text("old\n")
    path.chmod(mode)
    os.umask(0o077)
    write_files([(path, "new\n")])
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_a_file_is_replaced_not_written_through(tmp_path: Path) -> None:
    """A hard link to the output keeps the old text (documented): the new text is a new file renamed over the name."""
    path, other = tmp_path / "m.py", tmp_path / "other.py"
    path.write_text("old\n")
    os.link(path, other)
    write_files([(path, "new\n")])
    assert path.read_text() == "new\n" and other.read_text() == "old\n"


def test_a_symbolic_link_is_followed_and_kept(tmp_path: Path) -> None:
    """`-o link.py` updates the file the link points to, with that file's mode; the link stays a link."""
    real, link = tmp_path / "real" / "m.py", tmp_path / "link.py"
    real.parent.mkdir()
    real.write_text("old\n")
    real.chmod(0o640)
    link.symlink_to(real)
    write_files([(link, "new\n")])
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new\n" and stat.S_IMODE(real.stat().st_mode) == 0o640
    assert listing(tmp_path) == ["link.py", "real", "real/m.py"]


def test_a_dangling_symbolic_link_creates_its_target(tmp_path: Path) -> None:
    link = tmp_path / "link.py"
    link.symlink_to(tmp_path / "target.py")
    write_files([(link, "new\n")])
    assert link.is_symlink() and (tmp_path / "target.py").read_text() == "new\n"


# -- refusals: each before anything is written ----------------------------------------------------------------------
def test_the_input_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = tmp_path / "x.tnd"
    source.write_text("index n\n")
    monkeypatch.chdir(tmp_path)
    for given in (source, Path("x.tnd")):
        text = refusal([(tmp_path / "ok.py", "x\n"), (given, "x\n")], source)
        assert text.endswith(f"cannot write {given}: it is the input file {source}\n"
                             "hint: writing there would destroy the input; choose another output path"), text
    assert source.read_text() == "index n\n" and listing(tmp_path) == ["x.tnd"]


def test_a_hard_link_or_a_symbolic_link_to_the_input_is_refused(tmp_path: Path) -> None:
    source, hard, soft = tmp_path / "x.tnd", tmp_path / "hard.py", tmp_path / "soft.py"
    source.write_text("index n\n")
    os.link(source, hard)
    soft.symlink_to(source)
    for given in (hard, soft):
        text = refusal([(given, "x\n")], source)
        assert f"cannot write {given}: it is the input file {source} (under another name)" in text
    assert source.read_text() == "index n\n" and soft.is_symlink()


def test_a_fifo_is_refused_and_stays_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    text = refusal([(tmp_path / "m.py", "x\n"), (fifo, "x\n")])
    assert f"cannot write {fifo}: it is a FIFO (named pipe), not a regular file" in text
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and listing(tmp_path) == ["fifo"]


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_a_device_is_refused_and_stays_a_device(tmp_path: Path) -> None:
    text = refusal([(tmp_path / "m.py", "x\n"), (Path("/dev/null"), "x\n")])
    assert "cannot write /dev/null: it is a character device, not a regular file" in text
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode) and listing(tmp_path) == []


def test_a_link_to_a_device_is_refused(tmp_path: Path) -> None:
    if not Path("/dev/null").exists():
        pytest.skip("no /dev/null")
    link = tmp_path / "null.py"
    link.symlink_to("/dev/null")
    assert "it is a character device" in refusal([(link, "x\n")])
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="no /proc")
def test_a_file_descriptor_is_refused_and_its_file_kept(tmp_path: Path) -> None:
    """`-o /dev/stdout >> log`: the link leads to log, but replacing log would lose its text (and the append)."""
    log = tmp_path / "log"
    log.write_text("old\n")
    descriptor = os.open(log, os.O_WRONLY | os.O_APPEND)
    try:
        for given in (Path(f"/dev/fd/{descriptor}"), Path(f"/proc/self/fd/{descriptor}"), Path("/dev/stdout")):
            if given.exists():
                assert f"cannot write {given}: it names an open file descriptor" in refusal([(given, "x\n")])
    finally:
        os.close(descriptor)
    assert log.read_text() == "old\n" and listing(tmp_path) == ["log"]


def test_a_socket_is_refused() -> None:
    with tempfile.TemporaryDirectory() as folder:  # short: a socket's path is limited to about 100 bytes
        path = Path(folder) / "s"
        with socket.socket(socket.AF_UNIX) as server:
            server.bind(str(path))
            assert "it is a socket, not a regular file" in refusal([(path, "x\n")])
            assert stat.S_ISSOCK(path.lstat().st_mode)


def test_a_folder_is_refused(tmp_path: Path) -> None:
    assert f"cannot write {tmp_path}: it is a folder, not a regular file" in refusal([(tmp_path, "x\n")])


def test_a_file_where_a_folder_should_be_is_refused(tmp_path: Path) -> None:
    """`--dot D` with D a file: nothing is written, not even the module that comes first."""
    dots = tmp_path / "D"
    dots.write_text("")
    text = refusal([(tmp_path / "m.py", "x\n"), (dots / "y.built.dot", "graph {}\n")])
    assert f"cannot write {dots}/y.built.dot: {dots} is a file, not a folder" in text
    assert listing(tmp_path) == ["D"]
    text = refusal([(dots / "deeper" / "y.dot", "graph {}\n")])
    assert f"{dots} is a file, not a folder" in text


def test_two_outputs_on_one_file_are_refused(tmp_path: Path) -> None:
    real, link = tmp_path / "a.py", tmp_path / "b.py"
    real.write_text("old\n")
    link.symlink_to(real)
    assert "two outputs have this path" in refusal([(tmp_path / "n.py", "1"), (tmp_path / "n.py", "2")])
    assert f"cannot write {real} and {link}: they are the same file" in refusal([(real, "1"), (link, "2")])
    new = tmp_path / "new.py"
    assert "they are the same file" in refusal([(new, "1"), (tmp_path / "x" / ".." / "new.py", "2")])
    assert f"its folder {new} is also an output file" in refusal([(new, "1"), (new / "y.dot", "2")])
    assert real.read_text() == "old\n" and listing(tmp_path) == ["a.py", "b.py"]


def test_a_loop_of_links_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    assert f"cannot write {loop}: " in refusal([(loop, "x\n")])


# -- failures while writing: temporary files and new folders removed, old files untouched ------------------------------
def failing(monkeypatch: pytest.MonkeyPatch, name: str, code: int, after: int = 0) -> None:
    """Make `os.<name>` fail with `code` from its call number `after` (counting from 0) on."""
    real = getattr(os, name)
    calls = iter(range(10**6))

    def fake(*args: object, **kwargs: object) -> object:
        if next(calls) >= after:
            raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    monkeypatch.setattr(output.os, name, fake)


def test_a_failing_write_leaves_everything_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = tmp_path / "m.py"
    old.write_text("old\n")
    failing(monkeypatch, "fsync", errno.ENOSPC, after=1)  # the first temporary file is written, the second is not
    text = refusal([(old, "new\n"), (tmp_path / "dots" / "deep" / "y.dot", "graph {}\n")])
    deep = tmp_path / "dots" / "deep"
    assert f"cannot write {deep}/y.dot: no space left on the disk of the folder {deep}" in text
    assert "(it needs 9 B)" in text and ".tmp" not in text
    assert old.read_text() == "old\n" and listing(tmp_path) == ["m.py"]


def test_a_read_only_folder_is_named_not_the_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    failing(monkeypatch, "open", errno.EACCES)
    text = refusal([(tmp_path / "m.py", "x\n")])
    assert text.startswith(f"<string>: error: cannot write {tmp_path}/m.py: the folder {tmp_path} is read-only"), text
    assert ".tmp" not in text and "hint: " in text
    monkeypatch.chdir(tmp_path)
    assert "cannot write m.py: the current folder is read-only" in refusal([(Path("m.py"), "x\n")])
    failing(monkeypatch, "open", errno.EROFS)
    assert f"the folder {tmp_path} is on a read-only file system" in refusal([(tmp_path / "m.py", "x\n")])
    assert listing(tmp_path) == []


def test_a_really_read_only_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "m.py").write_text("old\n")
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("permissions are not enforced here (root?)")
        text = refusal([(folder / "m.py", "new\n")])
        assert f"cannot write {folder}/m.py: the folder {folder} is read-only" in text
        assert listing(folder) == ["m.py"] and (folder / "m.py").read_text() == "old\n"
    finally:
        folder.chmod(0o755)


def test_a_folder_that_cannot_be_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(self: Path) -> None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(Path, "mkdir", refused)
    text = refusal([(tmp_path / "new" / "m.py", "x\n")])
    assert f"cannot write {tmp_path}/new/m.py: the folder {tmp_path} is read-only" in text
    assert listing(tmp_path) == []


def test_a_failing_rename_names_what_was_already_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The documented limit: renames are one per file; the error says which files are new, and no temporary stays."""
    failing(monkeypatch, "replace", errno.EISDIR, after=1)
    text = refusal([(tmp_path / "a.py", "1"), (tmp_path / "b.py", "2"), (tmp_path / "c.py", "3")])
    assert f"cannot write {tmp_path}/b.py: is a directory; already replaced: {tmp_path}/a.py" in text
    assert listing(tmp_path) == ["a.py"]


def test_an_interrupt_while_writing_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(output.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_files([(tmp_path / "new" / "m.py", "x\n")])
    assert listing(tmp_path) == []


# -- sizes ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0 B"),
        (512, "512 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (3277, "3.2 KiB"),
        (2**20 - 1, "1.0 MiB"),
        (46_277_485_364, "43.1 GiB"),
        (2**60, "1.0 EiB"),
        (10**400, "8.6e+381 EiB"),
        (-5000, "-4.9 KiB"),
    ],
)
def test_format_bytes(count: int, text: str) -> None:
    assert format_bytes(count) == text

"""Command-line conventions: `tnc --version`, a reader that stops early (`tnc check FILE | head -1`) ends tnc quietly
with status 141 as it ends grep, `tnc cache clear` escapes the folder it names and reports its errors, and
`tnc dot -o DIR/` writes into DIR as `tnc compile -o DIR/` does.

The pipe tests start their processes together: each spends about a second importing tnc, and they overlap."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tncompiler
from tests.frontend.test_error_catalogue import DEFINED, ROOT
from tncompiler import TncError
from tncompiler.cli import main
from tncompiler.model import cache

READER_GONE = 141  # 128 + SIGPIPE: what a shell reports for grep or cat after `| head -1`, and what tnc returns
PIPE_SIZE = 4096  # the smallest pipe Linux allows: every output below is several times larger
LONG = "a" * 6000  # input names this long make each command print far more than the pipe holds


def start(folder: Path, *args: str) -> subprocess.Popen[bytes]:
    """`python -m tncompiler ARGS` started in `folder`, its stdout and stderr pipes of PIPE_SIZE bytes, with a disk
    cache of its own in `folder` (`tnc cache clear` must not empty the one the other tests share)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TNC_CACHE_DIR": str(folder / "cache")}
    # Unbuffered, Python's text layer ignores a short write (all a closed pipe takes of a large one) and loses the
    # rest without an error; tnc runs buffered, as Python does by default.
    env.pop("PYTHONUNBUFFERED", None)
    command = [sys.executable, "-m", "tncompiler", *args]
    pipe = subprocess.PIPE
    return subprocess.Popen(command, cwd=folder, env=env, stdout=pipe, stderr=pipe, bufsize=0, pipesize=PIPE_SIZE)


def finish(process: subprocess.Popen[bytes]) -> tuple[int, bytes, bytes]:
    """The status and what is left on the pipes still open, the process given 60 s."""
    out, err = process.communicate(timeout=60)
    return process.returncode, out or b"", err or b""


@pytest.fixture
def conv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conv.tnd, a file that compiles, in the current folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conv.tnd").write_text(DEFINED)
    return tmp_path / "conv.tnd"


# -- --version ---------------------------------------------------------------------------------------------------
def test_version_prints_the_installed_version(tmp_path: Path) -> None:
    code, out, err = finish(start(tmp_path, "--version"))
    assert (code, out.decode(), err) == (0, f"tnc {importlib.metadata.version('tncompiler')}\n", b"")


def test_version_falls_back_to_the_package_version_when_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run from a source tree on PYTHONPATH there is no distribution to ask: the package's own version is shown."""

    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code in (0, None)
    assert capsys.readouterr().out == f"tnc {tncompiler.__version__}\n"


# -- a reader that stops early -------------------------------------------------------------------------------------
def test_a_reader_that_stops_after_one_line_ends_tnc_quietly(tmp_path: Path) -> None:
    """`tnc COMMAND long.tnd | head -1`: the rest cannot fit in the pipe, so tnc is still writing when it closes."""
    (tmp_path / "long.tnd").write_text(DEFINED.replace("x[", f"x{LONG}[").replace("w[", f"w{LONG}["))
    commands = {name: start(tmp_path, name, "long.tnd") for name in ("check", "explain", "dot")}
    for name, process in commands.items():
        assert process.stdout is not None
        first = process.stdout.readline()
        process.stdout.close()
        code, _, err = finish(process)
        assert (code, err.decode()) == (READER_GONE, ""), f"tnc {name}: first line {len(first)} bytes"
        assert first.endswith(b"\n")


def test_a_closed_stderr_ends_a_command_quietly(conv: Path) -> None:
    """What tnc prints on stderr, its reader gone at once: the line saying a module was written, and an error report.
    Nothing reaches stdout, the status is 141, and the module was written in full: only the line saying so is lost."""
    runs = [("compile", "conv.tnd"), ("check", "missing.tnd")]
    processes = [(args, start(conv.parent, *args)) for args in runs]
    for _, process in processes:
        assert process.stderr is not None
        process.stderr.close()  # the only read end: the child's first write to stderr fails with EPIPE
    for args, process in processes:
        code, out, _ = finish(process)
        assert (code, out.decode()) == (READER_GONE, ""), f"tnc {' '.join(args)}"
    assert "def y(" in (conv.parent / "conv.py").read_text()


@pytest.mark.parametrize("args", [["cache", "clear"], ["--version"]], ids=["cache-clear", "version"])
def test_a_closed_stdout_ends_a_command_quietly_in_process(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The commands the pipe test above leaves out, run here (`tnc cache clear` alone imports torch, for seconds in a
    process of its own), writing to a real pipe whose reader is gone: quiet, status 141, the pipe then /dev/null."""
    monkeypatch.setenv("TNC_CACHE_DIR", str(tmp_path))
    read, write = os.pipe()
    os.close(read)
    with open(write, "w", encoding="utf-8") as closed:  # buffered, as Python's stdout on a pipe is
        monkeypatch.setattr(sys, "stdout", closed)
        assert main(args) == READER_GONE
        assert os.path.samestat(os.fstat(write), os.stat(os.devnull))  # nothing left to fail when Python exits
    assert capsys.readouterr().err == ""


# -- tnc cache clear -------------------------------------------------------------------------------------------------
def test_cache_clear_escapes_control_characters_in_the_folder_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "a\x1b[31m\nb"
    folder.mkdir()
    (folder / f"layer-{'0' * 32}.py").write_text("")  # an entry's name: it is removed
    (folder / "notes.txt").write_text("kept\n")  # anything else stays
    monkeypatch.setenv("TNC_CACHE_DIR", str(folder))
    assert main(["cache", "clear"]) == 0
    assert capsys.readouterr().out == f"removed 1 cache entry from {tmp_path}/a\\x1b[31m\\x0ab\n"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_an_error_of_a_command_without_an_input_file_is_reported_at_tnc(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tnc cache clear` reads no file, so a `TncError` is reported as `tnc: error:` (reading `args.file` failed with
    an AttributeError and a traceback). No real cache folder raises one today: the failure is injected."""

    def refused() -> int:
        raise TncError("cannot clear the cache: \x1b[2J it is locked", hint="try again")

    monkeypatch.setattr(cache, "clear_cache", refused)
    assert main(["cache", "clear"]) == 1
    captured = capsys.readouterr()
    assert (captured.out, captured.err) == (
        "",
        "tnc: error: cannot clear the cache: \\x1b[2J it is locked\nhint: try again\n",
    )


# -- tnc dot -o DIR/ ------------------------------------------------------------------------------------------------
def test_dot_output_ending_in_a_separator_writes_into_that_folder(
    conv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """All diagrams: DIR/FILE.STAGE.dot, the text `tnc dot` prints; one diagram: DIR/DIAGRAM.STAGE.dot, the very file
    `tnc compile --dot DIR` writes for it."""
    (conv.parent / "out").mkdir()
    assert main(["dot", "conv.tnd"]) == 0
    printed = capsys.readouterr().out
    assert main(["dot", "conv.tnd", "-o", "out/"]) == 0
    assert main(["dot", "conv.tnd", "y", "--stage", "lower", "-o", "out/"]) == 0
    assert main(["compile", "conv.tnd", "--dot", "dots"]) == 0
    assert sorted(p.name for p in (conv.parent / "out").iterdir()) == ["conv.built.dot", "y.lower.dot"]
    assert (conv.parent / "out" / "conv.built.dot").read_text() == printed
    assert (conv.parent / "out" / "y.lower.dot").read_text() == (conv.parent / "dots" / "y.lower.dot").read_text()


def test_dot_output_folder_that_does_not_exist_is_refused_not_written_as_a_file(
    conv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dot", "conv.tnd", "-o", "newdir/"]) == 1
    assert capsys.readouterr().err.startswith(
        "conv.tnd: error: cannot write newdir/: the folder newdir does not exist\n"
    )
    assert sorted(p.name for p in conv.parent.iterdir()) == ["conv.tnd"]  # no file `newdir`, no folder


def test_dot_output_folder_that_is_a_file_is_refused(conv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conv.parent / "out").write_text("kept\n")
    assert main(["dot", "conv.tnd", "-o", "out/"]) == 1
    assert "cannot write out/: out is a file, not a folder" in capsys.readouterr().err
    assert (conv.parent / "out").read_text() == "kept\n"

"""The command line's errors: for every mistake of the catalogue (tests/frontend/test_error_catalogue.py) and every
file that is not .tnd text, exit status 1, one report, no traceback and nothing written; an internal error reported
in one line; and the output files it refuses before writing anything (docs/errors.md, "Output files")."""

from __future__ import annotations

import errno
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.frontend.test_error_catalogue import CATALOGUE, DEFINED, IDS, ROOT, docs_entries
from tncompiler.api import MAX_SOURCE_BYTES
from tncompiler.cli import main

# -- the command line --------------------------------------------------------------------------------------------
SPECIAL_FILES = {"binary": b"index n\x00\n", "huge": b"", "latin1": "# Größe\n".encode("latin-1")}


def _write(directory: Path, name: str) -> Path:
    path = directory / f"{name}.tnd"
    if name == "huge":
        with path.open("wb") as stream:
            stream.truncate(MAX_SOURCE_BYTES + 1)
    elif name in SPECIAL_FILES:
        path.write_bytes(SPECIAL_FILES[name])
    else:
        path.write_text(next(e.source for e in CATALOGUE if e.name == name), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", IDS + list(SPECIAL_FILES))
def test_cli_exits_1_without_traceback_and_writes_nothing(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, name)
    for command in (["compile", str(path), "-o", str(tmp_path / "out.py"), "--dot", str(tmp_path / "dots")],
                    ["check", str(path)], ["dot", str(path), "-o", str(tmp_path / "out.dot")]):
        assert main(command) == 1, command
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err and captured.out == ""
        assert re.match(rf"{re.escape(str(path))}(:\d+:\d+)?: error: ", captured.err), captured.err
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.slow
def test_cli_in_a_process(tmp_path: Path) -> None:
    """The real `tnc` process: status 1, one error report on stderr, no traceback, for a few mistakes."""
    for name in ("deep-nesting", "binary", "missing-bracket", "empty-file"):
        path = _write(tmp_path, name)
        done = subprocess.run([sys.executable, "-m", "tncompiler", "compile", str(path)], capture_output=True,
                              text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
        assert done.returncode == 1 and "Traceback" not in done.stderr and " error: " in done.stderr, done.stderr
        assert not path.with_suffix(".py").exists()


def test_a_bug_in_tnc_is_reported_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Should the compiler itself fail, the user still gets one line and status 1 (TNC_DEBUG=1 re-raises)."""
    path = tmp_path / "ok.tnd"
    path.write_text("index n\ninput x[n]\ny[n] = x[n]\n")

    def broken(*args: object) -> str:
        raise KeyError("oops")

    monkeypatch.setattr("tncompiler.cli._compilation", broken)
    monkeypatch.delenv("TNC_DEBUG", raising=False)
    assert main(["compile", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tnc: internal error: KeyError: 'oops'\nthis is a bug in tnc") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.tnd"]
    monkeypatch.setenv("TNC_DEBUG", "1")
    with pytest.raises(KeyError):
        main(["compile", str(path)])


# -- output files (docs/errors.md, "Output files"): refused before anything is written -------------------------
def _fifo(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    os.mkfifo(folder / "pipe.py")


def _read_only(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder, simulated (root may write anywhere): creating a file in it is refused as the kernel would."""
    (folder / "ro").mkdir()
    real_open = os.open

    def refused(path: str | Path, *args: int) -> int:
        if str(path).startswith("ro/"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return real_open(path, *args)

    monkeypatch.setattr(os, "open", refused)


def _no_graphviz(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "bin").mkdir()
    monkeypatch.setenv("PATH", str(folder / "bin"))


def _broken_graphviz(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_graphviz(folder, monkeypatch)
    said = 'Format: "png" not recognized. Use one of: svg pdf'
    (folder / "bin" / "dot").write_text(f"#!/bin/sh\necho '{said}' >&2\nexit 1\n")
    (folder / "bin" / "dot").chmod(0o755)


@dataclass(frozen=True)
class OutputEntry:
    """One refused output: the command (run in a folder holding conv.tnd), what to set up first, the exact report."""

    name: str
    command: str
    report: str
    setup: Callable[[Path, pytest.MonkeyPatch], None] | None = None
    status: int = 1


_NOT_REGULAR = "hint: tnc writes a new file and renames it over the old one, which only a regular file allows; give " \
    "the path of a file"
OUTPUTS = [
    OutputEntry("output-is-the-input", "compile conv.tnd -o conv.tnd",
                "conv.tnd: error: cannot write conv.tnd: it is the input file conv.tnd\n"
                "hint: writing there would destroy the input; choose another output path"),
    OutputEntry("output-is-a-link-to-the-input", "compile conv.tnd -o conv.py",
                "conv.tnd: error: cannot write conv.py: it is the input file conv.tnd (under another name)\n"
                "hint: writing there would destroy the input; choose another output path",
                lambda folder, _: (folder / "conv.py").symlink_to("conv.tnd")),
    OutputEntry("output-is-not-a-regular-file", "compile conv.tnd -o pipe.py",
                "conv.tnd: error: cannot write pipe.py: it is a FIFO (named pipe), not a regular file\n" + _NOT_REGULAR,
                _fifo),
    OutputEntry("output-is-a-folder", "dot conv.tnd -o pictures",
                "conv.tnd: error: cannot write pictures: it is a folder, not a regular file\n" + _NOT_REGULAR,
                lambda folder, _: (folder / "pictures").mkdir()),
    OutputEntry("output-folder-is-a-file", "compile conv.tnd --dot dots",
                "conv.tnd: error: cannot write dots/y.built.dot: dots is a file, not a folder\n"
                "hint: give a path in a folder, or move dots out of the way",
                lambda folder, _: (folder / "dots").write_text("")),
    OutputEntry("outputs-collide", "compile conv.tnd -o dots/y.built.dot --dot dots",
                "conv.tnd: error: cannot write dots/y.built.dot: two outputs have this path\n"
                "hint: each output needs a path of its own"),
    OutputEntry("output-folder-read-only", "compile conv.tnd -o ro/conv.py",
                "conv.tnd: error: cannot write ro/conv.py: the folder ro is read-only\n"
                "hint: choose a folder you may write in, or change its permissions", _read_only),
    OutputEntry("graphviz-missing", "dot conv.tnd -o conv.svg",
                "conv.tnd: error: cannot draw conv.svg: Graphviz's `dot` program is not installed (not found on PATH)\n"
                "hint: install Graphviz (apt-get install graphviz, brew install graphviz or conda install graphviz), "
                "or write the DOT text with -o conv.dot", _no_graphviz),
    OutputEntry("graphviz-failed", "dot conv.tnd -o conv.png",
                "conv.tnd: error: cannot draw conv.png: Graphviz's `dot` failed: Format: \"png\" not recognized. "
                "Use one of: svg pdf\n"
                "hint: check that Graphviz works (`dot -V`) and draws this format, or write the DOT text with "
                "-o conv.dot",
                _broken_graphviz),
    OutputEntry("bad-max-memory", "compile conv.tnd --max-memory 4GB2",
                "tnc compile: error: argument --max-memory: not a size: '4GB2' (examples: 4GiB, 500MB, 1e9)", status=2),
]


@pytest.mark.parametrize("entry", OUTPUTS, ids=[entry.name for entry in OUTPUTS])
def test_output_refusals(
    entry: OutputEntry, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each report exactly as docs/errors.md shows it; the status; nothing written, nothing left behind."""
    (tmp_path / "conv.tnd").write_text(DEFINED)
    monkeypatch.chdir(tmp_path)
    if entry.setup is not None:
        entry.setup(tmp_path, monkeypatch)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    try:
        status = main(shlex.split(entry.command))
    except SystemExit as done:
        status = int(str(done.code))
    assert status == entry.status
    err = capsys.readouterr().err
    assert err.endswith(entry.report + "\n") and "Traceback" not in err, err
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before
    assert (tmp_path / "conv.tnd").read_text() == DEFINED


def test_the_docs_show_every_output_refusal() -> None:
    """Under its name, docs/errors.md shows the command and its exact report."""
    docs = docs_entries()
    for entry in OUTPUTS:
        assert entry.name in docs, f"docs/errors.md has no entry ### `{entry.name}`"
        assert f"$ tnc {entry.command}\n{entry.report}\n" in docs[entry.name], entry.name


def test_every_entry_of_the_docs_is_tested() -> None:
    """docs/errors.md documents no mistake that the catalogue or the output refusals above do not check."""
    tested = {entry.name for entry in CATALOGUE} | {entry.name for entry in OUTPUTS}
    assert sorted(set(docs_entries()) - tested) == []

"""Smaller holes of the command line and its output writer (issue 19): `-o DIR/`, inputs that are not regular files,
temporary files left by an interrupted or killed compile, and terminal control characters in what tnc prints."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.frontend.test_error_catalogue import DEFINED, ROOT, docs_entries
from tncompiler import TncError, api
from tncompiler.cli import main
from tncompiler.errors import Span, escape_name, escape_text, render_caret
from tncompiler.output import write_files

# What a terminal acts on: C0 but newline and tab, DEL, C1. None of it may reach stderr raw.
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
TEMPORARY = re.compile(r"\..+\.tnc-\d+-[0-9a-f]{8}\.tmp")


def listing(folder: Path) -> list[str]:
    """Every path under `folder`, relative, hidden files included, so a stray temporary file shows up."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def tnc(folder: Path, *args: str, hook: str = "") -> subprocess.CompletedProcess[str]:
    """The command line in a process of its own, started in `folder`, after the Python statements `hook`."""
    code = f"import sys\n{hook}\nfrom tncompiler.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=folder, env=env, timeout=60
    )


@pytest.fixture
def conv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """conv.tnd, a file that compiles, in the current folder."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "conv.tnd").write_text(DEFINED)
    return tmp_path / "conv.tnd"


# -- 1. `-o DIR/` ----------------------------------------------------------------------------------------------------
def test_output_ending_in_a_separator_writes_the_module_into_that_folder(
    conv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (conv.parent / "out").mkdir()
    assert main(["compile", "conv.tnd", "-o", "out/"]) == 0
    assert capsys.readouterr().err == "wrote out/conv.py\n"
    assert listing(conv.parent) == ["conv.tnd", "out", "out/conv.py"]
    assert "def y(" in (conv.parent / "out" / "conv.py").read_text()


def test_output_naming_an_existing_folder_writes_the_module_into_it(conv: Path) -> None:
    (conv.parent / "out").mkdir()
    assert main(["compile", "conv.tnd", "-o", "out", "--dot", "dots"]) == 0
    assert (conv.parent / "out" / "conv.py").is_file() and (conv.parent / "dots").is_dir()
    assert not (conv.parent / "conv.py").exists()


def test_output_folder_that_does_not_exist_is_refused_not_written_as_a_file(
    conv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = (
        "conv.tnd: error: cannot write newdir/: the folder newdir does not exist\n"
        "hint: make it first (mkdir newdir), or give the module's path: -o newdir/conv.py"
    )
    assert main(["compile", "conv.tnd", "-o", "newdir/", "--dot", "dots"]) == 1
    assert capsys.readouterr().err == report + "\n"
    assert listing(conv.parent) == ["conv.tnd"]  # no file `newdir`, no folder, no DOT files
    assert f"$ tnc compile conv.tnd -o newdir/\n{report}\n" in docs_entries()["output-is-a-folder"]


def test_output_folder_that_is_a_file_is_refused(conv: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (conv.parent / "out").write_text("kept\n")
    assert main(["compile", "conv.tnd", "-o", "out/"]) == 1
    assert "cannot write out/: out is a file, not a folder" in capsys.readouterr().err
    assert (conv.parent / "out").read_text() == "kept\n"


# -- 2. inputs that are not regular files ----------------------------------------------------------------------------
def test_a_fifo_as_input_is_refused_without_blocking(tmp_path: Path) -> None:
    """Nobody writes to the FIFO: reading it would wait for ever (the process has 60 s, the check none)."""
    os.mkfifo(tmp_path / "pipe.tnd")
    for command in ("compile", "check", "explain", "dot"):
        done = tnc(tmp_path, command, "pipe.tnd")
        assert done.returncode == 1, done.stderr
        assert done.stderr == (
            "pipe.tnd: error: cannot read pipe.tnd: it is a FIFO (named pipe), not a regular file\n"
            "hint: give the path of a .tnd file; to compile text from a pipe or a device, save it to a file first\n"
        )
    assert listing(tmp_path) == ["pipe.tnd"]


def test_a_fifo_swapped_in_after_the_check_is_neither_waited_on_nor_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: stat() said a regular file, then a FIFO took its place; the open must not block, fstat refuses."""
    pipe = tmp_path / "pipe.tnd"
    os.mkfifo(pipe)
    regular = os.stat_result((0o100644, *os.stat(pipe)[1:]))
    real = os.stat

    def stat_before_the_swap(path: str | Path, **kwargs: bool) -> os.stat_result:
        return regular if Path(path) == pipe else real(path, **kwargs)

    monkeypatch.setattr(os, "stat", stat_before_the_swap)
    caught: list[BaseException] = []

    def read() -> None:
        try:
            api.read_source(pipe)
        except BaseException as error:
            caught.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert not reader.is_alive(), "read_source blocked on a FIFO"
    assert len(caught) == 1 and isinstance(caught[0], TncError)
    assert "it is a FIFO (named pipe), not a regular file" in str(caught[0])


@pytest.mark.parametrize(
    ("name", "kind", "hint"),
    [("/dev/null", "a character device", "; to compile text"), ("folder", "a folder", "")],
)
def test_a_device_or_a_folder_as_input_is_refused(
    conv: Path, capsys: pytest.CaptureFixture[str], name: str, kind: str, hint: str
) -> None:
    (conv.parent / "folder").mkdir()
    assert main(["check", name]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"{name}: error: cannot read {name}: it is {kind}, not a regular file\n"), err
    assert f"hint: give the path of a .tnd file{hint}" in err


# -- 3. temporary files ----------------------------------------------------------------------------------------------
def dead_pid() -> int:
    """The PID of a process that has ended (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_temporary_file_is_named_for_tnc_and_its_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names: list[str] = []
    real = os.replace

    def spy(source: str | Path, target: str | Path) -> None:
        names.append(Path(source).name)
        real(source, target)

    monkeypatch.setattr(os, "replace", spy)
    write_files([(tmp_path / "m.py", "x\n")])
    assert len(names) == 1 and re.fullmatch(rf"\.m\.py\.tnc-{os.getpid()}-[0-9a-f]{{8}}\.tmp", names[0]), names


def test_stale_temporary_files_of_a_dead_process_are_swept_by_the_next_write(conv: Path) -> None:
    """What a SIGKILL leaves (it allows no cleanup): the next compile into those folders removes it."""
    (conv.parent / "dots").mkdir()
    pid = dead_pid()
    stale = [
        conv.parent / f".conv.py.tnc-{pid}-0123abcd.tmp",
        conv.parent / "dots" / f".y.built.dot.tnc-{pid}-ffff0000.tmp",
        conv.parent / f".renamed.dot.tnc-{pid}-00000000.tmp",  # any output's name: the set of outputs may change
    ]
    for path in stale:
        path.write_text("half")
    assert main(["compile", "conv.tnd", "--dot", "dots"]) == 0
    assert not any(path.exists() for path in stale)
    assert not [name for name in listing(conv.parent) if TEMPORARY.search(name)]


def test_the_sweep_keeps_a_live_process_s_files_and_everything_not_its_own(tmp_path: Path) -> None:
    live = tmp_path / f".m.py.tnc-{os.getpid()}-0123abcd.tmp"  # this process runs: a write may be under way
    old_live = tmp_path / f".n.py.tnc-{os.getpid()}-0123abce.tmp"  # but not for over an hour: its PID was reused
    dead = dead_pid()
    others = [
        tmp_path / ".m.py.0123abcd.tmp",  # another program's pattern (or an older tnc's)
        tmp_path / f"m.py.tnc-{dead}-0123abcd.tmp",  # not hidden
        tmp_path / f".m.py.tnc-{dead}-0123abcd.tmp.bak",
    ]
    for path in [live, old_live, *others]:
        path.write_text("x")
    folder = tmp_path / f".d.tnc-{dead}-0123abcd.tmp"  # a folder of that name is not a temporary file
    folder.mkdir()
    link = tmp_path / f".l.tnc-{dead}-0123abcd.tmp"
    link.symlink_to(tmp_path / ".m.py.0123abcd.tmp")  # nor is a link; what it points to is kept either way
    hours_ago = time.time() - 2 * 3600
    os.utime(old_live, (hours_ago, hours_ago))
    write_files([(tmp_path / "m.py", "x\n")])
    assert live.exists() and not old_live.exists()
    assert all(path.exists() for path in others) and folder.is_dir() and link.is_symlink()


HOOK = """
import os, signal
real = os.{call}
calls = []
def hooked(*args, **kwargs):
    calls.append(1)
    if len(calls) == 2:
        os.kill(os.getpid(), signal.{signal})
    return real(*args, **kwargs)
os.{call} = hooked
"""


@pytest.mark.parametrize(("call", "signal_name"), [("fsync", "SIGTERM"), ("replace", "SIGTERM"), ("fsync", "SIGHUP")])
def test_sigterm_or_sighup_while_writing_removes_every_temporary_file(conv: Path, call: str, signal_name: str) -> None:
    """The signal comes while the second file is written, or renamed; tnc ends as killed but leaves no .tmp."""
    done = tnc(conv.parent, "compile", "conv.tnd", "--dot", "dots", hook=HOOK.format(call=call, signal=signal_name))
    assert done.returncode == 128 + getattr(signal, signal_name), done.stderr
    files = listing(conv.parent)
    assert not [name for name in files if TEMPORARY.search(name)], files
    if call == "fsync":  # nothing renamed yet: nothing written at all, the new folder removed too
        assert files == ["conv.tnd"]


def test_sigkill_while_renaming_leaves_temporary_files_the_next_run_sweeps(conv: Path) -> None:
    hook = HOOK.format(call="replace", signal="SIGKILL")
    killed = tnc(conv.parent, "compile", "conv.tnd", "--dot", "dots", hook=hook)
    assert killed.returncode == -signal.SIGKILL
    left = [name for name in listing(conv.parent) if TEMPORARY.search(name)]
    assert left, "the kill came during the renames: temporary files must be there to sweep"
    assert main(["compile", "conv.tnd", "--dot", "dots"]) == 0
    files = listing(conv.parent)
    assert not [name for name in files if TEMPORARY.search(name)], files
    assert "conv.py" in files and "dots/y.built.dot" in files


def test_an_interrupt_just_after_a_temporary_file_is_made_removes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between os.open() returning and the writer holding the descriptor: the name was listed before the file."""
    real = os.open

    def interrupted(*args: object, **kwargs: object) -> int:
        real(*args, **kwargs)  # type: ignore[arg-type]
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "open", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_files([(tmp_path / "a" / "m.py", "x\n")])
    assert listing(tmp_path) == []


def test_an_interrupt_while_renaming_removes_the_temporary_files_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.replace
    calls: list[int] = []

    def interrupted(source: str | Path, target: str | Path) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(source, target)

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_files([(tmp_path / "a.py", "1"), (tmp_path / "b.py", "2"), (tmp_path / "c.py", "3")])
    assert listing(tmp_path) == ["a.py"]


# -- 4. terminal control characters in what tnc prints ---------------------------------------------------------------
def test_control_characters_in_a_file_name_are_escaped_in_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "e\x1b[31mvil\x9b2J\nx.tnd"
    path.write_text("garbage\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert not RAW_CONTROL.search(err), repr(err)
    assert err.startswith(f"{tmp_path}/e\\x1b[31mvil\\x9b2J\\x0ax.tnd:1:1: error: "), err


def test_a_file_name_that_is_not_utf8_shows_its_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = os.fsdecode(os.fsencode(tmp_path) + b"/bad\xff.tnd")
    assert main(["check", path]) == 1  # missing: the report names it
    err = capsys.readouterr().err
    assert err.startswith(f"{tmp_path}/bad\\xff.tnd: error: cannot read {tmp_path}/bad\\xff.tnd: "), err


def test_control_characters_in_the_source_line_are_shown_escaped_under_their_caret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "ctl.tnd"
    path.write_bytes(b"index a\x1b[2J b\n")
    assert main(["check", str(path)]) == 1
    err = capsys.readouterr().err
    assert not RAW_CONTROL.search(err), repr(err)
    assert "\n    index a\\x1b[2J b\n           ^^^^\n" in err, err
    assert render_caret("\ta\x7fb = c", Span(1, 3, 1, 5)) == "    \ta\\x7fb = c\n    \t ^^^^^"


def test_control_characters_in_output_paths_messages_and_hints_are_escaped(
    conv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["compile", "conv.tnd", "-o", "new\x1b]0;x\x07dir/"]) == 1
    err = capsys.readouterr().err
    assert not RAW_CONTROL.search(err), repr(err)
    assert "cannot write new\\x1b]0;x\\x07dir/: the folder new\\x1b]0;x\\x07dir does not exist" in err
    assert "hint: make it first (mkdir new\\x1b]0;x\\x07dir)" in err
    assert main(["compile", "conv.tnd", "-o", "o\x1b[2J.py"]) == 0
    assert capsys.readouterr().err == "wrote o\\x1b[2J.py\n"


def test_every_part_of_a_report_is_escaped() -> None:
    error = TncError("bad \x1b[1m name\nsecond line\tend \u202eevil", Span(1, 1), hint="try \x9b \x7f \x00")
    text = str(error.located("f\x1b.tnd", "\x1bx\n"))
    assert not RAW_CONTROL.search(text) and "\u202e" not in text
    assert text == (
        "f\\x1b.tnd:1:1: error: bad \\x1b[1m name\nsecond line\tend \\u202eevil\n"
        "    \\x1bx\n    ^^^^\n"
        "hint: try \\x9b \\x7f \\x00"
    )
    assert escape_text("é ü 中 \n\t") == "é ü 中 \n\t" and escape_name("é\t") == "é\\x09"

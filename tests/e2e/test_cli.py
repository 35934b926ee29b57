"""The `tnc` command line: compile, check, dot; errors; outputs (refusals, modes, Graphviz); option values; a
non-editable install."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from tncompiler.cli import main

ROOT = Path(__file__).resolve().parents[2]
CONV = """# a 1-d convolution
index n
index c = 2, d = 3, i = 10, k = 3
pattern p(i, o, k) = conv(stride=2, padding=1)
input x[n, c, i]
input w[d, c, k]
y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k]
"""


@pytest.fixture
def conv_file(tmp_path: Path) -> Path:
    path = tmp_path / "conv.tnd"
    path.write_text(CONV)
    return path


def run(*argv: str) -> int:
    return main(list(argv))


def test_compile_writes_a_module_that_matches_torch(conv_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out" / "conv.py"
    assert run("compile", str(conv_file), "-o", str(out)) == 0
    namespace: dict[str, object] = {}
    exec(compile(out.read_text(), str(out), "exec"), namespace)
    x, w = torch.randn(2, 2, 10, dtype=torch.float64), torch.randn(3, 2, 3, dtype=torch.float64)
    y = namespace["y"](x, w)  # type: ignore[operator]
    torch.testing.assert_close(y, torch.nn.functional.conv1d(x, w, stride=2, padding=1), rtol=1e-10, atol=1e-12)


def test_compile_defaults_to_a_module_beside_the_file(conv_file: Path) -> None:
    assert run("compile", str(conv_file)) == 0
    assert conv_file.with_suffix(".py").exists()


def test_compile_with_dot_writes_one_file_per_diagram_and_stage(conv_file: Path, tmp_path: Path) -> None:
    assert run("compile", str(conv_file), "-o", str(tmp_path / "m.py"), "--dot", str(tmp_path / "dots")) == 0
    names = sorted(p.name for p in (tmp_path / "dots").iterdir())
    assert names and all(name.startswith("y.") and name.endswith(".dot") for name in names)
    assert (tmp_path / "dots" / "y.built.dot").read_text().startswith('graph "y.built" {')


def test_error_exits_1_with_position_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.tnd"
    bad.write_text(CONV.replace("w[d, c, k]\n", "w[d, c, q]\n", 1))
    out = tmp_path / "bad.py"
    out.write_text("# an older module\n")
    assert run("compile", str(bad), "-o", str(out), "--dot", str(tmp_path / "dots")) == 1
    err = capsys.readouterr().err
    assert f"{bad}:6:15: error: undeclared index 'q'" in err
    assert "    input w[d, c, q]\n" in err and "^" in err
    assert out.read_text() == "# an older module\n"
    assert not (tmp_path / "dots").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.py", "bad.tnd"]


def test_missing_file_is_an_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("compile", str(tmp_path / "nope.tnd")) == 1
    assert "cannot read" in capsys.readouterr().err


def test_check_prints_signatures(conv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("check", str(conv_file)) == 0
    out = capsys.readouterr().out
    assert "y(x, w) -> [n, d, o] = [n, 3, 5]" in out
    assert "x: [n, c, i] = [n, 2, 10]" in out


def test_dot_prints_and_rejects_unknown_diagrams(conv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run("dot", str(conv_file), "y") == 0
    assert capsys.readouterr().out.startswith('graph "y.built"')
    assert run("dot", str(conv_file), "z") == 1
    assert "no diagram named 'z'; diagrams: y" in capsys.readouterr().err
    assert run("dot", str(conv_file), "--stage", "nope") == 1
    assert "unknown stage 'nope'; stages: built" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["compile", "check", "dot"])
def test_help(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        run(command, "--help")
    assert done.value.code == 0
    assert "FILE.tnd" in capsys.readouterr().out


@pytest.mark.slow
def test_non_editable_install_finds_its_grammar(tmp_path: Path, conv_file: Path) -> None:
    """`pip install .` into a fresh venv, then `tnc compile` from another directory."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    # Dependencies come from this interpreter's site-packages; the package itself is installed for real.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", str(ROOT)]
    subprocess.run(pip, check=True, cwd=tmp_path, env={**os.environ, "PIP_NO_INPUT": "1"})
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    done = subprocess.run([str(venv / "bin" / "tnc"), "compile", str(conv_file), "-o", "m.py"], cwd=workdir,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "def y(x, w):" in (workdir / "m.py").read_text()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import tncompiler.frontend.parse as p; "
                            "print(p.grammar_path())"], cwd=workdir, capture_output=True, text=True, check=True)
    assert str(site) in where.stdout


# -- outputs: one writer for the module and the DOT files (tncompiler/output.py) ----------------------------------
def failed(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must fail with status 1 and one report at the input file; return the report."""
    assert run(*argv) == 1, argv
    err = capsys.readouterr().err
    assert "Traceback" not in err and "<string>" not in err and ".tmp" not in err, err
    assert err.startswith(f"{argv[1]}: error: "), err
    return err


def test_compile_refuses_a_fifo_and_leaves_it_a_fifo(
    conv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "pipe.py"
    os.mkfifo(fifo)
    assert "it is a FIFO (named pipe), not a regular file" in failed(capsys, "compile", str(conv_file), "-o", str(fifo))
    assert "it is a FIFO" in failed(capsys, "dot", str(conv_file), "-o", str(fifo))
    assert stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.skipif(not Path("/dev/null").exists(), reason="no /dev/null")
def test_compile_refuses_a_device(conv_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = failed(capsys, "compile", str(conv_file), "-o", "/dev/null")
    assert "cannot write /dev/null: it is a character device, not a regular file" in err
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_compile_refuses_the_input_itself(
    conv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hard, soft = tmp_path / "hard.py", tmp_path / "soft.py"
    os.link(conv_file, hard)
    soft.symlink_to(conv_file)
    for output in (conv_file, hard, soft):
        err = failed(capsys, "compile", str(conv_file), "-o", str(output))
        assert f"cannot write {output}: it is the input file {conv_file}" in err
    same = tmp_path / "same.py"  # the default output of same.py is same.py itself
    same.write_text(CONV)
    assert "it is the input file" in failed(capsys, "compile", str(same))
    assert conv_file.read_text() == CONV and same.read_text() == CONV and soft.is_symlink()
    assert "it is the input file" in failed(capsys, "dot", str(conv_file), "-o", str(hard))


def test_compile_writes_nothing_when_the_dot_folder_is_a_file(
    conv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dots = tmp_path / "D"
    dots.write_text("")
    err = failed(capsys, "compile", str(conv_file), "-o", str(tmp_path / "out.py"), "--dot", str(dots))
    assert f"{dots} is a file, not a folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "conv.tnd"]


def test_compile_refuses_a_module_inside_the_dot_files(
    conv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    dots = tmp_path / "dots"
    err = failed(capsys, "compile", str(conv_file), "-o", str(dots / "y.built.dot"), "--dot", str(dots))
    assert "two outputs have this path" in err
    assert not dots.exists()


def test_compile_keeps_the_mode_of_a_replaced_module(conv_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.py"
    out.write_text("# old\n")
    out.chmod(0o640)
    assert run("compile", str(conv_file), "-o", str(out)) == 0
    assert "def y(x, w):" in out.read_text() and stat.S_IMODE(out.stat().st_mode) == 0o640


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_new_outputs_get_the_umasks_mode(conv_file: Path, tmp_path: Path, mask: int) -> None:
    old = os.umask(mask)
    try:
        assert run("compile", str(conv_file), "-o", str(tmp_path / "m.py"), "--dot", str(tmp_path / "dots")) == 0
        assert run("dot", str(conv_file), "-o", str(tmp_path / "y.dot")) == 0
    finally:
        os.umask(old)
    for path in [tmp_path / "m.py", tmp_path / "y.dot", *(tmp_path / "dots").iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path
    assert stat.S_IMODE((tmp_path / "dots").stat().st_mode) == 0o777 & ~mask


def test_a_read_only_folder_is_named(conv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        if os.access(folder, os.W_OK):
            pytest.skip("permissions are not enforced here (root?)")
        err = failed(capsys, "compile", str(conv_file), "-o", str(folder / "m.py"))
        assert f"cannot write {folder}/m.py: the folder {folder} is read-only" in err
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


# -- drawing with Graphviz: a fake `dot` on PATH, so the tests need no Graphviz ------------------------------------
def fake_graphviz(folder: Path, script: str) -> str:
    folder.mkdir()
    program = folder / "dot"
    program.write_text("#!/bin/sh\n" + script)
    program.chmod(0o755)
    return str(folder)


def test_a_missing_graphviz_names_the_file_and_how_to_install_it(
    conv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    err = failed(capsys, "dot", str(conv_file), "-o", str(tmp_path / "y.svg"))
    assert f"{conv_file}: error: cannot draw {tmp_path}/y.svg: Graphviz's `dot` program is not installed" in err
    assert "apt-get install graphviz" in err and "brew install graphviz" in err and "conda install graphviz" in err
    assert f"-o {tmp_path}/y.dot" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bin", "conv.tnd"]


def test_a_failing_graphviz_is_reported_and_nothing_written(
    conv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", fake_graphviz(tmp_path / "bin", "echo 'Error: syntax error in line 1' >&2\nexit 1\n"))
    err = failed(capsys, "dot", str(conv_file), "-o", str(tmp_path / "y.png"))
    assert "cannot draw" in err and "Graphviz's `dot` failed: Error: syntax error in line 1" in err
    assert not (tmp_path / "y.png").exists()


def test_a_picture_is_written_by_the_writer(
    conv_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The picture goes through the same writer: the folder is made, an existing picture keeps its mode."""
    monkeypatch.setenv("PATH", fake_graphviz(tmp_path / "bin", 'cat >/dev/null\necho "<svg $1/>"\n'))
    picture = tmp_path / "pictures" / "y.SVG"
    assert run("dot", str(conv_file), "-o", str(picture)) == 0
    assert picture.read_text() == "<svg -Tsvg/>\n"
    picture.chmod(0o604)
    assert run("dot", str(conv_file), "-o", str(picture)) == 0
    assert stat.S_IMODE(picture.stat().st_mode) == 0o604
    assert sorted(p.name for p in picture.parent.iterdir()) == ["y.SVG"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz is not installed")
def test_a_real_graphviz_draws_svg(conv_file: Path, tmp_path: Path) -> None:
    assert run("dot", str(conv_file), "-o", str(tmp_path / "y.svg")) == 0
    assert "<svg" in (tmp_path / "y.svg").read_text()


# -- option values: never a traceback -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "-5", "abc", "0", "5 XB", "inf", "1e-9", "", "1.2.3", "-1e999"])
def test_a_bad_max_memory_is_a_usage_error(
    value: str, conv_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        run("compile", str(conv_file), "-o", str(tmp_path / "m.py"), "--max-memory", value)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "tnc compile: error: argument --max-memory: " in err and "Traceback" not in err
    assert not (tmp_path / "m.py").exists()


def test_a_huge_max_memory_means_no_limit(conv_file: Path, tmp_path: Path) -> None:
    assert run("compile", str(conv_file), "-o", str(tmp_path / "m.py"), "--max-memory", "1e999") == 0
    assert run("compile", str(conv_file), "-o", str(tmp_path / "m.py"), "--max-memory", "1 GiB") == 0

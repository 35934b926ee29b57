"""The `tnc` command line: compile, check, dot; errors; atomic writes; a non-editable install."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from tncompiler.cli import main

ROOT = Path(__file__).resolve().parents[1]
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

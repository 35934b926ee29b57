"""Long contraction-order searches report progress on a terminal, and stay silent otherwise."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

import tncompiler

ROOT = Path(__file__).resolve().parents[2]
# A chain of nine matrices: a search the compiler reports on a terminal.
CHAIN = (
    "index "
    + ", ".join(f"a{k} = 3" for k in range(10))
    + "\n"
    + "".join(f"input m{k}[a{k}, a{k + 1}]\n" for k in range(9))
    + "y[a0, a9] = "
    + " * ".join(f"m{k}[a{k}, a{k + 1}]" for k in range(9))
    + "\n"
)


def test_no_progress_output_when_not_on_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    tncompiler.compile_source(CHAIN)
    assert capsys.readouterr().err == ""


@pytest.mark.skipif(not hasattr(pty, "openpty"), reason="needs a pseudo-terminal")
def test_progress_on_a_terminal(tmp_path: Path) -> None:
    source = tmp_path / "chain.tnd"
    source.write_text(CHAIN)
    leader, follower = pty.openpty()
    done = subprocess.run(
        [sys.executable, "-m", "tncompiler", "compile", str(source), "-o", str(tmp_path / "c.py")],
        stderr=follower,
        stdout=subprocess.DEVNULL,
        cwd=ROOT,
        check=False,
        timeout=120,
    )
    os.close(follower)
    output = os.read(leader, 4096).decode()
    os.close(leader)
    assert done.returncode == 0
    assert "planning a contraction of 9 tensors (optimal search)" in output

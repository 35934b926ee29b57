"""Determinism: the same file and options give byte-identical module and DOT files, whatever the hash seed, the
working directory, or whether the file is named by a relative or an absolute path."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.tnd"))
# Runs `tnc compile FILE -o OUT --dot DIR` for each file, in one process (the command line's own code path).
SCRIPT = """
import sys
from tncompiler.cli import main
out = sys.argv[1]
for path in sys.argv[2:]:
    stem = path.replace("\\\\", "/").rsplit("/", 1)[-1][:-4]
    status = main(["compile", path, "-o", f"{out}/{stem}.py", "--dot", f"{out}/{stem}.dots"])
    assert status == 0, path
"""


def compile_all(files: list[str], out: Path, cwd: Path, seed: str) -> dict[str, bytes]:
    out.mkdir(parents=True)
    env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(out), *files], cwd=cwd, env=env, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stderr
    return {path.relative_to(out).as_posix(): path.read_bytes() for path in sorted(out.rglob("*")) if path.is_file()}


@pytest.mark.slow
def test_examples_compile_to_the_same_bytes(tmp_path: Path) -> None:
    assert EXAMPLES
    # Run 1: from the repository, relative paths, hash seed 1.
    first = compile_all([f"examples/{p.name}" for p in EXAMPLES], tmp_path / "first", ROOT, "1")
    # Run 2: copies elsewhere, absolute paths, from another working directory, hash seed 2.
    copies = tmp_path / "elsewhere" / "deeper"
    copies.mkdir(parents=True)
    for path in EXAMPLES:
        shutil.copy(path, copies / path.name)
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    second = compile_all([str(copies / p.name) for p in EXAMPLES], tmp_path / "second", workdir, "2")
    assert sorted(first) == sorted(second)
    assert {f"{p.stem}.py" for p in EXAMPLES} <= set(first)
    assert any(name.endswith(".dot") for name in first)
    different = [name for name in first if first[name] != second[name]]
    assert not different, f"differ between runs: {different}"
    for name, data in first.items():
        text = data.decode()
        assert str(tmp_path) not in text and str(ROOT) not in text, f"{name} holds an absolute path"

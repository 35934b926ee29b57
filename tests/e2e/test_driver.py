"""The one driver (tncompiler/driver.py): a compile runs each stage once for the whole file, however many diagrams it
holds and whichever way it is asked for (`tnc compile`, with DOT files too, or `tncompiler.compile_source`);
`tnc explain` and `tnc check` stop after the guard (which reads the scheduled ops), before print. Counted by
`driver.STAGE_RUNS`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import tncompiler
from tests import cases
from tncompiler.api import build_program
from tncompiler.cli import main
from tncompiler.driver import STAGE_RUNS

STAGES = ("names", "bind", "optimise", "guard", "schedule", "print")
# A convolution with a bias, its derivatives, KFAC factors, a slice and a sampled gradient (with its autograd class):
# many diagrams in one file.
LAYER = cases.conv([8, 7], [3, 3], stride=2, padding=1, groups=2, bias=True)
SOURCE = cases.source(
    LAYER,
    transforms=[
        "gx = vjp(y, x)",
        "gw = vjp(y, w)",
        "jx = jvp(y, x)",
        "A = kfac(y, w, batch=n)",
        "B = kfac_grad(y, w, batch=n, approx=reduce)",
        "gw_o = sample(gw, index=o1, p=0.5)",
        "gw_k = slice(gw, k1=-1:)",
    ],
)


@pytest.fixture
def runs() -> Iterator[Counter[str]]:
    STAGE_RUNS.clear()
    yield STAGE_RUNS
    STAGE_RUNS.clear()


@pytest.fixture
def layer_file(tmp_path: Path) -> Path:
    path = tmp_path / "layer.tnd"
    path.write_text(SOURCE)
    return path


DIAGRAMS = [diagram.name for diagram in build_program(SOURCE, "layer.tnd").diagrams]


def test_the_file_has_several_diagrams() -> None:
    assert len(DIAGRAMS) >= 8, DIAGRAMS


def test_compile_source_runs_each_stage_once(runs: Counter[str]) -> None:
    tncompiler.compile_source(SOURCE, "layer.tnd")
    assert runs == Counter(dict.fromkeys(STAGES, 1))


@pytest.mark.parametrize("dots", [False, True], ids=["module", "module-and-dot-files"])
def test_tnc_compile_runs_each_stage_once(runs: Counter[str], layer_file: Path, dots: bool) -> None:
    command = ["compile", str(layer_file), "-o", str(layer_file.with_suffix(".py"))]
    assert main(command + (["--dot", str(layer_file.parent / "dots")] if dots else [])) == 0
    assert runs == Counter(dict.fromkeys(STAGES, 1))
    if dots:  # a DOT file per diagram and rewrite stage, from the one optimise run
        drawn = {path.name.split(".")[0] for path in (layer_file.parent / "dots").glob("*.dot")}
        assert drawn == set(DIAGRAMS)


def test_tnc_explain_stops_after_the_schedule(runs: Counter[str], layer_file: Path) -> None:
    assert main(["explain", str(layer_file)]) == 0
    assert runs == Counter(dict.fromkeys(STAGES[:-1], 1))


def test_tnc_check_schedules_for_the_guard_and_prints_nothing(
    runs: Counter[str], layer_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", str(layer_file)]) == 0
    assert runs == Counter(dict.fromkeys(STAGES[:-1], 1))  # the guard refuses here too: it reads the scheduled ops
    signatures = [line for line in capsys.readouterr().out.split("\n") if line and not line.startswith(" ")]
    assert len(signatures) == len(DIAGRAMS)

"""Compile time with call-time sizes: `python -m bench.compile_time`.

Times `tncompiler.compile_source` (in this process, median of 3 after one warm-up) and `tnc compile` (a fresh
process, imports included, median of 3) on: a chain of 30 matrices and a 4x5 grid network with every index open,
and the conv2d file of the benchmark with every transform (bench/ops.py) with its sizes fixed, its spatial sizes
open, and its spatial and channel sizes open. Targets: the two networks under 5 s, the conv file under 1.5 s.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import tncompiler
from bench.layers import by_name
from bench.ops import tnd_source

__all__ = ["chain", "grid", "main"]

LAYER = "resnet18.layer2.down"


def chain(length: int = 30) -> str:
    """y[a0, aN] = t0[a0, a1] * t1[a1, a2] * ... with every index open."""
    lines = ["index " + ", ".join(f"a{j}" for j in range(length + 1))]
    lines += [f"input t{j}[a{j}, a{j + 1}]" for j in range(length)]
    lines.append(f"y[a0, a{length}] = " + " * ".join(f"t{j}[a{j}, a{j + 1}]" for j in range(length)))
    return "\n".join(lines) + "\n"


def grid(rows: int = 4, columns: int = 5) -> str:
    """A rows x columns lattice of tensors joined to their neighbours, every index open, one open corner leg."""
    across = {(r, c): f"h{r}_{c}" for r in range(rows) for c in range(columns - 1)}
    down = {(r, c): f"v{r}_{c}" for r in range(rows - 1) for c in range(columns)}
    lines = ["index " + ", ".join([*across.values(), *down.values()]), "index corner"]
    factors = []
    for r in range(rows):
        for c in range(columns):
            legs = [across[r, c - 1]] if c else []
            legs += [across[r, c]] if c < columns - 1 else []
            legs += [down[r - 1, c]] if r else []
            legs += [down[r, c]] if r < rows - 1 else []
            legs += ["corner"] if (r, c) == (0, 0) else []
            lines.append(f"input t{r}_{c}[{', '.join(legs)}]")
            factors.append(f"t{r}_{c}[{', '.join(legs)}]")
    lines.append("z[corner] = " + " * ".join(factors))
    return "\n".join(lines) + "\n"


def _median_time(run: Callable[[], object], times: int = 3) -> float:
    spent = []
    for _ in range(times):
        start = time.perf_counter()
        run()
        spent.append(time.perf_counter() - start)
    return statistics.median(spent)


def _cli(source: str) -> float:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "file.tnd"
        path.write_text(source)
        command = [sys.executable, "-m", "tncompiler", "compile", str(path), "-o", str(path.with_suffix(".py"))]
        return _median_time(lambda: subprocess.run(command, check=True, capture_output=True))


def cases() -> dict[str, str]:
    layer = by_name(LAYER)
    return {
        "chain of 30, every index open": chain(),
        "4x5 grid, every index open": grid(),
        f"{LAYER}, all transforms, sizes fixed": tnd_source(layer, kfac_grad=True),
        f"{LAYER}, all transforms, spatial open": tnd_source(layer, kfac_grad=True, open_sizes="spatial"),
        f"{LAYER}, all transforms, spatial and channels open": tnd_source(layer, True, open_sizes="channels"),
    }


def main() -> int:
    print(f"{'file':58} {'compile_source':>15} {'tnc compile':>12}")
    for name, source in cases().items():
        tncompiler.compile_source(source)  # warm-up: lark's tables, sympy's caches
        in_process = _median_time(lambda source=source: tncompiler.compile_source(source))  # type: ignore[misc]
        print(f"{name:58} {in_process:13.2f} s {_cli(source):10.2f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

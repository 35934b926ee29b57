"""Generated functions trace under torch.compile as one graph: no graph breaks (torch._dynamo.explain)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tncompiler
from tncompiler.ir.network import Diagram

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
# Forward, transpose and weight-gradient kernels, window views, fused constants, a batched matmul.
CASES = [
    ("conv2d_vjp.tnd", ("y", "gx", "gw", "gb")),
    ("conv2d_kfac.tnd", ("A", "Ar", "B", "Br")),
    ("unfold3d.tnd", ("u",)),
    ("matmul.tnd", ("bc",)),
]


def _arguments(diagram: Diagram, batch: int = 3) -> list[torch.Tensor]:
    def axis(names: tuple[str, ...]) -> int:
        total = 1
        for name in names:
            size = diagram.sizes[name]
            total *= size if isinstance(size, int) else batch
        return total

    return [torch.randn(*[axis(names) for names in a.layout.axes]) for a in diagram.arguments]


@pytest.mark.parametrize(("example", "functions"), CASES, ids=[c[0] for c in CASES])
def test_no_graph_breaks(example: str, functions: tuple[str, ...]) -> None:
    path = EXAMPLES / example
    program = tncompiler.build_program(path.read_text(), example)
    module = tncompiler.load(path)
    for name in functions:
        torch._dynamo.reset()
        args = _arguments(program.diagram(name))
        explained = torch._dynamo.explain(getattr(module, name))(*args)
        assert explained.graph_break_count == 0, (name, [str(r.reason)[:300] for r in explained.break_reasons])
        assert explained.graph_count == 1, name


def test_compiled_function_agrees_with_eager() -> None:
    module = tncompiler.load(EXAMPLES / "conv2d_vjp.tnd")
    program = tncompiler.build_program((EXAMPLES / "conv2d_vjp.tnd").read_text(), "conv2d_vjp.tnd")
    args = _arguments(program.diagram("gw"))
    torch._dynamo.reset()
    compiled = torch.compile(module.gw, backend="eager")
    torch.testing.assert_close(compiled(*args), module.gw(*args))


# KFAC-reduce on long axes sums windows (the _window_sum helper: Python loops over static sizes), the skinny GEMM
# goes first, and sums run axis by axis: still one graph.
LONG_AXES = """
index n
index c = 2, i1 = 60, i2 = 57, k1 = 3, k2 = 2, d = 2
pattern p1(i1, o1, k1) = conv(stride=2, padding=1)
pattern p2(i2, o2, k2) = conv(padding=(0, 1))
input x[n, c, i1, i2]
input w[d, c, k1, k2]
y[n, d, o1, o2] = x[n, c, i1, i2] * p1(i1, o1, k1) * p2(i2, o2, k2) * w[d, c, k1, k2]
Ar = kfac(y, w, batch=n, approx=reduce)
"""


def test_window_sums_trace_as_one_graph() -> None:
    assert "_window_sum(" in tncompiler.compile_source(LONG_AXES)
    module = tncompiler.load_source(LONG_AXES)
    x = torch.randn(3, 2, 60, 57)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(module.Ar)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(module.Ar, backend="eager")(x), module.Ar(x))

"""Generated functions trace under torch.compile as one graph: no graph breaks (torch._dynamo.explain)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import tncompiler
from tncompiler.ir.network import Diagram

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
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

"""The generated forward pass, input VJP and weight VJP of a convolution run no more ATen compute ops than PyTorch's
own call for the same thing (views are free; counted under a TorchDispatchMode), over the layer sweep."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from tests import cases
from tests.cases import Conv, conv

LAYERS: dict[str, Conv] = {
    "1d k3 p1 bias": conv([9], [3], padding=1, bias=True),
    "1d k3 s2 d2": conv([11], [3], stride=2, dilation=2),
    "1d k4 same": conv([8], [4], padding="same", bias=True),
    "2d k3 s2 p1 g2 bias": conv([8, 7], [3, 3], stride=2, padding=1, groups=2, bias=True),
    "2d depthwise": conv([6, 6], [3, 3], padding=1, groups=3, c_in=1, c_out=2),
    "2d k1 s2 (shortcut)": conv([8, 8], [1, 1], stride=2),
    "2d k4 s4 (patchify)": conv([8, 12], [4, 4], stride=4, bias=True),
    "2d k7 s2 p3 (stem)": conv([16, 16], [7, 7], stride=2, padding=3),
    "2d k(3,1) asymmetric": conv([7, 6], [3, 1], padding=[(2, 0), 0]),
    "3d k3 s2 p1": conv([5, 6, 6], [3, 3, 3], stride=2, padding=1, bias=True),
    "transpose 2d k3 s2 p1 op1": conv([3, 4], [3, 3], stride=2, padding=1, output_padding=1, transpose=True),
}


# Views that ATen does not mark as views (they alias their input all the same).
_VIEWS = {"_unsafe_view", "_reshape_alias", "alias"}


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = str(func.overloadpacket.__name__)
        if not func.is_view and name not in _VIEWS:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def compute_ops(run: Callable[[], torch.Tensor]) -> list[str]:
    with _Count() as count:
        run()
    return count.ops


def _symmetric(case: Conv) -> bool:
    return all(left == right for left, right in case.pads())


def _native(case: Conv, op: str, args: dict[str, torch.Tensor]) -> Callable[[], torch.Tensor]:
    """PyTorch's own call: F.conv*d (with F.pad for asymmetric padding), torch.nn.grad.conv*d_input/_weight."""
    padding = tuple(left for left, _ in case.pads())
    options = {"stride": case.stride, "padding": padding, "dilation": case.dilation, "groups": case.groups}
    grad = getattr(torch.nn.grad, f"conv{case.dims}d_input" if op == "gx" else f"conv{case.dims}d_weight")
    if op == "y":
        return lambda: cases.forward(case, args["x"], args["w"], args.get("b"))
    if op == "gx":
        return lambda: grad(args["x"].shape, args["w"], args["grad_y"], **options)
    return lambda: grad(args["x"], args["w"].shape, args["grad_y"], **options)


# The ungrouped layers again, written with a group index of one group (`x[n, (g c), i1, i2]`, `w[(g d), c, ..]`,
# `b[(g d)]`, `y[n, (g d), ..]` with `index g = 1`): the size-1 leg must change nothing, the bias included.
ONE_GROUP: dict[str, Conv] = {
    name: replace(case, group_index=True) for name, case in LAYERS.items() if case.groups == 1
} | {"transpose 2d k3 s2 bias": conv([3, 4], [3, 3], stride=2, padding=1, transpose=True, bias=True, group_index=True)}


@pytest.mark.parametrize("level", ["batch", "spatial"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_no_more_compute_ops_than_pytorch(name: str, level: str) -> None:
    _check_compute_ops(LAYERS[name], level)


@pytest.mark.parametrize("level", ["batch", "spatial"])
@pytest.mark.parametrize("name", list(ONE_GROUP))
def test_a_group_index_of_one_group_adds_no_compute_op(name: str, level: str) -> None:
    """A bias on a size-1 group axis went through an alias and a 5-d reshape and was added after the kernel (one
    more pass over y than F.conv2d with its bias): 8 of 22 real layers written so."""
    _check_compute_ops(ONE_GROUP[name], level)


def _check_compute_ops(case: Conv, level: str) -> None:
    module = cases.load(cases.source(case, cases.OPEN_LEVELS[level], ["gx = vjp(y, x)", "gw = vjp(y, w)"]))
    args = cases.all_arguments(case)
    ops = ["y"] if case.transpose else ["y", "gx", "gw"] if _symmetric(case) else ["y"]
    sizes = cases.keyword_sizes(case)
    for op in ops:
        takes = {"y": ("x", "w", "b"), "gx": ("w", "grad_y"), "gw": ("x", "grad_y")}[op]
        function = getattr(module, op)
        keywords = {
            p.name: sizes[p.name]
            for p in inspect.signature(function).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.name in sizes
        }
        ours = compute_ops(functools.partial(function, *[args[t] for t in takes if t in args], **keywords))
        theirs = compute_ops(_native(case, op, args))
        assert len(ours) <= len(theirs), f"{op}: {ours} against PyTorch's {theirs}"


def test_the_count_sees_compute_ops_and_not_views() -> None:
    x = torch.randn(2, 3)
    assert compute_ops(lambda: x.t().reshape(6)) == ["clone"]  # a reshape that must copy
    assert compute_ops(lambda: x.view(6)) == []
    assert compute_ops(lambda: F.relu(x)) == ["relu"]

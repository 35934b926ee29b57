"""Differential fuzzing: random (transpose) convolutions, 1-3 d, with random and degenerate strides, paddings,
dilations, kernels, groups and sizes, fixed or open sizes, every operation the language derives, each against
PyTorch (float64, 1e-10). The case of seed S is rebuilt by `random_case(S)`; a failure names its seed and source.

The quick suite runs QUICK seeds; `-m slow` runs SLOW more.
"""

from __future__ import annotations

import random

import pytest
import torch

from tests import cases
from tests.cases import Conv, conv

QUICK = range(100)
SLOW = range(100, 3300)


def _dim(rng: random.Random) -> dict[str, object]:
    """One spatial dimension's settings; small sizes, so that windows often reach into the padding or beyond."""
    kernel, stride, dilation = rng.randint(1, 4), rng.choice([1, 1, 2, 3, 5]), rng.choice([1, 1, 2, 3])
    extent = dilation * (kernel - 1) + 1
    padding: object = rng.choice(
        [0, rng.randint(0, 3), (rng.randint(0, 4), rng.randint(0, 4)), "valid"] + (["same"] if stride == 1 else [])
    )
    pads = cases.pad_pair(padding, dilation, kernel)  # type: ignore[arg-type]
    smallest = max(1, extent - sum(pads))  # at least one window
    return {
        "kernel": kernel,
        "stride": stride,
        "dilation": dilation,
        "padding": padding,
        "size": smallest + rng.randint(0, 6),
    }


def random_case(seed: int) -> tuple[Conv, str]:
    """A random layer and which of its sizes are open."""
    rng = random.Random(seed)
    dims = rng.choice([1, 1, 2, 2, 3])
    each = [_dim(rng) for _ in range(dims)]
    groups = rng.choice([1, 1, 2, 3])
    transpose = rng.random() < 0.25
    options = {
        "stride": [d["stride"] for d in each],
        "padding": [d["padding"] for d in each],
        "dilation": [d["dilation"] for d in each],
        "groups": groups,
        "c_in": rng.randint(1, 3),
        "c_out": rng.randint(1, 3),
        "bias": rng.random() < 0.5,
        "batch": rng.randint(1, 3),
        "transpose": transpose,
    }
    spatial = [int(d["size"]) for d in each]  # type: ignore[call-overload]
    if transpose:  # x on the o legs: any size; an output_padding below the stride keeps the pattern's o the input's
        spatial = [rng.randint(1, 4) for _ in each]
        options["output_padding"] = [rng.randrange(int(d["stride"])) for d in each]  # type: ignore[call-overload]
    case = conv(spatial, [int(d["kernel"]) for d in each], **options)  # type: ignore[arg-type,call-overload]
    if transpose and min(case.pattern_in()) < 1:
        return random_case(seed + 100_000)  # no such layer (its output would be empty)
    return case, rng.choice(list(cases.OPEN_LEVELS))


def _check(seed: int) -> None:
    case, level = random_case(seed)
    source = cases.source(case, cases.OPEN_LEVELS[level], cases.statements(case))
    module = cases.load(source)
    calls = [case] if level == "batch" else [case, case.resized(case.batch + 1, 1, 1 if level == "channels" else 0)]
    for call in calls:
        if call.transpose and min(call.pattern_in()) < 1:
            continue
        args = cases.all_arguments(call, seed)
        for op in cases.operations(case):
            actual = cases.call(getattr(module, op.name), call, op.takes, args)
            expected = cases.reference(op, call, args)
            where = f"seed {seed}, {op.name} at {call}"
            assert actual.shape == expected.shape, f"{where}: {actual.shape} vs {expected.shape}\n{source}"
            scale = expected.abs().max().item() or 1.0
            error = (actual - expected).abs().max().item() / scale
            assert error <= 1e-10, f"{where}: relative error {error:.3g}\n{source}"


@pytest.mark.parametrize("seed", QUICK)
def test_random_layers_agree_with_pytorch(seed: int) -> None:
    _check(seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", SLOW)
def test_many_more_random_layers_agree_with_pytorch(seed: int) -> None:
    _check(seed)


def test_the_cases_cover_what_they_should() -> None:
    """Every open level, transpose and plain layers, asymmetric padding, strides beyond the kernel, groups."""
    drawn = [random_case(seed) for seed in QUICK]
    assert {level for _, level in drawn} == set(cases.OPEN_LEVELS)
    assert any(case.transpose for case, _ in drawn) and any(not case.transpose for case, _ in drawn)
    assert any(any(isinstance(p, tuple) and p[0] != p[1] for p in case.padding) for case, _ in drawn)
    assert any(any(s > k for s, k in zip(case.stride, case.kernel)) for case, _ in drawn)
    assert any(case.groups > 1 for case, _ in drawn) and any(case.dims == 3 for case, _ in drawn)
    assert torch.get_default_dtype() == torch.float32

"""The generated modules' cache of constants (index patterns, copy tensors, selections, fused constants): a hit returns
the cached tensor itself, the least recently used constants go once the cache holds more than `_CONSTANTS_LIMIT`
bytes (256 MiB unless the user changes it), and a constant larger than the limit is returned but not kept. Without
rewrites every pattern is a dense constant per input length: the case that grew the cache without bound (issue 11:
504 MiB after 200 lengths)."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F

import tncompiler
from tncompiler.backend.runtime import helper_source

# One channel, the length bound at call time: one (I, O, K) pattern per length.
CONV1D = """index n, c = 1, d = 2, i, k = 3
pattern p(i, o, k) = conv(padding=1)
input x[n, c, i]
input w[d, c, k]
y[n, d, o] = x[n, c, i] * p(i, o, k) * w[d, c, k]
"""
MIB = 2**20
CPU, FLOAT64 = torch.device("cpu"), torch.float64


def held(module: types.ModuleType) -> int:
    return sum(t.nbytes for t in module._CONSTANTS.values())


@pytest.fixture
def module() -> types.ModuleType:
    return tncompiler.load_source(CONV1D, "conv1d.tnd", rewrite=False)


@pytest.fixture
def helpers() -> types.ModuleType:
    """Every helper that builds a constant, exactly as generated modules carry them, in a module of their own."""
    namespace = types.ModuleType("helpers")
    namespace.torch = torch  # type: ignore[attr-defined]
    exec("\n\n".join(helper_source({"_conv_pattern", "_delta", "_select", "_cached"})), namespace.__dict__)
    return namespace


def test_the_default_bound_is_256_mib_per_module(module: types.ModuleType) -> None:
    assert module._CONSTANTS_LIMIT == 256 * MIB
    assert module._CONSTANTS == {}


def test_two_hundred_lengths_keep_the_cache_within_its_bound(module: types.ModuleType) -> None:
    module._CONSTANTS_LIMIT = MIB  # the user's bound: a pattern of length 200 holds 200 * 200 * 3 * 8 B = 0.9 MiB
    w = torch.randn(2, 1, 3, dtype=FLOAT64)
    generator = torch.Generator().manual_seed(0)
    for length in range(100, 300):
        x = torch.randn(1, 1, length, dtype=FLOAT64, generator=generator)
        torch.testing.assert_close(module.y(x, w), F.conv1d(x, w, padding=1), rtol=1e-12, atol=1e-12)
        assert held(module) <= MIB, (length, held(module))
    assert 0 < len(module._CONSTANTS) < 200


def test_a_hit_returns_the_cached_tensor_and_makes_it_the_most_recent(helpers: types.ModuleType) -> None:
    first = helpers._conv_pattern(50, 50, 3, 1, 1, 1, CPU, FLOAT64)
    assert helpers._conv_pattern(50, 50, 3, 1, 1, 1, CPU, FLOAT64) is first  # no rebuild
    helpers._CONSTANTS_LIMIT = 3 * first.nbytes
    helpers._conv_pattern(50, 50, 3, 1, 2, 1, CPU, FLOAT64)
    helpers._conv_pattern(50, 50, 3, 1, 0, 1, CPU, FLOAT64)
    assert helpers._conv_pattern(50, 50, 3, 1, 1, 1, CPU, FLOAT64) is first  # used again: now the most recent
    helpers._conv_pattern(50, 50, 3, 1, 3, 1, CPU, FLOAT64)  # a fourth: the least recently used (padding 2) goes
    paddings = [key[5] for key in helpers._CONSTANTS]
    assert paddings == [0, 1, 3] and helpers._conv_pattern(50, 50, 3, 1, 1, 1, CPU, FLOAT64) is first


def test_a_constant_larger_than_the_bound_is_returned_but_not_kept(helpers: types.ModuleType) -> None:
    helpers._CONSTANTS_LIMIT = 1000
    kept = helpers._delta(5, 2, CPU, FLOAT64)  # 200 B
    big = helpers._conv_pattern(20, 20, 3, 1, 1, 1, CPU, FLOAT64)  # 9600 B
    assert big.shape == (20, 20, 3) and big.sum() == 20 * 3 - 2  # the first and last windows read one padding row
    assert list(helpers._CONSTANTS.values()) == [kept]
    assert helpers._conv_pattern(20, 20, 3, 1, 1, 1, CPU, FLOAT64) is not big  # built again
    torch.testing.assert_close(helpers._delta(5, 2, CPU, FLOAT64), torch.eye(5, dtype=FLOAT64), rtol=0, atol=0)


def test_selections_and_fused_constants_share_the_bound(helpers: types.ModuleType) -> None:
    helpers._CONSTANTS_LIMIT = 10_000
    select = helpers._select(30, 10, 0, 3, CPU, FLOAT64)  # 2400 B
    assert helpers._select(30, 10, 0, 3, CPU, FLOAT64) is select
    fused = helpers._cached(("y.fused", CPU, FLOAT64), lambda: torch.ones(1000, dtype=FLOAT64))  # 8000 B
    assert helpers._cached(("y.fused", CPU, FLOAT64), lambda: torch.zeros(1)) is fused
    assert list(helpers._CONSTANTS.values()) == [fused]  # the selection made room

"""Two processes on the gloo back end (the same code runs on NCCL): `kfac_factors` with uneven shares of the data
equals the factors of all of it; `KFAC` under DistributedDataParallel has the factors of the global batch and moves
both ranks' parameters as one process with the whole batch would; `sampled` under DDP gives the exact gradients at
p = 1 and, at p = 0.5, per-rank draws that DDP averages into the same gradient on both ranks."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import tncompiler
from tests.model.model_references import relative_error, worst_error
from tests.model.test_model_factors import LOSSES, batches, every_layer_net

Tensor = torch.Tensor
WORLD = 2
TOLERANCE = 1e-10
COMBINATIONS = list(itertools.product(["ce-mean", "mse-sum"], ["empirical", "type-2"], ["expand", "reduce"]))
SHARES = {0: [0, 1], 1: [2, 3]}  # batch indices per rank: 5 + 3 examples on rank 0, 1 + 4 on rank 1


def _data(loss: str) -> list[tuple[Tensor, Tensor]]:
    return batches(loss, (2, 9), sizes=(5, 3, 1, 4))


def _global_batches() -> list[tuple[Tensor, Tensor]]:
    return batches("ce-mean", (2, 9), sizes=(8, 8, 8, 8))


def _factors_on_shares(rank: int) -> dict[str, Any]:
    group = dist.group.WORLD
    results = {}
    for loss, fisher, approx in COMBINATIONS:
        share = [_data(loss)[j] for j in SHARES[rank]]
        results[f"{loss}/{fisher}/{approx}"] = tncompiler.kfac_factors(
            every_layer_net(), LOSSES[loss](), share, approx=approx, fisher=fisher, process_group=group
        )  # type: ignore[arg-type]
    return results


def _ddp_kfac(rank: int, split: list[int], steps: int) -> dict[str, Any]:
    """KFAC on a DDP model, each rank with its part of every global batch (split: rank 0's part of 8)."""
    ddp = DistributedDataParallel(every_layer_net())
    kfac = tncompiler.KFAC(ddp, nn.CrossEntropyLoss(), update_every=1, invert_every=2, damping=1e-2)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.1)
    first: dict[str, Any] = {}
    for step, (x, target) in enumerate(_global_batches()[:steps]):
        part = slice(0, split[step]) if rank == 0 else slice(split[step], None)
        optimizer.zero_grad()
        nn.functional.cross_entropy(ddp(x[part]), target[part]).backward()
        kfac.step()
        optimizer.step()
        first = first or {name: tuple(f.clone() for f in pair) for name, pair in kfac.factors.items()}
    return {"factors": first, "parameters": [p.detach().clone() for p in ddp.parameters()]}


def _ddp_sampled(rank: int) -> dict[str, Any]:
    ddp = DistributedDataParallel(every_layer_net())
    x, target = _global_batches()[0]
    part = slice(rank * 4, (rank + 1) * 4)
    results: dict[str, Any] = {}
    for name, p in (("exact", None), ("p1", 1.0), ("half", 0.5)):
        ddp.zero_grad()
        generator = torch.Generator().manual_seed(rank)
        if p is None:
            nn.functional.cross_entropy(ddp(x[part]), target[part]).backward()
        else:
            with tncompiler.sampled(ddp, p=p, generator=generator):
                nn.functional.cross_entropy(ddp(x[part]), target[part]).backward()
        results[name] = [q.grad.clone() for q in ddp.parameters()]  # type: ignore[union-attr]
    return results


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    try:
        results = {
            "factors": _factors_on_shares(rank),
            "kfac_uneven": _ddp_kfac(rank, split=[5], steps=1),
            "kfac_even": _ddp_kfac(rank, split=[4, 4, 4], steps=3),
            "sampled": _ddp_sampled(rank),
        }
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of the two processes computed (one launch for all the tests of this file)."""
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    folder = tmp_path_factory.mktemp("ddp")
    assert "TNC_CACHE_DIR" in os.environ  # the workers read the modules this session compiled
    mp.spawn(_worker, args=(str(folder / "init"), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


@pytest.mark.parametrize(("loss", "fisher", "approx"), COMBINATIONS)
def test_uneven_shares_give_the_factors_of_all_the_data(
    ranks: list[dict[str, Any]], loss: str, fisher: str, approx: str
) -> None:
    expected = tncompiler.kfac_factors(every_layer_net(), LOSSES[loss](), _data(loss), approx=approx, fisher=fisher)  # type: ignore[arg-type]
    for rank in ranks:
        assert worst_error(rank["factors"][f"{loss}/{fisher}/{approx}"], expected) <= TOLERANCE


def test_kfac_under_ddp_has_the_global_batchs_factors(ranks: list[dict[str, Any]]) -> None:
    """Rank 0 holds 5 examples of the batch, rank 1 3: both get the factors of all 8."""
    expected = tncompiler.kfac_factors(every_layer_net(), nn.CrossEntropyLoss(), _global_batches()[:1])
    for rank in ranks:
        assert worst_error(rank["kfac_uneven"]["factors"], expected) <= TOLERANCE


def test_kfac_under_ddp_steps_as_one_process(ranks: list[dict[str, Any]]) -> None:
    """Even shares: DDP's averaged gradient is the whole batch's, the factors are the whole batch's, so three steps of
    KFAC and SGD leave both ranks with the parameters of one process that saw every batch whole."""
    model = every_layer_net()
    kfac = tncompiler.KFAC(model, nn.CrossEntropyLoss(), update_every=1, invert_every=2, damping=1e-2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for x, target in _global_batches()[:3]:
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), target).backward()
        kfac.step()
        optimizer.step()
    for rank in ranks:
        for actual, expected in zip(rank["kfac_even"]["parameters"], model.parameters()):
            assert relative_error(actual, expected.detach()) <= 1e-9


def test_sampled_under_ddp(ranks: list[dict[str, Any]]) -> None:
    """p = 1: DDP's gradients are the exact ones; p = 0.5: each rank draws its own rows, DDP averages the estimates,
    so both ranks hold the same (sampled) gradient."""
    model = every_layer_net()
    x, target = _global_batches()[0]
    nn.functional.cross_entropy(model(x), target).backward()
    exact = [p.grad for p in model.parameters()]
    for rank in ranks:
        for name in ("exact", "p1"):
            for actual, expected in zip(rank["sampled"][name], exact):
                assert relative_error(actual, expected) <= 1e-12  # type: ignore[arg-type]
    halves = [rank["sampled"]["half"] for rank in ranks]
    assert all(torch.equal(a, b) for a, b in zip(*halves))
    assert any(not torch.allclose(a, b) for a, b in zip(halves[0], exact))  # type: ignore[arg-type]

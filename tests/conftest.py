"""Shared pytest options and fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from tncompiler.model import cache

if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core: one torch thread each
    torch.set_num_threads(1)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", help="rewrite examples/golden from the current compiler")


@pytest.fixture
def regen_golden(request: pytest.FixtureRequest) -> bool:
    return bool(request.config.getoption("--regen-golden"))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module whose tensors are tiny and calls many (thread start-up and contention would
    dominate); modules ask for it with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True, scope="session")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Whole-model tests compile into a disk cache of their own, shared with the processes they start."""
    folder = str(tmp_path_factory.mktemp("tnc-cache"))
    before = os.environ.get("TNC_CACHE_DIR")
    os.environ["TNC_CACHE_DIR"] = folder
    yield folder
    if before is None:
        del os.environ["TNC_CACHE_DIR"]
    else:
        os.environ["TNC_CACHE_DIR"] = before
    cache.clear_memory()

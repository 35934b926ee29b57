"""The whole-model tests compile into a disk cache of their own, shared with the processes they start."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tncompiler.model import cache


@pytest.fixture(autouse=True, scope="session")
def compile_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = str(tmp_path_factory.mktemp("tnc-cache"))
    before = os.environ.get("TNC_CACHE_DIR")
    os.environ["TNC_CACHE_DIR"] = folder
    yield folder
    if before is None:
        del os.environ["TNC_CACHE_DIR"]
    else:
        os.environ["TNC_CACHE_DIR"] = before
    cache.clear_memory()

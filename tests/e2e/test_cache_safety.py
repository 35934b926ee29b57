"""The disk cache of compiled layers (`tncompiler.model.cache`) is safe to share: what is in the folder is executed only
when it is an entry this compiler wrote for this text (else it is deleted and compiled again), symbolic links are
never followed, hostile layer names stay inside the folder, folders are 0700, the size bound holds by evicting the
least recently used entries, and `tnc cache clear` empties it."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import tncompiler
from tncompiler.model import cache

ROOT = Path(__file__).resolve().parents[2]
ENTRY = re.compile(r"[A-Za-z0-9_]{1,40}-[0-9a-f]{32}\.py")


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A cache folder of the test's own, with nothing in memory before or after."""
    chosen = tmp_path / "cache"
    monkeypatch.setenv("TNC_CACHE_DIR", str(chosen))
    monkeypatch.delenv("TNC_CACHE_MAX_BYTES", raising=False)
    cache.clear_memory()
    yield chosen
    cache.clear_memory()


@pytest.fixture
def compiles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The compilations from now on, one "compiled" each (tests clear it once their entries are written)."""
    seen: list[str] = []
    real = tncompiler.compile_source

    def counted(*args: object, **kwargs: object) -> str:
        seen.append("compiled")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tncompiler, "compile_source", counted)
    return seen


def entry_of(module: nn.Module, folder: Path) -> Path:
    """Compile the layer into the cache and return its entry (the only new file), the memory cache then cleared."""
    before = set(folder.glob("*.py"))
    tncompiler.compile_layer(module)
    (written,) = set(folder.glob("*.py")) - before
    cache.clear_memory()
    return written


def assert_computes_conv1d(module: nn.Conv1d) -> None:
    """The compiled layer's y against torch.nn.functional.conv1d, in float64."""
    compiled = tncompiler.compile_layer(module)
    torch.manual_seed(0)
    x = torch.randn(2, module.in_channels, 9, dtype=torch.float64)
    w = torch.randn(module.out_channels, module.in_channels, module.kernel_size[0], dtype=torch.float64)
    b = torch.randn(module.out_channels, dtype=torch.float64)
    expected = torch.nn.functional.conv1d(x, w, b, dilation=module.dilation)
    torch.testing.assert_close(compiled.y(x, w, b), expected, rtol=1e-12, atol=1e-12)


def payload(marker: Path) -> str:
    return f"from pathlib import Path\nPath({str(marker)!r}).write_text('executed')\n"


def test_an_entry_written_from_outside_is_never_executed(folder: Path, tmp_path: Path, compiles: list[str]) -> None:
    module = nn.Conv1d(2, 3, 3)
    entry = entry_of(module, folder)
    compiles.clear()
    header = entry.read_text().partition("\n")[0]
    marker = tmp_path / "marker"
    forgeries = [
        payload(marker),  # no header at all
        f"{header}\n{payload(marker)}",  # the real header (fingerprint, key) on other code: its sha256 is wrong
        f"{header}\n" + entry.read_text().partition("\n")[2] + payload(marker),  # code appended to a real entry
    ]
    for number, forged in enumerate(forgeries, 1):
        entry.write_text(forged)
        cache.clear_memory()
        assert_computes_conv1d(module)
        assert not marker.exists(), f"forgery {number} was executed"
        assert len(compiles) == number and payload(marker) not in entry.read_text()


def test_an_entry_others_may_write_is_not_trusted(folder: Path, compiles: list[str]) -> None:
    """A valid entry that the group or others may write could have been changed by them: compiled again."""
    module = nn.Conv1d(2, 3, 3)
    entry = entry_of(module, folder)
    compiles.clear()
    entry.chmod(0o666)
    assert_computes_conv1d(module)
    assert compiles == ["compiled"] and not entry.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def test_a_damaged_entry_is_recompiled(folder: Path, compiles: list[str]) -> None:
    module = nn.Conv1d(2, 3, 3, dilation=2)
    entry = entry_of(module, folder)
    compiles.clear()
    whole = entry.read_bytes()
    for damaged in (whole[:-20], whole[:10], b"", whole.replace(b"def ", b"def  ", 1), b"\xff\xfe" + whole):
        entry.write_bytes(damaged)
        cache.clear_memory()
        assert_computes_conv1d(module)
        assert entry.read_bytes() == whole
    assert len(compiles) == 5
    cache.clear_memory()
    assert_computes_conv1d(module)  # and the entry written afresh is read back without compiling
    assert len(compiles) == 5


def test_a_symlinked_entry_is_refused_and_not_followed(folder: Path, tmp_path: Path, compiles: list[str]) -> None:
    module = nn.Conv1d(2, 3, 3)
    entry = entry_of(module, folder)
    compiles.clear()
    elsewhere = tmp_path / "elsewhere.py"
    elsewhere.write_bytes(entry.read_bytes())  # a valid entry: it would pass every check if the link were followed
    entry.unlink()
    entry.symlink_to(elsewhere)
    assert_computes_conv1d(module)
    assert compiles == ["compiled"], "the link was followed"
    assert not entry.is_symlink() and entry.is_file()
    dangling = tmp_path / "written-through-the-link.py"
    entry.unlink()
    entry.symlink_to(dangling)
    cache.clear_memory()
    assert_computes_conv1d(module)
    assert not dangling.exists() and not entry.is_symlink() and len(compiles) == 2


def files_under(root: Path) -> set[Path]:
    return {path for path in root.rglob("*")}


def test_a_hostile_class_name_writes_only_inside_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = tmp_path / "deep" / "er" / "cache"
    monkeypatch.setenv("TNC_CACHE_DIR", str(chosen))
    hostile = type("../../x", (nn.Conv2d,), {})
    cache.clear_memory()
    compiled = tncompiler.compile_layer(hostile(2, 3, 3))
    cache.clear_memory()
    outside = files_under(tmp_path) - files_under(chosen) - {chosen, tmp_path / "deep", tmp_path / "deep" / "er"}
    assert outside == set()
    (written,) = chosen.iterdir()
    assert ENTRY.fullmatch(written.name) and hasattr(compiled, "y")


@pytest.mark.parametrize("name", ["../../x", "/{tmp}/outside/evil", "..", "", "a/" * 100, "name\n\x00é"])
def test_a_hostile_module_name_writes_only_inside_the_cache(name: str, folder: Path, tmp_path: Path) -> None:
    """The cache's own guard, whatever name a caller passes (compile_layer derives it from the layer)."""
    hostile = name.replace("{tmp}", str(tmp_path).lstrip("/"))
    compiled = cache.load_compiled(tncompiler.layer_source(nn.Linear(2, 3)), hostile)
    assert files_under(tmp_path) - files_under(folder) == {folder}
    (written,) = folder.iterdir()
    assert ENTRY.fullmatch(written.name) and re.fullmatch(r"tnc_\w{1,40}_[0-9a-f]{12}", compiled.__name__, re.ASCII)


def test_a_repr_that_is_an_absolute_path_writes_only_inside_the_cache(folder: Path, tmp_path: Path) -> None:
    target = tmp_path / "outside" / "evil"

    class Named(nn.Linear):
        def __repr__(self) -> str:
            return str(target)

    compiled = tncompiler.compile_layer(Named(3, 2))
    lowered = Path(str(target).lower())  # the layer's name is its repr, lower-cased
    assert not target.parent.exists() and not lowered.parent.exists()
    assert files_under(tmp_path) - files_under(folder) == {folder}
    assert all(ENTRY.fullmatch(path.name) for path in folder.iterdir()) and hasattr(compiled, "y")


def test_folders_are_made_with_mode_0700(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("TNC_CACHE_DIR", str(chosen))
    cache.clear_memory()
    tncompiler.compile_layer(nn.Linear(2, 2))
    cache.clear_memory()
    for path in (tmp_path / "a", tmp_path / "a" / "b", chosen):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    (written,) = chosen.iterdir()
    assert stat.S_IMODE(written.stat().st_mode) == 0o600


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_write_leaves_no_temporary_file(
    failure: BaseException, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rename that publishes an entry fails (a full disk, an interrupt): the temporary file goes with it; an
    OSError only costs the cache, anything else propagates."""

    def fail(*args: object) -> None:
        raise failure

    monkeypatch.setattr(os, "replace", fail)
    module = nn.Conv1d(2, 3, 3)
    if isinstance(failure, OSError):
        assert_computes_conv1d(module)
    else:
        with pytest.raises(KeyboardInterrupt):
            tncompiler.compile_layer(module)
    assert list(folder.iterdir()) == []


def test_lru_eviction_keeps_the_bound(folder: Path, monkeypatch: pytest.MonkeyPatch, compiles: list[str]) -> None:
    first, second, third = (nn.Conv1d(2, channels, 3) for channels in (3, 4, 5))
    old = entry_of(first, folder)
    unused = entry_of(second, folder)
    compiles.clear()
    sizes = old.stat().st_size, unused.stat().st_size
    bound = sum(sizes) + max(sizes) // 2  # two entries fit, three do not
    monkeypatch.setenv("TNC_CACHE_MAX_BYTES", str(bound))
    assert_computes_conv1d(first)  # read back from disk: now the most recently used
    cache.clear_memory()
    assert len(compiles) == 0
    new = entry_of(third, folder)
    assert set(folder.iterdir()) == {old, new}, "the least recently used entry should have gone"
    assert sum(path.stat().st_size for path in folder.iterdir()) <= bound
    monkeypatch.setenv("TNC_CACHE_MAX_BYTES", "1")
    tncompiler.compile_layer(second)  # its entry was evicted: compiled, stored, and evicted at once
    assert list(folder.iterdir()) == []  # a bound below one entry keeps none


def test_a_bad_size_bound_names_the_variable(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TNC_CACHE_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match=r"TNC_CACHE_MAX_BYTES='lots' is not a size"):
        tncompiler.compile_layer(nn.Linear(2, 3))


def test_clear_cache_removes_every_entry_and_nothing_else(folder: Path) -> None:
    for module in (nn.Linear(2, 3), nn.Conv1d(2, 3, 3)):
        entry_of(module, folder)
    unrelated = folder / "notes.txt"
    unrelated.write_text("mine")
    left = folder / ".tnc-crashed_writer.tmp"
    left.write_text("half a module")
    assert cache.clear_cache() == 2
    assert set(folder.iterdir()) == {unrelated}
    assert cache.clear_cache() == 0


def test_tnc_cache_clear(folder: Path) -> None:
    for module in (nn.Linear(2, 3), nn.Linear(2, 4), nn.Conv1d(2, 3, 3)):
        entry_of(module, folder)
    command = [sys.executable, "-m", "tncompiler", "cache", "clear"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False, env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"removed 3 cache entries from {folder}\n"
    assert list(folder.iterdir()) == []
    again = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    assert again.stdout.startswith("removed 0 cache entries")

"""Watching the store: atomic renames and kubelet-style symlink swaps are both seen."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from launcher.watch import fingerprints

pytestmark = pytest.mark.anyio


def _version(directory: Path) -> str | None:
    try:
        return (directory / "prod.set").read_text()
    except FileNotFoundError:
        return None


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


async def _first_change(directory: Path, last: str, change: Callable[[int], None]) -> object:
    """Watch, and keep making changes (v2, v3, ...) until the watcher reports one.

    inotify only sees events after the watch exists, and there is no signal for that moment,
    so instead of guessing a delay the change is repeated until it is seen.
    """
    stream = fingerprints(directory, lambda: _version(directory), last)
    result: list[object] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                async for value in stream:
                    result.append(value)
                    tg.cancel_scope.cancel()

            tg.start_soon(consume)
            for n in itertools.count(2):
                await anyio.to_thread.run_sync(change, n)
                await anyio.sleep(0.1)
    return result[0]


async def test_atomic_rename_is_a_change(tmp_path: Path) -> None:
    """A set file replaced by rename yields its new fingerprint."""
    _atomic_write(tmp_path / "prod.set", "v1")
    new = await _first_change(
        tmp_path, "v1", lambda n: _atomic_write(tmp_path / "prod.set", f"v{n}")
    )
    assert new in {f"v{n}" for n in range(2, 400)}


async def test_change_before_the_watch_started_is_not_lost(tmp_path: Path) -> None:
    """If the store moved on between start-up and the watch, the first value says so."""
    _atomic_write(tmp_path / "prod.set", "v2")
    stream = fingerprints(tmp_path, lambda: _version(tmp_path), "v1")
    with anyio.fail_after(10):
        assert await stream.__anext__() == "v2"


async def test_unrelated_files_do_not_count(tmp_path: Path) -> None:
    """Events that leave the fingerprint unchanged (other files, temp files) yield nothing."""
    _atomic_write(tmp_path / "prod.set", "v1")

    def noise_then_change(n: int) -> None:
        for _ in range(3):
            (tmp_path / "other.set").write_text(str(n))
            (tmp_path / ".prod.set.lock").write_text(str(n))
        if n >= 5:  # only from the fourth round on does the set itself change
            _atomic_write(tmp_path / "prod.set", f"v{n}")

    # Noise alone never yields: the first value is a real change, never "v1" again.
    assert await _first_change(tmp_path, "v1", noise_then_change) in {
        f"v{n}" for n in range(5, 400)
    }


async def test_kubelet_symlink_swap_is_a_change(tmp_path: Path) -> None:
    """A ConfigMap-style update (`..data` symlink swapped to a new folder) is seen."""
    first = tmp_path / "..2026_11_23_06_00_00.1"
    first.mkdir()
    (first / "prod.set").write_text("v1")
    os.symlink(first.name, tmp_path / "..data")
    os.symlink("..data/prod.set", tmp_path / "prod.set")

    def kubelet_update(n: int) -> None:
        old = tmp_path / os.readlink(tmp_path / "..data")
        new = tmp_path / f"..2026_11_23_06_00_{n:02d}.{n}"
        new.mkdir()
        (new / "prod.set").write_text(f"v{n}")
        os.symlink(new.name, tmp_path / "..data_tmp")
        os.replace(tmp_path / "..data_tmp", tmp_path / "..data")  # the atomic swap
        (old / "prod.set").unlink()
        old.rmdir()

    assert await _first_change(tmp_path, "v1", kubelet_update) in {f"v{n}" for n in range(2, 400)}


async def test_a_write_right_after_the_first_read_is_seen(tmp_path: Path) -> None:
    """A write that lands just after the watcher's first fingerprint read is still reported."""
    _atomic_write(tmp_path / "prod.set", "v1")
    reads = 0

    def read_then_write() -> str | None:
        # Forced interleaving: the store moves on right after the watcher's first read, the
        # moment the watch must already be armed (issue #12: it was not yet, and the write
        # went unseen until some later change).
        nonlocal reads
        reads += 1
        value = _version(tmp_path)
        if reads == 1:
            _atomic_write(tmp_path / "prod.set", "v2")
        return value

    stream = fingerprints(tmp_path, read_then_write, "v1")
    with anyio.fail_after(20):
        assert await stream.__anext__() == "v2"

"""Drain-aware recycling (#19): a worn worker is replaced ready-first and its call finishes."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.cli.run_command import _size

from .conftest import AGENTS, CLI, Launcher, alive

CALLER = AGENTS / "caller.py"
DEADLINE = 60.0


@pytest.mark.parametrize(
    ("text", "size"),
    [("512M", 512 << 20), ("2G", 2 << 30), ("1.5GiB", 3 << 29), ("64mb", 64 << 20), ("4096", 4096)],
)
def test_memory_sizes(text: str, size: int) -> None:
    """--max-worker-memory takes bytes or K/M/G/T (powers of 1024)."""
    assert _size(text) == size


@pytest.fixture
def caller_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "calls"
    directory.mkdir()
    return directory


def _report(directory: Path, name: str) -> dict[str, object]:
    path = directory / name
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        assert time.monotonic() < deadline, f"{name} never appeared"
        time.sleep(0.02)
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


def _recycled_with_its_call_finishing(
    launcher: Launcher, directory: Path, worn: int, reason: str
) -> int:
    """The worn worker is replaced ready-first, drains its call, exits clean; the fresh pid."""
    recycling = launcher.wait_event("worker_recycling", pid=worn)
    assert recycling["reason"] == reason
    ready = launcher.wait_event("worker_ready", slot=0)
    fresh = int(ready["pid"])  # type: ignore[call-overload]
    assert fresh != worn
    stopping = launcher.wait_event("worker_stopping", pid=worn)
    assert launcher.events.index(stopping) > launcher.events.index(ready)  # ready-first
    # Its call goes on after the stop signal: not killed, still serving.
    _report(directory, f"{worn}.json")
    assert alive(worn) and not (directory / f"{worn}.end").exists()
    (directory / f"release-{worn}").touch()  # the call ends
    drained = launcher.wait_event("worker_drained", pid=worn)
    assert drained["reason"] == "clean"
    assert (directory / f"{worn}.end").exists()
    old, new = _report(directory, f"{worn}.json"), _report(directory, f"{fresh}.json")
    assert new["version"] == old["version"]  # the same version, in a fresh process
    return fresh


def test_a_leaking_worker_is_recycled_by_memory_without_dropping_its_call(
    cli: CLI, launch: Callable[..., Launcher], caller_dir: Path
) -> None:
    """Over --max-worker-memory: a fresh worker first, then the leaking one drains its call and exits clean."""
    cli("secrets", "set", "prod", "PROVIDER_API_KEY=k")
    launcher = launch(
        "--secrets", "prod", "--ready", "notify", "--max-worker-memory", "48M", str(CALLER),
        env={"CALLER_DIR": str(caller_dir), "CALLER_NOTIFY": "1"},
    )  # fmt: skip
    worn = int(launcher.wait_event("worker_ready", slot=0)["pid"])  # type: ignore[call-overload]
    (caller_dir / "grow").touch()
    _report(caller_dir, f"{worn}.grown")
    fresh = _recycled_with_its_call_finishing(launcher, caller_dir, worn, "memory")
    status = json.loads(cli("status", "--json").stdout)
    assert [w["pid"] for w in status["workers"]] == [fresh]
    (caller_dir / "release-all").touch()


def test_workers_are_recycled_by_age_and_by_calls(
    cli: CLI, launch: Callable[..., Launcher], caller_dir: Path
) -> None:
    """--max-worker-age and --max-worker-calls replace a worker the same way: ready-first, its call finishing."""
    launcher = launch(
        "--ready", "notify", "--max-worker-age", "2", "--drain-timeout", "60", str(CALLER),
        env={"CALLER_DIR": str(caller_dir), "CALLER_NOTIFY": "1"},
    )  # fmt: skip
    first = int(launcher.wait_event("worker_ready", slot=0)["pid"])  # type: ignore[call-overload]
    _recycled_with_its_call_finishing(launcher, caller_dir, first, "age")
    (caller_dir / "release-all").touch()
    launcher.stop()
    calls = launch(
        "--ready", "notify", "--max-worker-calls", "2", str(CALLER),
        env={"CALLER_DIR": str(caller_dir), "CALLER_NOTIFY": "1"},
    )  # fmt: skip
    (caller_dir / "release-all").unlink()
    worn = int(calls.wait_event("worker_ready", slot=0)["pid"])  # type: ignore[call-overload]
    for name in ("call-1", "call-2"):
        (caller_dir / name).touch()
    _recycled_with_its_call_finishing(calls, caller_dir, worn, "calls")
    (caller_dir / "release-all").touch()

"""Containment: when the launcher dies by any means, every descendant of every worker goes too."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Launcher

FAMILY = Path(__file__).parent / "agents" / "family.py"
DEADLINE = 60.0


def _wait_all_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait (on pidfds, no polling) until every pid has exited; return those still running."""
    fds = {}
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            fds[os.pidfd_open(pid)] = pid
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    left = dict(fds)
    import time

    deadline = time.monotonic() + timeout
    while left and (remaining := deadline - time.monotonic()) > 0:
        for fd, _event in poller.poll(remaining * 1000):
            poller.unregister(fd)
            left.pop(fd, None)
    for fd in fds:
        os.close(fd)
    return sorted(left.values())


@pytest.mark.parametrize("mode", ["auto", "guardian"])
def test_sigkill_of_the_launcher_ends_every_descendant(
    launch: Callable[..., Launcher], probe_dir: Path, mode: str
) -> None:
    """SIGKILL of the launcher: 4 workers' children, grandchildren and daemons all die too."""
    launcher = launch(
        "--workers", "4", "--no-watch", "--ready", "log:family ready", str(FAMILY),
        env={"AGENT_RUN_CONTAINMENT": mode},
    )  # fmt: skip
    family: list[int] = []
    try:
        chosen = launcher.wait_event("containment", timeout=DEADLINE)
        if mode == "guardian":
            assert chosen["mode"] == "guardian"
        else:
            assert chosen["mode"] in ("pid1", "cgroup", "guardian"), chosen
        for _ in range(4):
            launcher.wait_event("worker_ready", timeout=DEADLINE)
        reports = [json.loads(p.read_text()) for p in probe_dir.glob("family-*.json")]
        assert len(reports) == 4
        for report in reports:
            family += [report["worker"], report["child"], *report["others"]]
        launcher.signal(signal.SIGKILL)
        launcher.wait(timeout=DEADLINE)
        assert _wait_all_gone(family, DEADLINE) == []
    finally:
        for pid in family:  # on failure, leave nothing behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

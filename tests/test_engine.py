"""The engine with real workers when events collide (issue #11): each test is one collision.

The planner's rules are model-checked in test_planner.py; these tests show that the engine
applies them to real processes, signals and ports.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import CLI, PROBE, Launcher, alive, read_reports

NOTIFY = {"PROBE_NOTIFY": "1"}


def _free_port_pair() -> int:
    """A port P such that P and P+1 are free on 127.0.0.1 (one slot, two lanes)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return int(port)
    raise AssertionError("no free port pair")


def _events_after(launcher: Launcher, first: str) -> list[str]:
    names = [str(e.get("event")) for e in launcher.events]
    return names[names.index(first) + 1 :]


def test_term_during_a_rollout_drains_everything_once_and_exits(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """TERM mid-rollout: no replacement starts after it, every process gets one TERM, the launcher exits."""
    cli("secrets", "set", "prod", "PROBE_DRAIN=1")
    launcher = launch(
        "--secrets", "prod", "--workers", "3", "--ready", "notify", str(PROBE), env=NOTIFY
    )  # fmt: skip
    for _ in range(3):
        launcher.wait_event("worker_ready", version=1)
    # The new version's workers take a while to be ready: TERM arrives while the first starts.
    cli("secrets", "set", "prod", "PROBE_READY_AFTER=1")
    replacement = int(launcher.wait_event("replacement_started", version=2)["pid"])  # type: ignore[call-overload]
    deadline = time.monotonic() + 30
    while replacement not in read_reports(probe_dir):  # its TERM handler is installed
        assert time.monotonic() < deadline
        time.sleep(0.02)
    launcher.signal(signal.SIGTERM)
    assert launcher.wait(timeout=60) == 0
    after = _events_after(launcher, "signal_received")
    assert "replacement_started" not in after and "worker_restarted" not in after
    reports = read_reports(probe_dir)
    assert len(reports) == 4  # 3 old workers and the one replacement
    for report in reports.values():
        assert len(report["terms"]) == 1, report  # type: ignore[arg-type]
        assert not alive(int(report["pid"]))  # type: ignore[call-overload]
    stopping = [e["pid"] for e in launcher.events if e.get("event") == "worker_stopping"]
    assert sorted(stopping) == sorted(set(stopping))  # one stop per process


def test_a_crash_backoff_never_overwrites_a_rollout(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """A slot crash-looping on v1 is fixed by v2: exactly one v2 worker runs, none restarts beside it."""
    cli("secrets", "set", "prod", "PROBE_MODE=exit:3")
    launcher = launch(
        "--secrets", "prod", "--workers", "1", "--ready", "started", "--ready-delay", "0.2",
        str(PROBE),
    )  # fmt: skip
    loop = launcher.wait_event("worker_crash_loop", timeout=60)
    while float(loop["delay"]) < 1.2:  # type: ignore[arg-type]
        loop = launcher.wait_event("worker_crash_loop", timeout=60)
    # The slot now waits over a second before its next restart; the fix arrives meanwhile.
    cli("secrets", "set", "prod", "PROBE_MODE=serve")
    launcher.wait_event("rollout_succeeded", to_version=2)
    time.sleep(float(loop["delay"]) + 0.5)  # past the old backoff: it must not start anything
    reports = read_reports(probe_dir)
    v2 = [r for r in reports.values() if r["env"]["AGENT_RUN_SECRETS_VERSION"] == "2"]  # type: ignore[index]
    assert len(v2) == 1
    live = [pid for pid in reports if alive(pid)]
    assert live == [v2[0]["pid"]]


def test_tcp_readiness_is_measured_on_the_replacement_not_the_old_worker(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """With --port-base, a replacement gets its own port: the old worker cannot answer its probe."""
    base = _free_port_pair()
    cli("secrets", "set", "prod", "PROBE_LISTEN=1")
    launcher = launch(
        "--secrets", "prod", "--port-base", str(base), "--ready", "tcp:{port}", str(PROBE),
    )  # fmt: skip
    old = int(launcher.wait_event("worker_ready", version=1)["pid"])  # type: ignore[call-overload]
    cli("secrets", "set", "prod", "PROBE_LISTEN=1", "PROBE_READY_AFTER=1")
    new = int(launcher.wait_event("worker_ready", version=2)["pid"])  # type: ignore[call-overload]
    launcher.wait_event("rollout_succeeded", to_version=2)
    launcher.wait_event("worker_drained", pid=old)
    deadline = time.monotonic() + 30
    while "listening" not in read_reports(probe_dir)[new]:  # written just after the bind
        assert time.monotonic() < deadline
        time.sleep(0.01)
    reports = read_reports(probe_dir)
    assert reports[old]["env"]["AGENT_RUN_PORT"] == str(base)  # type: ignore[index]
    assert reports[new]["env"]["AGENT_RUN_PORT"] == str(base + 1)  # type: ignore[index]
    # The old worker was stopped only after the replacement itself listened.
    assert reports[old]["terms"][0] >= reports[new]["listening"]  # type: ignore[index, operator]


def test_a_worker_saying_stopping_is_replaced_while_it_drains(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """STOPPING=1 from a worker: its slot gets a new worker while it drains; it is not signalled."""
    launcher = launch(
        "--ready", "notify", str(PROBE), env={**NOTIFY, "PROBE_STOPPING": "1"}
    )  # fmt: skip
    first = int(launcher.wait_event("worker_stopping_itself")["pid"])  # type: ignore[call-overload]
    second = int(launcher.wait_event("worker_restarted", restarts=1)["pid"])  # type: ignore[call-overload]
    assert second != first
    assert alive(first)
    assert read_reports(probe_dir)[first]["terms"] == []


def test_status_shows_the_worker_status_line_and_each_draining_worker_once(
    cli: CLI, launch: Callable[..., Launcher]
) -> None:
    """`agent-run status --json`: the agent's STATUS= text, and a draining worker listed once."""
    cli("secrets", "set", "prod", "PROBE_DRAIN=30")
    launcher = launch("--secrets", "prod", "--ready", "notify", str(PROBE), env=NOTIFY)
    pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
    status = json.loads(cli("status", "--json").stdout)
    assert status["workers"][0]["status_text"] == "probe up"
    launcher.signal(signal.SIGTERM)
    launcher.wait_event("worker_stopping", pid=pid)
    status = json.loads(cli("status", "--json").stdout)
    listed = [w["pid"] for w in status["workers"] + status["draining"]]
    assert listed.count(pid) == 1
    # A reload asked during shutdown gets an answer, not a hang.
    reload = cli("reload", timeout=30)
    assert reload.returncode == 1
    assert "shutting down" in reload.stderr

"""Unmodified livekit-agents workers under agent-run, against a stand-in LiveKit server.

The workers are the real package (`livekit-agents`, from the test extras) run as `python
agent.py start`; the server (tests/livekit_server.py) verifies their JWT with the platform
secret, registers them, offers and assigns jobs, and records how many workers were registered
and available (not draining) at every moment.
"""

from __future__ import annotations

import base64
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import AGENTS, CLI, SAMPLE_AGENTS, Launcher
from .livekit_server import StandInServer

pytest.importorskip("livekit.agents")
# Each worker imports livekit-agents and pre-warms its job processes: seconds of CPU each,
# much more beside CPU hogs. Deadlines are generous; nothing here is timed.
pytestmark = pytest.mark.timeout(600)

SAMPLE = SAMPLE_AGENTS / "livekit_agent.py"  # a default AgentServer()
CALLS = AGENTS / "livekit_calls.py"  # the sample, taking jobs whatever the CPU load
PINNED = AGENTS / "livekit_pinned_port.py"
READY = ("--ready", "log:registered worker", "--ready-timeout", "300")  # generous: CPU hogs
JS_SUCCESS = 2  # livekit.protocol.agent.JobStatus


@pytest.fixture
def livekit(cli: CLI) -> Iterator[StandInServer]:
    """A stand-in LiveKit server whose credentials agent-run holds as platform credentials."""
    key = "API" + secrets.token_hex(4)
    secret = base64.b64encode(os.urandom(24)).decode()
    with StandInServer(key, secret) as server:
        done = cli(
            "platform", "set", "livekit", f"LIVEKIT_URL={server.url}", f"LIVEKIT_API_KEY={key}",
            "--stdin", "LIVEKIT_API_SECRET", input=secret,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        yield server


def _health_ports(launcher: Launcher) -> list[int]:
    """The ports the workers' own HTTP servers said they listen on, in order."""
    marker = "HTTP server listening on "
    ports = []
    for line in launcher.output().splitlines():
        if marker in line:
            ports.append(int(line.split(marker, 1)[1].split('"', 1)[0].rsplit(":", 1)[1]))
    return ports


def _free_port_base(count: int) -> int:
    """A base port with `count` free ports from it (checked by binding each)."""
    import socket

    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count >= 65536:
            continue
        try:
            for port in range(base, base + count):
                with socket.socket() as taken:
                    taken.bind(("0.0.0.0", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free port range")


def _roll(
    cli: CLI,
    launch: Callable[..., Launcher],
    livekit: StandInServer,
    workers: int,
    agent: Path,
    *options: str,
) -> tuple[Launcher, float]:
    """A pool of `workers` registered, then a new secrets version rolled out through it: the
    launcher and when the update was made (the start of the no-gap window)."""
    cli("secrets", "set", "demo", "DEMO_API_KEY=first-value")
    launcher = launch(
        "--secrets", "demo", "--workers", str(workers), *options, *READY, str(agent), "start"
    )  # fmt: skip
    livekit.wait_available(workers, timeout=300)
    for _ in range(workers):
        launcher.wait_event("worker_ready", timeout=300)
    updated = time.monotonic()
    cli("secrets", "set", "demo", "DEMO_API_KEY=second-value")
    launcher.wait_event("rollout_succeeded", timeout=120 * workers, to_version=2)
    return launcher, updated


def _wait_old_workers_gone(launcher: Launcher, workers: int) -> None:
    for _ in range(workers):
        launcher.wait_event("worker_drained", timeout=120)


def test_default_agent_server_pool_of_two_registers_and_rolls_without_a_gap(
    cli: CLI, launch: Callable[..., Launcher], livekit: StandInServer
) -> None:
    """Two default AgentServer() workers with --port-base B both register (no 8081 clash) on B and B+1, and roll with never fewer than 2 available, each replacement on a port of its own (B+2, B+3)."""
    base = _free_port_base(4)
    launcher, updated = _roll(cli, launch, livekit, 2, SAMPLE, "--port-base", str(base))
    _wait_old_workers_gone(launcher, 2)
    assert livekit.min_available(updated, time.monotonic()) >= 2
    assert len(livekit.available()) == 2
    ports = _health_ports(launcher)
    assert sorted(ports[:2]) == [base, base + 1]
    assert sorted(ports[2:]) == [base + 2, base + 3]
    assert "address already in use" not in launcher.output()
    assert not [e for e in launcher.events if e.get("event") == "port_in_use"]


@pytest.mark.slow
def test_default_agent_server_pool_of_four_rolls_without_a_gap(
    cli: CLI, launch: Callable[..., Launcher], livekit: StandInServer
) -> None:
    """Four default AgentServer() workers (no --port-base: a free health port each) roll with never fewer than 4 available at the server."""
    launcher, updated = _roll(cli, launch, livekit, 4, SAMPLE)
    _wait_old_workers_gone(launcher, 4)
    assert livekit.min_available(updated, time.monotonic()) >= 4
    assert len(livekit.available()) == 4
    ports = _health_ports(launcher)
    assert len(ports) == 8 and len(set(ports)) == 8 and 8081 not in ports


def test_rollout_during_a_live_call(
    cli: CLI, launch: Callable[..., Launcher], livekit: StandInServer
) -> None:
    """With --workers 1 the call in progress finishes on the draining worker; the next call lands on the new one with the new secret; never 0 available."""
    cli("secrets", "set", "demo", "DEMO_API_KEY=first-value")
    launcher = launch("--secrets", "demo", *READY, str(CALLS), "start")
    (first_worker,) = livekit.wait_available(1, timeout=300)
    call = livekit.dispatch()
    report = livekit.wait_report(call)
    assert report["secrets_version"] == "1"
    updated = time.monotonic()
    cli("secrets", "set", "demo", "DEMO_API_KEY=second-value")
    launcher.wait_event("rollout_succeeded", timeout=300, to_version=2)
    stopping = launcher.wait_event("worker_stopping", timeout=120, version=1)
    # The old worker drains while its call goes on: it is alive and takes no new job.
    livekit.wait_until(lambda: first_worker.draining, 120, "drain of the old worker")
    assert first_worker.connected
    livekit.end_call(call)
    livekit.wait_job_status(call, JS_SUCCESS)
    drained = launcher.wait_event("worker_drained", timeout=120, pid=stopping["pid"])
    assert drained["code"] == 0
    later = livekit.dispatch()
    assert later.worker_id != first_worker.id
    later_report = livekit.wait_report(later)
    assert later_report["secrets_version"] == "2"
    assert later_report["demo_api_key_sha256"] != report["demo_api_key_sha256"]
    livekit.end_call(later)
    assert livekit.min_available(updated, time.monotonic()) >= 1


def test_term_with_a_call_running_drains_it_and_leaves_nothing(
    cli: CLI, launch: Callable[..., Launcher], livekit: StandInServer
) -> None:
    """TERM to agent-run: the worker stops taking jobs, finishes its call, exits 0, and no process is left."""
    cli("secrets", "set", "demo", "DEMO_API_KEY=first-value")
    launcher = launch("--secrets", "demo", *READY, str(CALLS), "start")
    (worker,) = livekit.wait_available(1, timeout=300)
    call = livekit.dispatch()
    job_pid = int(livekit.wait_report(call)["pid"])
    launcher.signal(signal.SIGTERM)
    livekit.wait_until(lambda: worker.draining, 120, "drain after TERM")
    assert launcher.proc.poll() is None  # still draining: the call is running
    livekit.end_call(call)
    livekit.wait_job_status(call, JS_SUCCESS)
    assert launcher.wait(timeout=120) == 0
    with pytest.raises(ProcessLookupError):
        os.kill(job_pid, 0)


def test_wrong_credential_aborts_and_keeps_the_old_worker(
    cli: CLI, launch: Callable[..., Launcher], livekit: StandInServer
) -> None:
    """A wrong LIVEKIT_API_SECRET aborts the rollout: old worker kept, never stopped; the report names the cause and shows the replacement's last lines, masked."""
    cli("secrets", "set", "demo", "DEMO_API_KEY=first-value")
    launcher = launch(
        "--secrets", "demo", "--ready", "log:registered worker", str(SAMPLE), "start"
    )  # fmt: skip
    (old,) = livekit.wait_available(1, timeout=300)
    old_pid = launcher.wait_event("worker_ready", timeout=300)["pid"]
    wrong = "wrong-" + secrets.token_hex(12)
    done = cli("platform", "set", "livekit", "--stdin", "LIVEKIT_API_SECRET", input=wrong)
    assert done.returncode == 0, done.stderr
    aborted = launcher.wait_event("rollout_aborted", timeout=300)
    assert "did not become ready within --ready-timeout 60s" in str(aborted["reason"])
    assert aborted["serving_version"] == 1 and aborted["replacement_pid"] != old_pid
    assert any("failed to connect to livekit" in line for line in aborted["last_lines"])  # type: ignore[union-attr]
    assert livekit.rejected_tokens >= 1
    assert old.connected and not old.draining and livekit.available() == [old]
    assert not [
        e
        for e in launcher.events
        if e.get("event") == "worker_stopping" and e.get("pid") == old_pid
    ]
    status = cli("status")
    assert status.returncode == 0
    assert "aborted" in status.stdout and "last lines of the failed replacement" in status.stdout
    assert wrong not in launcher.output() and wrong not in status.stdout


def test_pinned_port_collision_names_the_port_the_holder_and_the_fix(
    cli: CLI, launch: Callable[..., Launcher], livekit: StandInServer
) -> None:
    """A worker whose code pins its port: the second of a pool fails, and agent-run logs the port, the worker holding it, and the fix."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # LiveKit exits 0 after a failed bind: with on-failure the slot is not restarted, so the
    # second worker fails once (a restart would only fail the same way).
    launcher = launch(
        "--workers", "2", "--restart", "on-failure", *READY, str(PINNED), "start",
        env={"PINNED_PORT": str(port)},
    )  # fmt: skip
    collision = launcher.wait_event("port_in_use", timeout=300)
    assert collision["port"] == port
    ready = launcher.wait_event("worker_ready", timeout=300)
    held_by = str(collision["held_by"])
    assert f"pid {ready['pid']} " in held_by and f"slot {ready['slot']}" in held_by
    assert 'port=int(os.environ["AGENT_RUN_PORT"])' in str(collision["fix"])
    assert "port=0" in str(collision["fix"])

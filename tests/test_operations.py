"""Operations with a real launcher: PID 1, systemd notify, health, status, watchdog (SPEC §6)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import CLI, PROBE, Launcher

ROOT = Path(__file__).parent.parent
AGENT_RUN = str(Path(sys.executable).parent / "agent-run")


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--pid", "--fork", "--mount-proc", "true"], capture_output=True
    )
    return probe.returncode == 0


needs_unshare = pytest.mark.skipif(
    not _unshare_works(), reason="unshare --pid needs root / user namespaces"
)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def _zombies_of(pid: int) -> list[int]:
    found = []
    for child in _children(pid):
        try:
            state = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            continue
        if state == "Z":
            found.append(child)
    return found


def _wait_for(predicate: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@needs_unshare
def test_dockerfile_entrypoint_as_pid1_handles_term(cli_env: dict[str, str]) -> None:
    """The image's ENTRYPOINT + CMD, run as PID 1 of a new PID namespace, drains on TERM, exits 0."""
    text = (ROOT / "Dockerfile").read_text()
    entrypoint = json.loads(text.split("ENTRYPOINT ", 1)[1].splitlines()[0])
    cmd = json.loads(text.split("\nCMD ", 1)[1].splitlines()[0])
    assert entrypoint == ["agent-run"]
    argv = ["unshare", "--pid", "--fork", "--mount-proc", AGENT_RUN, *cmd]
    env = {**cli_env, "AGENT_RUN_LOG_FORMAT": "json", "AGENT_RUN_HEALTH": "127.0.0.1:0"}
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert "worker 0" in proc.stdout.readline()  # the sample agent is up
    (launcher,) = _children(proc.pid)
    assert Path(f"/proc/{launcher}/status").read_text().count("NSpid:") == 1
    nspid = [
        line
        for line in Path(f"/proc/{launcher}/status").read_text().splitlines()
        if line.startswith("NSpid:")
    ]
    assert nspid[0].split()[-1] == "1"  # it really is PID 1 in its namespace
    os.kill(launcher, signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "worker 0 stopping" in out


@needs_unshare
def test_pid1_reaps_orphans_and_keeps_worker_status(
    cli_env: dict[str, str], probe_dir: Path
) -> None:
    """As PID 1 the launcher reaps orphaned grandchildren; its worker's exit code still comes through."""
    env = {
        **cli_env,
        "PROBE_DIR": str(probe_dir),
        "PROBE_ORPHAN": "1",
        "AGENT_RUN_LOG_FORMAT": "json",
    }
    argv = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        AGENT_RUN,
        "--restart",
        "never",
        "--ready-delay",
        "0.1",
        sys.executable,
        str(PROBE),
    ]
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    assert "up" in proc.stdout.readline()
    (launcher,) = _children(proc.pid)
    _wait_for(
        lambda: len(_children(launcher)) == 1
    )  # only the worker is left: the orphan was reaped
    assert _zombies_of(launcher) == []
    (worker,) = _children(launcher)
    os.kill(worker, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGKILL


@pytest.fixture
def notify_listener(tmp_path: Path) -> Iterator[socket.socket]:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "systemd-notify.sock"))
        sock.settimeout(30)
        yield sock


def _receive_until(sock: socket.socket, wanted: str) -> list[str]:
    seen = []
    while True:
        message = sock.recv(4096).decode()
        seen.append(message)
        if wanted in message.splitlines():
            return seen


def test_systemd_notifications(
    launch: Callable[..., Launcher], tmp_path: Path, notify_listener: socket.socket
) -> None:
    """Under systemd: READY=1 once ready, RELOADING=1/READY=1 around a rollout, watchdog, STOPPING=1."""
    listener = notify_listener
    launcher = launch(
        "--workers", "2", "--ready", "notify", str(PROBE),
        env={"PROBE_NOTIFY": "1", "NOTIFY_SOCKET": str(tmp_path / "systemd-notify.sock"), "WATCHDOG_USEC": "200000"},
    )  # fmt: skip
    before_ready = _receive_until(listener, "READY=1")
    assert any(
        line.startswith("STATUS=2/2 workers ready") for m in before_ready for line in m.splitlines()
    )
    _receive_until(listener, "WATCHDOG=1")
    launcher.signal(signal.SIGHUP)
    reloading = _receive_until(listener, "RELOADING=1")
    assert any("MONOTONIC_USEC=" in m for m in reloading)
    _receive_until(listener, "READY=1")
    launcher.signal(signal.SIGTERM)
    _receive_until(listener, "STOPPING=1")
    assert launcher.wait() == 0


def test_workers_get_their_own_notify_socket_not_systemds(
    launch: Callable[..., Launcher], tmp_path: Path, notify_listener: socket.socket
) -> None:
    """A worker's READY=1 goes to agent-run, never to systemd's socket."""
    listener = notify_listener
    launch(
        "--ready",
        "notify",
        str(PROBE),
        env={"PROBE_NOTIFY": "1", "NOTIFY_SOCKET": str(tmp_path / "systemd-notify.sock")},
    )
    messages = _receive_until(listener, "READY=1")
    assert not any("STATUS=probe up" in m for m in messages)  # the probe's own status line


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_health_endpoints_of_a_running_launcher(cli: CLI, launch: Callable[..., Launcher]) -> None:
    """--health serves /readyz (200 once ready), /healthz and /metrics from the live pool."""
    cli("secrets", "set", "prod", "A=1")
    launcher = launch(
        "--secrets",
        "prod",
        "--workers",
        "2",
        "--ready",
        "notify",
        "--health",
        "127.0.0.1:0",
        str(PROBE),
        env={"PROBE_NOTIFY": "1"},
    )
    address = launcher.wait_event("health_listening")["address"]
    launcher.wait_event("worker_ready")
    launcher.wait_event("worker_ready")
    _wait_for(lambda: _get(f"http://{address}/readyz")[0] == 200)
    _, body = _get(f"http://{address}/readyz")
    assert json.loads(body)["ready_on_current"] == 2
    assert _get(f"http://{address}/healthz")[0] == 200
    _, metrics = _get(f"http://{address}/metrics")
    assert 'agent_run_workers{state="ready"} 2.0' in metrics
    assert "agent_run_secrets_version 1.0" in metrics


def test_status_command_and_control_socket(
    cli: CLI, launch: Callable[..., Launcher], store_dir: Path
) -> None:
    """`agent-run status` shows each worker; the 0600 control socket is removed on exit."""
    cli("secrets", "set", "prod", "A=1")
    launcher = launch(
        "--secrets",
        "prod",
        "--workers",
        "2",
        "--ready",
        "notify",
        str(PROBE),
        env={"PROBE_NOTIFY": "1"},
    )
    pids = {launcher.wait_event("worker_ready")["pid"], launcher.wait_event("worker_ready")["pid"]}
    _wait_for(lambda: (store_dir / "run" / "prod.sock").exists())
    sock = store_dir / "run" / "prod.sock"
    assert stat.S_IMODE(sock.stat().st_mode) == 0o600
    text = cli("status").stdout
    assert "prod: launcher pid" in text and "2/2 ready on current version" in text
    data = json.loads(cli("status", "--json", "--name", "prod").stdout)
    assert {w["pid"] for w in data["workers"]} == pids
    assert {w["state"] for w in data["workers"]} == {"ready"}
    launcher.signal(signal.SIGTERM)
    launcher.wait()
    assert not sock.exists()
    gone = cli("status", "--name", "prod")
    assert gone.returncode == 78


def test_watchdog_restarts_a_silent_worker(launch: Callable[..., Launcher]) -> None:
    """With --watchdog, a notify worker that stops pinging WATCHDOG=1 is killed and restarted."""
    launcher = launch(
        "--ready", "notify", "--watchdog", "0.5", str(PROBE), env={"PROBE_NOTIFY": "1"}
    )
    first = launcher.wait_event("worker_ready")["pid"]
    launcher.wait_event("worker_watchdog_expired", pid=first)
    second = launcher.wait_event("worker_restarted")["pid"]
    assert second != first


def test_watchdog_keeps_a_pinging_worker(launch: Callable[..., Launcher]) -> None:
    """A worker that pings often enough is left alone."""
    launcher = launch(
        "--ready",
        "notify",
        "--watchdog",
        "0.6",
        str(PROBE),
        env={"PROBE_NOTIFY": "1", "PROBE_WATCHDOG": "0.6"},
    )
    launcher.wait_event("worker_ready")
    time.sleep(2)  # several watchdog periods: long enough for a wrong restart to show
    assert not [e for e in launcher.events if e.get("event") == "worker_watchdog_expired"]

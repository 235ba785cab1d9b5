"""Session mode with real processes and real HTTP (SPEC §5)."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.config import Target, TargetKind
from launcher.errors import UsageError
from launcher.sessions import find_entrypoint

from .conftest import AGENTS, CLI, PROBE, Launcher

SESSION_PROBE = AGENTS / "session_probe.py"


def _request(
    method: str, url: str, body: bytes | None = None
) -> tuple[int, dict[str, str], object]:
    request = urllib.request.Request(url, data=body, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), json.loads(error.read())


def _serve(
    launch: Callable[..., Launcher], *args: str, env: dict[str, str] | None = None
) -> tuple[Launcher, str]:
    launcher = launch("--listen", "127.0.0.1:0", *args, env=env)
    address = launcher.wait_event("sessions_listening")["address"]
    return launcher, f"http://{address}"


def _report(probe_dir: Path, session_id: str, timeout: float = 30) -> dict[str, object]:
    path = probe_dir / f"{session_id}.json"
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"session {session_id} never ran"
        time.sleep(0.01)
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _wait_state(
    base: str, session_id: str, states: set[str], timeout: float = 30
) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        _, _, data = _request("GET", f"{base}/sessions/{session_id}")
        assert isinstance(data, dict)
        if data["state"] in states:
            return data
        assert time.monotonic() < deadline, data
        time.sleep(0.02)


def test_detection_reads_the_source_without_running_it(tmp_path: Path) -> None:
    """A script defining bot() is a session agent; detection does not execute the module."""
    marker = tmp_path / "ran"
    script = tmp_path / "agent.py"
    script.write_text(f"open({str(marker)!r}, 'w').close()\n\nasync def bot(args):\n    pass\n")
    target = Target(TargetKind.SCRIPT, str(script))
    assert find_entrypoint(target, None) == ("script", str(script), "bot")
    assert not marker.exists()
    plain = tmp_path / "worker.py"
    plain.write_text("def main():\n    pass\n")
    assert find_entrypoint(Target(TargetKind.SCRIPT, str(plain)), None) is None
    assert find_entrypoint(Target(TargetKind.SCRIPT, str(plain)), ":main") == (
        "script",
        str(plain),
        "main",
    )
    assert find_entrypoint(Target(TargetKind.COMMAND, "node"), "pkg.mod:run") == (
        "module",
        "pkg.mod",
        "run",
    )
    with pytest.raises(UsageError):
        find_entrypoint(target, "no-colon")


def test_session_lifecycle(cli: CLI, launch: Callable[..., Launcher], probe_dir: Path) -> None:
    """POST starts bot() in a warm process with session_id and body; it exits when done."""
    cli("secrets", "set", "prod", "VALUE=one")
    _launcher, base = _serve(launch, "--secrets", "prod", "--idle", "2", str(SESSION_PROBE))
    code, _, created = _request("POST", f"{base}/sessions", b'{"room": "r1"}')
    assert code == 201 and isinstance(created, dict)
    assert created["secrets_version"] == 1
    report = _report(probe_dir, str(created["id"]))
    assert report["body"] == {"room": "r1"} and report["value"] == "one"
    assert report["pid"] == created["pid"]
    ended = _wait_state(base, str(created["id"]), {"ended"})
    assert ended["exit_code"] == 0
    code, _, listing = _request("GET", f"{base}/sessions")
    assert code == 200 and [s["id"] for s in listing] == [created["id"]]  # type: ignore[union-attr]
    assert _request("GET", f"{base}/sessions/nope")[0] == 404
    # One process per session: the module was imported by each process once, never reused.
    imports = (probe_dir / "imports").read_text().split()
    assert len(imports) == len(set(imports))


def test_failures_and_bad_requests(launch: Callable[..., Launcher], probe_dir: Path) -> None:
    """Invalid JSON is a 400 with a message; a raising bot() ends its session as failed."""
    launcher, base = _serve(launch, str(SESSION_PROBE))
    code, _, error = _request("POST", f"{base}/sessions", b"{not json")
    assert code == 400 and "not valid JSON" in str(error)
    code, _, created = _request("POST", f"{base}/sessions", b'{"fail": true}')
    assert code == 201 and isinstance(created, dict)
    failed = _wait_state(base, str(created["id"]), {"failed", "ended"})
    assert (failed["state"], failed["exit_code"]) == ("failed", 1)
    assert "the bot failed on purpose" in launcher.output()


def test_capacity_answers_429_with_retry_after(
    launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """At --max-sessions, a new session gets 429 and Retry-After, as Pipecat Cloud does."""
    _launcher, base = _serve(launch, "--max-sessions", "1", str(SESSION_PROBE))
    code, _, first = _request("POST", f"{base}/sessions", b'{"seconds": 30}')
    assert code == 201
    code, headers, _ = _request("POST", f"{base}/sessions", b"{}")
    assert code == 429 and {k.lower(): v for k, v in headers.items()}.get("retry-after") == "1"
    assert isinstance(first, dict)
    code, _, _ = _request("DELETE", f"{base}/sessions/{first['id']}")
    assert code == 202
    _wait_state(base, str(first["id"]), {"ended", "failed"})
    assert _request("POST", f"{base}/sessions", b"{}")[0] == 201


def test_read_after_write(cli: CLI, launch: Callable[..., Launcher], probe_dir: Path) -> None:
    """50 rounds of `secrets set` then an immediate POST: every session sees the new value."""
    cli("secrets", "set", "prod", "VALUE=v0")
    _launcher, base = _serve(launch, "--secrets", "prod", "--idle", "2", str(SESSION_PROBE))
    for round_ in range(1, 51):
        assert cli("secrets", "set", "prod", f"VALUE=v{round_}").returncode == 0
        code, _, created = _request("POST", f"{base}/sessions", b"{}")
        assert code == 201 and isinstance(created, dict)
        report = _report(probe_dir, str(created["id"]))
        assert report["value"] == f"v{round_}", f"round {round_}: stale session"


def test_term_drains_sessions_and_leaves_no_process(
    launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """TERM: new sessions get 503, running ones finish, then nothing is left running."""
    launcher, base = _serve(launch, "--idle", "2", str(SESSION_PROBE))
    code, _, running = _request("POST", f"{base}/sessions", b'{"seconds": 1.5}')
    assert code == 201 and isinstance(running, dict)
    _report(probe_dir, str(running["id"]))
    imports_before = (probe_dir / "imports").read_text().split()
    launcher.signal(signal.SIGTERM)
    launcher.wait_event("sessions_draining")
    assert _request("POST", f"{base}/sessions", b"{}")[0] == 503
    assert launcher.wait() == 0
    for pid in {int(p) for p in imports_before} | {int(running["pid"])}:  # type: ignore[call-overload]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert any(e.get("event") == "session_ended" and e.get("code") == 0 for e in launcher.events)


def test_entrypoint_option_selects_another_function(
    launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """--entrypoint :other runs that function (sync) instead of bot()."""
    _launcher, base = _serve(launch, "--entrypoint", ":other", str(SESSION_PROBE))
    code, _, created = _request("POST", f"{base}/sessions", b"{}")
    assert code == 201 and isinstance(created, dict)
    assert _report(probe_dir, str(created["id"]))["entry"] == "other"


def test_plain_script_keeps_worker_mode(launch: Callable[..., Launcher]) -> None:
    """A target without bot() runs as a worker pool, not in session mode."""
    launcher = launch("--ready-delay", "0.1", str(PROBE))
    launcher.wait_event("worker_ready")
    assert not [e for e in launcher.events if e.get("event") == "sessions_listening"]


def test_sessions_cli(cli: CLI, launch: Callable[..., Launcher], probe_dir: Path) -> None:
    """`agent-run sessions start|list|show|stop` drive the session API."""
    _launcher, base = _serve(launch, str(SESSION_PROBE))
    listen = base.removeprefix("http://")
    started = cli("sessions", "start", '{"seconds": 30}', "--listen", listen)
    assert started.returncode == 0, started.stderr
    session_id = json.loads(started.stdout)["id"]
    listing = cli("sessions", "--listen", listen)
    assert session_id in listing.stdout and "running" in listing.stdout
    assert (
        json.loads(cli("sessions", "show", session_id, "--listen", listen).stdout)["id"]
        == session_id
    )
    assert cli("sessions", "stop", session_id, "--listen", listen).returncode == 0
    _wait_state(base, session_id, {"ended", "failed"})
    missing = cli("sessions", "show", "nope", "--listen", listen)
    assert missing.returncode == 1 and "404" in missing.stderr
    nobody = cli("sessions", "--listen", "127.0.0.1:1")
    assert nobody.returncode == 78


def test_health_and_metrics_in_session_mode(
    launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """--health in session mode: /readyz while accepting, session counters and start latency."""
    launcher = launch(
        "--listen", "127.0.0.1:0", "--health", "127.0.0.1:0", "--drain-timeout", "0.5", str(SESSION_PROBE)
    )  # fmt: skip
    api = launcher.wait_event("sessions_listening")["address"]
    health = launcher.wait_event("health_listening")["address"]
    for _ in range(3):
        code, _, _created = _request("POST", f"http://{api}/sessions", b'{"seconds": 5}')
        assert code == 201
    ready = urllib.request.urlopen(f"http://{health}/readyz", timeout=10)
    assert ready.status == 200
    ready.close()
    with urllib.request.urlopen(f"http://{health}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert "agent_run_sessions_total 3.0" in metrics
    assert "agent_run_sessions_active 3.0" in metrics
    assert "agent_run_session_start_seconds_count 3.0" in metrics


def test_update_while_processes_are_warming(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """Updates that retire processes still importing the agent neither crash nor serve stale."""
    cli("secrets", "set", "prod", "VALUE=v0")
    _launcher, base = _serve(
        launch,
        "--secrets",
        "prod",
        "--idle",
        "2",
        str(SESSION_PROBE),
        env={"PROBE_IMPORT_SECONDS": "0.3"},
    )
    for round_ in range(1, 6):
        cli("secrets", "set", "prod", f"VALUE=v{round_}")  # retires the processes now warming
        code, _, created = _request("POST", f"{base}/sessions", b"{}")
        assert code == 201 and isinstance(created, dict), created
        assert _report(probe_dir, str(created["id"]))["value"] == f"v{round_}"

"""Session mode end to end: a real launcher, real session processes, real HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CLI, Launcher

AGENT = Path(__file__).parent / "agents" / "session_agent.py"
DEADLINE = 30.0


def running(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


class Server:
    """A launcher in session mode and an HTTP client for its API."""

    def __init__(self, launcher: Launcher, directory: Path) -> None:
        self.launcher = launcher
        self.dir = directory
        event = launcher.wait_event("sessions_listening")
        self.url = f"http://{event['address']}"
        self.http = httpx.Client(base_url=self.url, timeout=DEADLINE)

    def post(self, body: Any = None, content: bytes | None = None) -> httpx.Response:
        if content is not None:
            return self.http.post(
                "/sessions", content=content, headers={"Content-Type": "application/json"}
            )
        return self.http.post("/sessions", json=body if body is not None else {})

    def started(self, body: Any = None) -> dict[str, Any]:
        """POST /sessions that must answer 201; a failure shows the status and the answer."""
        response = self.post(body)
        assert response.status_code == 201, f"{response.status_code} {response.text}"
        answer = response.json()
        assert isinstance(answer, dict)
        return answer

    def file(self, name: str) -> dict[str, Any]:
        path = self.dir / name
        deadline = time.monotonic() + DEADLINE
        while not path.exists():
            assert time.monotonic() < deadline, f"{name} never appeared"
            time.sleep(0.005)
        data = json.loads(path.read_text())
        assert isinstance(data, dict)
        return data

    def imported(self, count: int) -> list[int]:
        """Pids of processes that imported the agent, once at least `count` have."""
        deadline = time.monotonic() + DEADLINE
        while len(pids := self._pids("import-")) < count:
            assert time.monotonic() < deadline, f"only {len(pids)} imports, wanted {count}"
            time.sleep(0.01)
        return pids

    def _pids(self, prefix: str) -> list[int]:
        # Not the agent's `<name>.tmp`, which it renames into place once written.
        names = (p.name[len(prefix) :] for p in self.dir.glob(prefix + "*"))
        return sorted(int(name) for name in names if name.isdigit())

    def session_pids(self) -> list[int]:
        pids = [int(json.loads(p.read_text())["pid"]) for p in self.dir.glob("*.json")]
        children = [
            int(c) for p in self.dir.glob("*.json") if (c := json.loads(p.read_text()).get("child"))
        ]
        return pids + children


@pytest.fixture
def serve(
    launch: Callable[..., Launcher], cli: CLI, tmp_path: Path
) -> Iterator[Callable[..., Server]]:
    """Start `agent-run --secrets demo --listen 127.0.0.1:0 ARGS session_agent.py`."""
    directory = tmp_path / "sessions"
    directory.mkdir()
    assert cli("secrets", "set", "demo", "DEMO_API_KEY=value-1").returncode == 0
    servers: list[Server] = []

    def start(
        *args: str,
        target: str = str(AGENT),
        env: dict[str, str] | None = None,
        watch: bool = False,
    ) -> Server:
        # The store watch is off unless a test is about it: read-after-write must hold
        # without it, and stopping a watching launcher waits on watchfiles' thread.
        launcher = launch(
            "--secrets",
            "demo",
            "--listen",
            "127.0.0.1:0",
            *(() if watch else ("--no-watch",)),
            *args,
            target,
            env={"SESSION_DIR": str(directory), **(env or {})},
        )
        server = Server(launcher, directory)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.http.close()


def test_warm_processes_serve_one_session_each(serve: Callable[..., Server]) -> None:
    """--idle processes import the agent before any session; each session takes one, which exits after."""
    server = serve("--idle", "2")
    warm = server.imported(2)
    first = server.post({"room": "a"})
    assert first.status_code == 201, first.text
    answer = first.json()
    assert answer["pid"] in warm and answer["warm"] is True
    # A zero-second session may have ended before its start is answered.
    assert answer["secrets_version"] == 1 and answer["state"] in ("running", "ended")
    report = server.file(f"{answer['id']}.json")
    assert report["body"] == {"room": "a"} and report["pid"] == answer["pid"]
    assert report["key_sha256"] == sha("value-1")
    ended = server.launcher.wait_event("session_ended", session=answer["id"])
    assert ended["code"] == 0 and ended["outcome"] == "ended"
    assert server.http.get(f"/sessions/{answer['id']}").json()["exit_code"] == 0
    assert not running(answer["pid"])
    second = server.post({"room": "b"}).json()
    assert second["pid"] != answer["pid"]  # one process per session
    pids = server.imported(3)  # the pool refilled as sessions took processes
    assert server.launcher.proc.pid not in pids  # detection never imported the agent
    listed = [s["id"] for s in server.http.get("/sessions").json()["sessions"]]
    assert listed == [answer["id"], second["id"]]


def test_api_errors(serve: Callable[..., Server]) -> None:
    """Invalid JSON is a 400 that says why; an unknown session is a 404."""
    server = serve("--idle", "1")
    bad = server.post(content=b'{"room": ')
    assert bad.status_code == 400
    assert "not valid JSON" in bad.json()["error"] and "column" in bad.json()["error"]
    assert server.http.get("/sessions/nope").status_code == 404
    assert server.http.delete("/sessions/nope").status_code == 404
    empty = server.post(content=b"")
    assert empty.status_code == 201 and server.file(f"{empty.json()['id']}.json")["body"] == {}


def test_max_sessions_and_delete(serve: Callable[..., Server]) -> None:
    """At --max-sessions a start gets 429 with Retry-After; DELETE stops a session and frees its place."""
    server = serve("--idle", "1", "--max-sessions", "1")
    first = server.post({"seconds": 600}).json()
    full = server.post({})
    assert full.status_code == 429 and full.headers["Retry-After"] == "1"
    assert "max-sessions" in full.json()["error"]
    server.file(f"{first['id']}.json")
    stopping = server.http.delete(f"/sessions/{first['id']}")
    assert stopping.status_code == 202 and stopping.json()["state"] == "stopping"
    ended = server.launcher.wait_event("session_ended", session=first["id"])
    assert ended["outcome"] == "stopped"
    assert server.file(f"{first['id']}.end") == {"outcome": "cancelled"}
    assert server.http.get(f"/sessions/{first['id']}").json()["state"] == "stopped"
    assert server.post({}).status_code == 201


def test_failed_session_is_reported(serve: Callable[..., Server]) -> None:
    """A session whose entrypoint raises ends `failed` with exit code 1."""
    server = serve("--idle", "1")
    answer = server.post({"fail": True}).json()
    ended = server.launcher.wait_event("session_ended", session=answer["id"])
    assert ended["outcome"] == "failed" and ended["code"] == 1
    assert server.http.get(f"/sessions/{answer['id']}").json()["state"] == "failed"


def test_sync_entrypoint_option(serve: Callable[..., Server]) -> None:
    """--entrypoint selects another function, here a plain def."""
    server = serve("--idle", "1", "--entrypoint", "sync_bot")
    answer = server.post({"x": 1}).json()
    assert server.file(f"{answer['id']}.json")["kind"] == "sync"


def test_secret_values_are_masked(serve: Callable[..., Server]) -> None:
    """A session printing its secret reaches the launcher's output as ***."""
    server = serve("--idle", "1")
    answer = server.post({"print_secret": True}).json()
    server.launcher.wait_event("session_ended", session=answer["id"])
    server.launcher.stop()
    assert "the key is ***" in server.launcher.output()
    assert "value-1" not in server.launcher.output()


@pytest.mark.slow
@pytest.mark.timeout(600)  # 50 cold session starts: over 120 s at load 30 beside two CPU hogs
def test_read_after_write_50_rounds(serve: Callable[..., Server], cli: CLI) -> None:
    """50 times: `secrets set` returns, a session starts at once, and it sees the new value.

    The file watch is off, so the guarantee comes from the check at dispatch alone; a session
    started before the updates finishes on the values it started with."""
    # Room for ended sessions whose exit a loaded machine has not reaped yet (the default
    # --max-sessions is 8 on two cores).
    server = serve("--idle", "1", "--max-sessions", "64")
    busy = server.started({"seconds": 600})
    assert server.file(f"{busy['id']}.json")["key_sha256"] == sha("value-1")
    for round_ in range(2, 52):
        value = f"value-{round_}"
        assert cli("secrets", "set", "demo", f"DEMO_API_KEY={value}").returncode == 0
        answer = server.started({"round": round_})
        assert answer["secrets_version"] == round_
        report = server.file(f"{answer['id']}.json")
        assert (report["version"], report["key_sha256"]) == (str(round_), sha(value)), round_
    still = server.http.get(f"/sessions/{busy['id']}").json()
    assert still["state"] == "running" and still["secrets_version"] == 1
    assert running(busy["pid"])
    server.http.delete(f"/sessions/{busy['id']}")
    server.launcher.wait_event("session_ended", session=busy["id"])


def test_watch_refreshes_idle_processes(serve: Callable[..., Server], cli: CLI) -> None:
    """With the watch on, a new version replaces the idle processes before the next session."""
    server = serve("--idle", "1", watch=True)
    server.imported(1)
    assert cli("secrets", "set", "demo", "DEMO_API_KEY=value-2").returncode == 0
    updated = server.launcher.wait_event("sessions_secrets_updated")
    assert updated["to_version"] == 2
    # The idle process is replaced ready-first, as a worker is in a rollout.
    server.launcher.wait_event("rollout_succeeded")
    server.imported(2)
    answer = server.started({})
    assert answer["warm"] is True
    assert server.file(f"{answer['id']}.json")["key_sha256"] == sha("value-2")


def test_term_drains_then_exits_without_leftovers(serve: Callable[..., Server]) -> None:
    """TERM: new sessions get 503, a running one finishes, then the launcher exits 0 and no process is left."""
    server = serve("--idle", "2")
    answer = server.post({"seconds": 2, "child": True}).json()
    server.file(f"{answer['id']}.json")
    server.launcher.signal(signal.SIGTERM)
    server.launcher.wait_event("sessions_draining")
    refused = server.post({})
    assert refused.status_code == 503 and "draining" in refused.json()["error"]
    assert server.launcher.wait(timeout=DEADLINE) == 0
    assert server.file(f"{answer['id']}.end") == {"outcome": "returned"}
    (stopped,) = [e for e in server.launcher.events if e["event"] == "sessions_stopped"]
    assert (stopped["stopped"], stopped["finished"]) == (0, 1)  # it finished on its own
    # At least the session's process imported the agent; the refill may have been retired
    # before it got that far (TERM came first), so waiting for two imports could never end.
    leftovers = [p for p in server.imported(1) + server.session_pids() if running(p)]
    assert leftovers == []


def test_drain_timeout_stops_sessions(serve: Callable[..., Server]) -> None:
    """After --drain-timeout a session gets the stop signal, then its process group goes."""
    server = serve("--idle", "1", "--drain-timeout", "0.5")
    answers = [server.post({"seconds": 600, "child": True}).json() for _ in range(2)]
    for answer in answers:
        server.file(f"{answer['id']}.json")
    server.launcher.signal(signal.SIGTERM)
    assert server.launcher.wait(timeout=DEADLINE) == 0
    for answer in answers:
        assert server.file(f"{answer['id']}.end") == {"outcome": "cancelled"}
    (stopped,) = [e for e in server.launcher.events if e["event"] == "sessions_stopped"]
    assert (stopped["stopped"], stopped["finished"]) == (2, 0)  # the two it had to stop
    leftovers = [p for p in server.imported(2) + server.session_pids() if running(p)]
    assert leftovers == []


def test_sessions_cli(serve: Callable[..., Server], cli: CLI) -> None:
    """`agent-run sessions start|list|show|stop` drive the running launcher."""
    server = serve("--idle", "1")
    server.imported(1)
    started = cli("sessions", "start", "--body", '{"seconds": 600}', "--json")
    assert started.returncode == 0, started.stderr
    session = json.loads(started.stdout)
    assert server.file(f"{session['id']}.json")["body"] == {"seconds": 600}
    listing = cli("sessions")
    assert session["id"] in listing.stdout and "running" in listing.stdout
    shown = cli("sessions", "show", session["id"], "--json")
    assert json.loads(shown.stdout)["pid"] == session["pid"]
    stopped = cli("sessions", "stop", session["id"])
    assert stopped.returncode == 0 and "stopping" in stopped.stdout
    server.launcher.wait_event("session_ended", session=session["id"])
    missing = cli("sessions", "show", "nope")
    assert missing.returncode == 1 and "no session 'nope'" in missing.stderr
    bad = cli("sessions", "start", "--body", "{")
    assert bad.returncode == 65 and "--body is not valid JSON" in bad.stderr


def test_plain_script_keeps_worker_mode(launch: Callable[..., Launcher], probe_dir: Path) -> None:
    """A script without bot() still runs as a worker pool."""
    launcher = launch("--ready-delay", "0", str(Path(__file__).parent / "agents" / "probe.py"))
    launcher.wait_event("worker_ready")
    assert not any(e.get("event") == "sessions_listening" for e in launcher.events)


def test_health_and_metrics_in_session_mode(serve: Callable[..., Server]) -> None:
    """--health: /readyz is 200 once the agent imported; /metrics counts sessions and start latency."""
    server = serve("--idle", "1", "--health", "127.0.0.1:0")
    health = f"http://{server.launcher.wait_event('health_listening')['address']}"
    server.imported(1)
    server.post({})
    deadline = time.monotonic() + DEADLINE
    while httpx.get(f"{health}/readyz").status_code != 200:
        assert time.monotonic() < deadline, "never ready"
        time.sleep(0.02)
    metrics = httpx.get(f"{health}/metrics").text
    assert "agent_run_sessions_total 1.0" in metrics
    assert "agent_run_session_start_seconds_count 1.0" in metrics


def test_dev_mode_reimports_idle_processes_on_code_change(
    launch: Callable[..., Launcher], tmp_path: Path
) -> None:
    """`agent-run dev bot.py` with a bot(): after an edit, the next session runs the new code."""
    directory = tmp_path / "sessions"
    directory.mkdir()
    app = tmp_path / "app"
    app.mkdir()
    bot = app / "bot.py"
    bot.write_text(AGENT.read_text())
    launcher = launch(
        "dev", "--log-format", "json", "--listen", "127.0.0.1:0", "--idle", "1", str(bot),
        env={"SESSION_DIR": str(directory)},
    )  # fmt: skip
    server = Server(launcher, directory)
    (first,) = server.imported(1)
    deadline = time.monotonic() + DEADLINE
    bot.write_text(AGENT.read_text() + '\nwrite("edited", {"pid": os.getpid()})\n')
    while not [e for e in launcher.events if e.get("event") == "code_changed"]:
        assert time.monotonic() < deadline, "no code change seen"
        (app / "helper.py").write_text(f"X = {time.monotonic()}\n")  # until the watch is up
        time.sleep(0.2)
    edited = server.file("edited")  # the idle process that replaced the first one
    answer = server.post({}).json()
    assert answer["pid"] == edited["pid"] != first
    replaced = launcher.wait_event("sessions_idle_replaced")
    assert replaced["reason"] == "code_changed"  # not a secrets update with equal versions
    assert not [e for e in launcher.events if e.get("event") == "sessions_secrets_updated"]
    server.http.close()


@pytest.mark.parametrize("shadow", ["launcher.py", "launcher/__init__.py"])
def test_a_project_with_its_own_launcher_module_runs_sessions(
    cli: CLI, tmp_path: Path, shadow: str
) -> None:
    """A `launcher.py` or `launcher/` package in the project does not shadow the session runtime."""
    import shutil
    import sys

    project = tmp_path / "project"
    (project / shadow).parent.mkdir(parents=True, exist_ok=True)
    (project / shadow).write_text("raise SystemExit('the project launcher was imported')\n")
    shutil.copy(AGENT, project / "bot.py")
    directory = tmp_path / "sessions"
    directory.mkdir()
    assert cli("secrets", "set", "demo", "DEMO_API_KEY=value-1").returncode == 0
    # The console script, as a user runs it: `python -m launcher` would itself import the
    # project's module from the working directory.
    agent_run = str(Path(sys.executable).parent / "agent-run")
    argv = [agent_run, "--secrets", "demo", "--listen", "127.0.0.1:0", "--no-watch", "bot.py"]
    env = {**cli.env, "AGENT_RUN_LOG_FORMAT": "json", "SESSION_DIR": str(directory)}
    server = Server(Launcher(argv, env, project), directory)
    try:
        answer = server.post({"seconds": 0})
        assert answer.status_code == 201, answer.text
        session = server.file(f"{answer.json()['id']}.json")
        assert session["pid"] == answer.json()["pid"]
        assert "the project launcher was imported" not in server.launcher.output()
    finally:
        server.http.close()
        server.launcher.stop()


def test_status_shows_warm_processes_and_sessions(serve: Callable[..., Server], cli: CLI) -> None:
    """`agent-run status` in session mode: warm processes and running sessions, no worker slots."""
    server = serve("--idle", "1")
    server.imported(1)
    answer = server.post({"seconds": 600}).json()
    server.file(f"{answer['id']}.json")
    status = json.loads(cli("status", "--json").stdout)
    assert status["mode"] == "sessions" and "workers" not in status
    assert [s["id"] for s in status["sessions"]] == [answer["id"]]
    assert status["sessions"][0]["pid"] == answer["pid"]
    assert all(w["pid"] != answer["pid"] for w in status["warm"])
    human = cli("status").stdout
    assert "session mode" in human and answer["id"] in human
    server.http.delete(f"/sessions/{answer['id']}")
    server.launcher.wait_event("session_ended", session=answer["id"])


@pytest.mark.timeout(600)  # 40 updates and cold starts: over 120 s at load 30 beside CPU hogs
def test_updates_racing_the_watch_never_fail_a_session(
    serve: Callable[..., Server], cli: CLI
) -> None:
    """Updates back to back with the watch on: every session starts, on the newest values.

    Superseded warm processes exit while their replacements start; a channel closed under
    its reader once left the event loop watching a reused fd, and a later session's process
    then looked closed ("exited before the entrypoint ran").
    """
    server = serve("--idle", "2", "--max-sessions", "64", watch=True)
    server.imported(2)
    for round_ in range(2, 42):
        value = f"value-{round_}"
        assert cli("secrets", "set", "demo", f"DEMO_API_KEY={value}").returncode == 0
        answer = server.post({"round": round_})
        assert answer.status_code == 201, answer.text
        report = server.file(f"{answer.json()['id']}.json")
        assert report["key_sha256"] == sha(value), round_


def test_sessions_run_on_the_bots_own_interpreter(
    serve: Callable[..., Server], tmp_path: Path
) -> None:
    """`agent-run -- VENV/bin/python bot.py`: session mode, its processes on that venv's
    Python, where agent-run is not installed (the session runtime needs only the stdlib)."""
    import subprocess
    import sys

    venv = tmp_path / "bot-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    server = serve("--", str(venv / "bin" / "python"), target=str(AGENT))
    session = server.file(f"{server.started({'n': 1})['id']}.json")
    assert Path(session["prefix"]) == venv and session["body"] == {"n": 1}
    assert session["agent_run_importable"] is False
    assert "session mode" in server.launcher.output()


def _warm_pids(cli: CLI, count: int, besides: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
    """Pids of ready warm processes (not in `besides`), once there are `count` of them."""
    deadline = time.monotonic() + DEADLINE
    while True:
        answer = cli("status", "--json")
        assert answer.returncode == 0, answer.stderr
        warm = {w["pid"] for w in json.loads(answer.stdout)["warm"] if w["state"] == "warm"}
        if len(warm - besides) >= count:
            return warm - besides
        assert time.monotonic() < deadline, f"only {len(warm - besides)} warm of {count}"
        time.sleep(0.02)


def test_starts_waiting_for_their_answer_never_keep_the_pool_empty(
    serve: Callable[..., Server], cli: CLI
) -> None:
    """Refills wait for starts being answered only while a warm process is ready: two stuck
    starts take both warm processes, and the pool refills while they still wait."""
    import contextlib
    import os
    from concurrent.futures import ThreadPoolExecutor

    server = serve("--idle", "2", "--ready-timeout", "600")
    stuck = _warm_pids(cli, 2)
    for pid in stuck:  # each start sends its session to a process that cannot answer yet
        os.kill(pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(2) as pool:
            pending = [pool.submit(server.post, {}) for _ in range(2)]
            refilled = _warm_pids(cli, 2, besides=stuck)
            assert not any(start.done() for start in pending)
            for pid in stuck:
                os.kill(pid, signal.SIGCONT)
            answers = [start.result() for start in pending]
    finally:
        for pid in stuck:
            with contextlib.suppress(ProcessLookupError):  # its session may be over
                os.kill(pid, signal.SIGCONT)
    assert [a.status_code for a in answers] == [201, 201]
    assert {a.json()["pid"] for a in answers} == stuck and not refilled & stuck

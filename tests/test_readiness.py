"""Readiness primitives: --ready parsing, tcp/http probes, the notify socket and its client."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import anyio
import pytest

from launcher import sd_notify
from launcher.errors import UsageError
from launcher.process.notify_socket import NotifySocket, parse
from launcher.process.readiness import ReadySpec, parse_ready, probe_until_ready
from tests.conftest import CLI, Launcher

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize(
    ("text", "spec"),
    [
        ("started", ReadySpec("started")),
        ("notify", ReadySpec("notify")),
        ("tcp:8080", ReadySpec("tcp", "8080")),
        ("tcp:{port}", ReadySpec("tcp", "{port}")),
        ("http://x", None),
        (
            "http:http://127.0.0.1:{port}/health",
            ReadySpec("http", "http://127.0.0.1:{port}/health"),
        ),
        ("log:registered worker", ReadySpec("log", "registered worker")),
        ("log:a:b", ReadySpec("log", "a:b")),
    ],
)
def test_parse_ready(text: str, spec: ReadySpec | None) -> None:
    """Each --ready form parses to its kind and target; a bare URL is refused."""
    if spec is None:
        with pytest.raises(UsageError):
            parse_ready(text)
    else:
        assert parse_ready(text) == spec


@pytest.mark.parametrize("text", ["", "sometimes", "tcp:", "tcp:http", "log:", "log:(", "notify:x"])
def test_bad_ready_values_are_usage_errors(text: str) -> None:
    """A malformed --ready is a usage error that lists the accepted forms."""
    with pytest.raises(UsageError, match="--ready"):
        parse_ready(text)


@pytest.mark.anyio
async def test_tcp_probe_waits_until_the_port_listens() -> None:
    """tcp: retries until something accepts on the port, then returns."""
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]
        async with anyio.create_task_group() as tg:
            done = anyio.Event()

            async def probe() -> None:
                await probe_until_ready(ReadySpec("tcp", "{port}"), port)
                done.set()

            tg.start_soon(probe)
            await anyio.wait_all_tasks_blocked()
            assert not done.is_set()  # bound but not listening: not ready
            probe_port.listen()
            with anyio.fail_after(30):
                await done.wait()


class _Health(BaseHTTPRequestHandler):
    status = 503

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Health]]]:
    """An HTTP server on 127.0.0.1 whose /health status the test sets."""
    handler = type("Health", (_Health,), {"status": 503})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server, handler
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.anyio
async def test_http_probe_waits_for_a_2xx(
    health_server: tuple[ThreadingHTTPServer, type[_Health]],
) -> None:
    """http: keeps probing while the endpoint answers 503 and returns on 200."""
    server, handler = health_server
    url = f"http://127.0.0.1:{server.server_address[1]}/health"
    with anyio.move_on_after(0.3) as scope:
        await probe_until_ready(ReadySpec("http", url), None)
    assert scope.cancelled_caught  # 503: still not ready
    handler.status = 200
    with anyio.fail_after(30):
        await probe_until_ready(ReadySpec("http", url), None)


@pytest.mark.anyio
async def test_probe_with_port_placeholder_needs_a_port() -> None:
    """{port} without --port-base is a usage error, not an endless probe."""
    with pytest.raises(UsageError, match="--port-base"):
        await probe_until_ready(ReadySpec("tcp", "{port}"), None)


def test_parse_notify_message() -> None:
    """A datagram is KEY=VALUE lines; lines without = are ignored, as systemd does."""
    assert parse(b"READY=1\nSTATUS=serving 3 calls\nnonsense\n") == {
        "READY": "1",
        "STATUS": "serving 3 calls",
    }


def test_notify_socket_identifies_the_sending_process() -> None:
    """READY=1 from a real child arrives with the child's pid (SCM_CREDENTIALS)."""
    notify = NotifySocket()
    try:
        assert oct(os.stat(os.path.dirname(notify.path)).st_mode & 0o777) == "0o700"
        child = subprocess.run(
            [sys.executable, "-c",
             "import os, launcher; print(os.getpid()); "
             "assert launcher.notify_ready('warming up')"],
            env={**os.environ, "NOTIFY_SOCKET": notify.path, "PYTHONPATH": str(ROOT)},
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert child.returncode == 0, child.stderr
        received: list[tuple[int, dict[str, str]]] = []
        notify.receive_pending(lambda pid, fields: received.append((pid, fields)))
        assert received == [(int(child.stdout), {"READY": "1", "STATUS": "warming up"})]
    finally:
        notify.close()
    assert not os.path.exists(notify.path)


def test_sd_notify_is_a_no_op_outside_a_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without NOTIFY_SOCKET every helper returns False; a dead socket never raises."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.notify_ready() is False
    assert sd_notify.notify_status("x") is False
    assert sd_notify.notify_watchdog() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/agent-run/notify.sock")
    assert sd_notify.notify_ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", "@agent-run-test-no-listener")
    assert sd_notify.notify("READY=1") is False


def test_sd_notify_reaches_an_abstract_socket() -> None:
    """An abstract-namespace NOTIFY_SOCKET (@name, as systemd may use) works."""
    name = f"agent-run-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind("\0" + name)
        listener.settimeout(30)
        assert sd_notify.notify("WATCHDOG=1", socket_path="@" + name)
        assert listener.recv(100) == b"WATCHDOG=1"


def test_log_match_read_before_the_worker_is_registered_still_counts(
    cli: CLI, probe_dir: Path
) -> None:
    """A `log:` match read by the relay before the spawner has registered the worker is kept."""
    env = {**cli.env, "AGENT_RUN_LOG_FORMAT": "json", "PAUSE_S": "1.0"}
    argv = [
        sys.executable,
        str(ROOT / "tests" / "agents" / "paused_spawner.py"),
        "--no-watch",
        "--ready",
        "log:registered worker",
        "--ready-timeout",
        "20",
        "--",
        "sh",
        "-c",
        "echo registered worker; exec sleep 600",
    ]
    launcher = Launcher(argv, env, cli.cwd)
    try:
        launcher.wait_event("worker_ready", timeout=25)
    finally:
        launcher.stop()

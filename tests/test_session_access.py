"""The session API is for its callers only (SPEC §5), checked from the outside.

A real launcher on 127.0.0.1 (or all interfaces with a token), requests over raw sockets
where a client library would hide what is being tested (a slow or never-finished body).
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import CLI, Launcher

AGENT = Path(__file__).parent / "agents" / "session_agent.py"
DEADLINE = 30.0
TOKEN = "tok-" + "a1" * 16


class Api:
    def __init__(self, launcher: Launcher, directory: Path) -> None:
        self.launcher = launcher
        self.dir = directory
        event = launcher.wait_event("sessions_listening")
        self.max_sessions = event["max_sessions"]
        port = str(event["address"]).rsplit(":", 1)[1]
        self.port = int(port)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=DEADLINE)

    def raw(self, request: bytes) -> socket.socket:
        """A connection that has sent `request` (perhaps only the head of it)."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE)
        sock.sendall(request)
        return sock

    def started(self) -> int:
        return len(list(self.dir.glob("*.json")))


def status_of(sock: socket.socket) -> int:
    """The status code of the answer on `sock` (waits for it, up to the socket timeout)."""
    head = b""
    while b"\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    return int(head.split(b" ", 2)[1])


@pytest.fixture
def api(launch: Callable[..., Launcher], cli: CLI, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    directory = tmp_path / "sessions"
    directory.mkdir()
    apis: list[Api] = []

    def start(*args: str, listen: str = "127.0.0.1:0", secrets: tuple[str, ...] = ()) -> Api:
        assert cli("secrets", "set", "demo", "DEMO_API_KEY=v1", *secrets).returncode == 0
        launcher = launch(
            "--secrets",
            "demo",
            "--listen",
            listen,
            "--no-watch",
            *args,
            str(AGENT),
            env={"SESSION_DIR": str(directory)},
        )
        apis.append(Api(launcher, directory))
        return apis[-1]

    yield start
    for one in apis:
        one.http.close()


def test_browser_requests_are_refused_on_loopback(api: Callable[..., Api]) -> None:
    """On loopback: a text/plain POST (no CORS preflight), a foreign Origin, and a rebound
    Host (GET and DELETE too) are refused, and no session starts; local callers get in."""
    server = api("--idle", "1")
    simple = server.http.post(
        "/sessions", content=b'{"room": "evil"}', headers={"Content-Type": "text/plain"}
    )
    assert simple.status_code == 415
    origin = server.http.post("/sessions", json={}, headers={"Origin": "https://evil.example"})
    assert origin.status_code == 403
    for method in ("GET", "DELETE"):
        rebound = server.http.request(method, "/sessions", headers={"Host": "evil.example:7860"})
        assert rebound.status_code == 403
    assert server.started() == 0
    local = server.http.post("/sessions", json={}, headers={"Origin": "http://localhost:3000"})
    assert local.status_code == 201


def test_non_loopback_listen_needs_a_token(launch: Callable[..., Launcher], cli: CLI) -> None:
    """--listen on all interfaces without AGENT_RUN_API_TOKEN in the set: exit 78 with one
    line saying what to do, nothing served; --insecure-no-auth is the explicit way out."""
    assert cli("secrets", "set", "demo", "DEMO_API_KEY=v1").returncode == 0
    launcher = launch(
        "--secrets",
        "demo",
        "--listen",
        "0.0.0.0:0",
        str(AGENT),
        env={"SESSION_DIR": "/nonexistent"},
    )
    assert launcher.wait(timeout=DEADLINE) == 78
    errors = [line for line in launcher.stderr_lines if "error" in line]
    assert len(errors) == 1
    assert "AGENT_RUN_API_TOKEN" in errors[0] and "--insecure-no-auth" in errors[0]
    assert "Traceback" not in launcher.output()
    allowed = launch(
        "--secrets",
        "demo",
        "--listen",
        "0.0.0.0:0",
        "--insecure-no-auth",
        str(AGENT),
        env={"SESSION_DIR": "/nonexistent"},
    )
    allowed.wait_event("sessions_listening")


def test_bearer_token_required_and_rotated(api: Callable[..., Api], cli: CLI) -> None:
    """With a token bound, a start needs `Authorization: Bearer` (or /ws/<token>); a wrong or
    missing one is a 401 before any handshake; the token never reaches the agent; a new
    token takes effect as soon as `secrets set` returns."""
    server = api("--idle", "1", listen="0.0.0.0:0", secrets=(f"AGENT_RUN_API_TOKEN={TOKEN}",))
    assert server.http.post("/sessions", json={}).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert server.http.post("/sessions", json={}, headers=wrong).status_code == 401
    assert server.http.get("/sessions", headers=wrong).status_code == 401
    assert server.http.get("/livez").status_code == 200  # probes need no token
    good = {"Authorization": f"Bearer {TOKEN}"}
    answer = server.http.post("/sessions", json={}, headers=good)
    assert answer.status_code == 201
    report = (
        json.loads((server.dir / f"{answer.json()['id']}.json").read_text())
        if (server.dir / f"{answer.json()['id']}.json").exists()
        else None
    )
    deadline = time.monotonic() + DEADLINE
    while report is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        path = server.dir / f"{answer.json()['id']}.json"
        report = json.loads(path.read_text()) if path.exists() else None
    assert report["api_token_in_env"] is False
    upgrade = b"GET /ws/%s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    for token, expected in ((b"wrong", 401), (TOKEN.encode(), 101)):
        with server.raw(upgrade % token) as sock:
            assert status_of(sock) == expected
    assert TOKEN not in server.launcher.output()
    assert cli("secrets", "set", "demo", "AGENT_RUN_API_TOKEN=rotated-token-2").returncode == 0
    assert server.http.post("/sessions", json={}, headers=good).status_code == 401
    rotated = {"Authorization": "Bearer rotated-token-2"}
    assert server.http.post("/sessions", json={}, headers=rotated).status_code == 201


def test_admission_counted_before_the_body(api: Callable[..., Api]) -> None:
    """With --max-sessions 1, a start whose body is still on its way holds the place: the
    next starts are answered 429 at once, before they send any body either."""
    server = api("--idle", "1", "--max-sessions", "1")
    head = b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    slow = server.raw(head)  # its body never comes (yet)
    others = [server.raw(head) for _ in range(3)]
    try:
        assert [status_of(sock) for sock in others] == [429, 429, 429]
        slow.sendall(b"{}")
        assert status_of(slow) == 201
    finally:
        for sock in [slow, *others]:
            sock.close()


def test_body_limit_enforced_while_streaming(api: Callable[..., Api]) -> None:
    """A body over 1 MiB is refused with 413 as soon as it is declared or streamed past the
    limit, without waiting for (or keeping) the rest of it."""
    server = api("--idle", "0")
    declared = server.raw(
        b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 419430400\r\n\r\n"
    )
    assert status_of(declared) == 413
    declared.close()
    chunked = server.raw(
        b"POST /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    piece = b" " * 65536
    try:
        for _ in range(20):  # 1.25 MiB, and the body is never finished
            chunked.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
    except (BrokenPipeError, ConnectionResetError):
        pass  # refused (and closed) before all of it was sent
    assert status_of(chunked) == 413
    chunked.close()
    assert server.started() == 0


def test_default_limits_are_finite(api: Callable[..., Api]) -> None:
    """Without --max-sessions the limit comes from the machine; the server also limits
    its open connections (beyond them, 503)."""
    server = api("--idle", "0", "--max-sessions", "1")
    assert server.max_sessions == 1
    limit = 4 * 1 + 64  # service.connection_limit(1)
    request = b"GET /sessions HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    idle = [server.raw(request) for _ in range(limit - 1)]
    for sock in idle:
        assert status_of(sock) == 200  # answered, and kept open (keep-alive)
    over = server.raw(request)
    assert status_of(over) == 503
    for sock in [*idle, over]:
        sock.close()
    default = api("--idle", "0")
    assert isinstance(default.max_sessions, int) and default.max_sessions >= 1

"""Unchanged Pipecat bots under agent-run, with the real `pipecat-ai` package (SPEC §5).

The three shapes of Pipecat bots, each unchanged: telephony callers (Twilio's and Exotel's
media-stream messages) connect to `WS /ws` on 127.0.0.1 and the launcher hands the
connection to a warm session process, where either Pipecat's `create_transport()`
(pipecat_echo.py) or the bot itself (pipecat_twilio.py, as Pipecat's twilio-chatbot example)
builds a `FastAPIWebsocketTransport` and echoes the audio back; a Daily bot
(pipecat_args.py) is started by `POST /start` or `POST /bot` against a stand-in for Daily's
REST API.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import signal
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import CLI, Launcher

pytest.importorskip("pipecat.runner.types")
from websockets.sync.client import ClientConnection, connect

AGENTS = Path(__file__).parent / "agents"
DEADLINE = 60.0
FRAME = 160  # 20 ms of 8 kHz mu-law: what Twilio sends per media message


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def mulaw_audio(frames: int, seed: int) -> bytes:
    # 0x7F is mu-law's second zero: it decodes to 0 like 0xFF, so it cannot round-trip.
    return bytes(((i * 7 + seed) % 0x7F) | 0x80 for i in range(FRAME * frames))


def wait_file(path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.01)
    data = json.loads(path.read_text())
    assert isinstance(data, dict)
    return data


class Call:
    """A telephony provider's side of a media stream: Twilio's or Exotel's messages."""

    def __init__(self, url: str, provider: str, call_id: str, session_id: str | None) -> None:
        headers = {"X-Daily-Session-Id": session_id} if session_id else {}
        self.ws: ClientConnection = connect(url, additional_headers=headers, open_timeout=DEADLINE)
        self.ws.__enter__()  # websockets wants a `with`; the call outlives this constructor
        self.provider = provider
        self.stream = f"stream-{call_id}"
        if provider == "twilio":
            start = {"streamSid": self.stream, "callSid": call_id, "customParameters": {}}
            self.send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
            self.send({"event": "start", "start": start, "streamSid": self.stream})
        else:
            start = {"stream_sid": self.stream, "call_sid": call_id, "account_sid": "acct"}
            self.send({"event": "connected"})
            self.send({"event": "start", "start": {**start, "from": "+1", "to": "+2"}})

    def send(self, message: dict[str, Any]) -> None:
        self.ws.send(json.dumps(message))

    def echo(self, audio: bytes, chunk: int) -> bytes:
        """Send `audio` as media messages; return the audio the bot sent back."""
        key = "streamSid" if self.provider == "twilio" else "stream_sid"
        for start in range(0, len(audio), chunk):
            payload = base64.b64encode(audio[start : start + chunk]).decode()
            self.send({"event": "media", key: self.stream, "media": {"payload": payload}})
        received = b""
        while len(received) < len(audio):
            message = json.loads(self.ws.recv(timeout=DEADLINE))
            if message.get("event") == "media":
                received += base64.b64decode(message["media"]["payload"])
        return received

    def hang_up(self) -> None:
        self.send({"event": "stop", "stop": {}})
        self.ws.close()


class Runtime:
    """`agent-run` serving a Pipecat bot, with helpers for its callers."""

    def __init__(self, launcher: Launcher, directory: Path) -> None:
        self.launcher = launcher
        self.dir = directory
        event = launcher.wait_event("sessions_listening", timeout=DEADLINE)
        self.address = str(event["address"])
        self.http = httpx.Client(base_url=f"http://{self.address}", timeout=DEADLINE)

    def call(self, provider: str, call_id: str, session_id: str | None = None) -> Call:
        return Call(f"ws://{self.address}/ws", provider, call_id, session_id)

    def report(self, session_id: str) -> dict[str, Any]:
        return wait_file(self.dir / f"{session_id}.json")


@pytest.fixture
def pipecat(
    launch: Callable[..., Launcher], cli: CLI, tmp_path: Path
) -> Iterator[Callable[..., Runtime]]:
    """Start `agent-run --secrets demo --listen 127.0.0.1:0 ARGS BOT` (a copy in tmp_path)."""
    directory = tmp_path / "sessions"
    directory.mkdir()
    runtimes: list[Runtime] = []

    def start(bot: str, *args: str, dotenv: str | None = None) -> Runtime:
        home = tmp_path / "bot"
        home.mkdir(exist_ok=True)
        target = home / "bot.py"
        shutil.copy(AGENTS / bot, target)
        if dotenv is not None:
            (home / ".env").write_text(dotenv)
        launcher = launch(
            "--secrets",
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--no-watch",
            "--ready-timeout",
            "120",
            *args,
            str(target),
            env={"SESSION_DIR": str(directory)},
        )
        runtime = Runtime(launcher, directory)
        runtimes.append(runtime)
        return runtime

    yield start
    for runtime in runtimes:
        runtime.http.close()


@pytest.mark.timeout(600)  # four cold Pipecat starts: over 120 s at load 30 beside CPU hogs
def test_calls_echoed_each_in_its_own_process_with_the_current_secrets(
    pipecat: Callable[..., Runtime], cli: CLI
) -> None:
    """Twilio and Exotel callers on WS /ws get their audio back byte for byte from an
    unchanged create_transport() bot; every call runs in a new process with the secrets
    version current when it connected, and its session id from X-Daily-Session-Id."""
    twilio = ("TWILIO_ACCOUNT_SID=AC0", "TWILIO_AUTH_TOKEN=auth-0")  # Pipecat's hang-up needs them
    assert cli("secrets", "set", "demo", "DEMO_API_KEY=value-1", *twilio).returncode == 0
    # Each round's new version retires the idle process anyway: with --idle 0 no warm-up
    # (Pipecat's imports, seconds of CPU under load) is spent on a process no call will take.
    runtime = pipecat("pipecat_echo.py", "--idle", "0")
    pids = set()
    for round_ in range(4):
        value = f"value-{round_ + 1}"
        if round_:
            assert cli("secrets", "set", "demo", f"DEMO_API_KEY={value}").returncode == 0
        provider = "twilio" if round_ % 2 == 0 else "exotel"
        session_id = f"call-{round_}"
        call = runtime.call(provider, f"CA{round_}", session_id)
        if provider == "twilio":
            audio, chunk = mulaw_audio(24, round_), FRAME
        else:  # Exotel streams 16-bit PCM at 8 kHz
            audio, chunk = mulaw_audio(48, round_), 2 * FRAME
        assert call.echo(audio, chunk) == audio
        report = runtime.report(session_id)
        assert report["type"] == "WebSocketRunnerArguments"
        assert report["transport_type"] == provider
        assert report["call_id"] == f"CA{round_}"
        assert report["key_sha256"] == sha(value)
        assert report["version"] == str(round_ + 1)
        pids.add(report["pid"])
        call.hang_up()
        runtime.launcher.wait_event("session_ended", session=session_id, timeout=DEADLINE)
        wait_file(runtime.dir / f"{session_id}.end")
    assert len(pids) == 4


def test_call_in_progress_survives_term(pipecat: Callable[..., Runtime], cli: CLI) -> None:
    """A bot that builds its FastAPIWebsocketTransport on runner_args.websocket itself echoes
    a Twilio call; after TERM the launcher takes no new call (503 before any handshake) while
    the call in progress keeps its audio flowing until it hangs up; then it exits 0."""
    twilio = ("TWILIO_ACCOUNT_SID=AC0", "TWILIO_AUTH_TOKEN=auth-0")
    assert cli("secrets", "set", "demo", "DEMO_API_KEY=v", *twilio).returncode == 0
    runtime = pipecat("pipecat_twilio.py")
    call = runtime.call("twilio", "CA-term", "term-call")
    assert call.echo(mulaw_audio(8, 1), FRAME) == mulaw_audio(8, 1)
    report = runtime.report("term-call")
    assert (report["transport_type"], report["call_id"]) == ("twilio", "CA-term")
    runtime.launcher.signal(signal.SIGTERM)
    runtime.launcher.wait_event("sessions_draining", timeout=DEADLINE)
    with pytest.raises(Exception, match="503"):
        runtime.call("twilio", "CA-late")
    assert call.echo(mulaw_audio(16, 2), FRAME) == mulaw_audio(16, 2)
    call.hang_up()
    assert runtime.launcher.wait(timeout=DEADLINE) == 0
    ended = [e for e in runtime.launcher.events if e.get("event") == "session_ended"]
    assert [e["outcome"] for e in ended] == ["ended"]


class DailyStandIn:
    """Daily's REST API on 127.0.0.1: /rooms and /meeting-tokens, recording each request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                stand_in.requests.append((self.path, self.headers["Authorization"], body))
                if self.path == "/v1/rooms":
                    answer = {"name": "room-1", "url": "https://example.daily.co/room-1"}
                else:
                    answer = {"token": "meeting-token-1"}
                data = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def daily() -> Iterator[DailyStandIn]:
    stand_in = DailyStandIn()
    yield stand_in
    stand_in.close()


def test_daily_starts_get_pipecat_argument_types(
    pipecat: Callable[..., Runtime], cli: CLI, daily: DailyStandIn
) -> None:
    """POST /start {createDailyRoom} makes the room with the set's DAILY_API_KEY at
    DAILY_API_URL and the bot gets DailyRunnerArguments; POST /bot with X-Daily-* headers
    does too, without them RunnerArguments; attributes are writable; the bot's readyz()
    answers /readyz; a .env that load_dotenv(override=True) applies is warned about and the
    bound value wins; the session's output lines carry its id."""
    assert (
        cli(
            "secrets",
            "set",
            "demo",
            "DEMO_API_KEY=bound",
            "DAILY_API_KEY=daily-key",
            f"DAILY_API_URL={daily.url}",
        ).returncode
        == 0
    )
    runtime = pipecat("pipecat_args.py", dotenv="DEMO_API_KEY=from-dotenv\n")
    warning = runtime.launcher.wait_event("session_env_overridden", timeout=DEADLINE)
    assert warning["keys"] == "DEMO_API_KEY"

    started = runtime.http.post("/start", json={"createDailyRoom": True, "body": {"n": 1}})
    assert started.status_code == 200, started.text
    answer = started.json()
    assert answer["dailyRoom"] == "https://example.daily.co/room-1"
    assert answer["dailyToken"] == "meeting-token-1"
    report = runtime.report(answer["sessionId"])
    assert report["type"] == "DailyRunnerArguments" and report["daily"] and report["pipecat"]
    assert report["room_url"] == answer["dailyRoom"] and report["token"] == "meeting-token-1"
    assert report["body"] == {"n": 1} and report["written"] == "written"
    assert report["handle_sigint"] is False
    assert report["key_sha256"] == sha("bound")
    assert [(path, auth) for path, auth, _ in daily.requests] == [
        ("/v1/rooms", "Bearer daily-key"),
        ("/v1/meeting-tokens", "Bearer daily-key"),
    ]
    assert daily.requests[1][2]["properties"]["room_name"] == "room-1"

    headers = {
        "X-Daily-Room-Url": "https://example.daily.co/r2",
        "X-Daily-Room-Token": "t2",
        "X-Daily-Session-Id": "pcc-session-2",
    }
    bot = runtime.http.post("/bot", json={"n": 2}, headers=headers)
    assert bot.status_code == 200, bot.text
    assert bot.json()["sessionId"] == "pcc-session-2"
    report = runtime.report("pcc-session-2")
    assert report["type"] == "DailyRunnerArguments" and report["room_url"].endswith("/r2")
    assert report["body"] == {"n": 2}

    plain = runtime.http.post("/bot", json={"n": 3}).json()
    report = runtime.report(plain["sessionId"])
    assert report["type"] == "RunnerArguments" and not report["daily"] and report["pipecat"]

    ready = runtime.http.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"ready": True, "model": "loaded"}
    assert runtime.http.get("/livez").json() == {"status": "ok"}

    tagged = [
        json.loads(line)
        for line in runtime.launcher.stdout_lines
        if line.startswith("{") and "session line" in line
    ]
    assert {record["session"] for record in tagged} >= {"pcc-session-2", plain["sessionId"]}
    assert all(r["line"] == f"session line from {r['session']}" for r in tagged)


def test_max_session_seconds_warns_then_stops(pipecat: Callable[..., Runtime], cli: CLI) -> None:
    """X-Pcc-Max-Session-Seconds: a warning before the limit, then the session is stopped."""
    assert cli("secrets", "set", "demo", "DEMO_API_KEY=v").returncode == 0
    # The limit is the launcher's: a bot without Pipecat's imports keeps the suite lean.
    runtime = pipecat("session_agent.py")
    answer = runtime.http.post(
        "/bot", json={"seconds": 600}, headers={"X-Pcc-Max-Session-Seconds": "2"}
    ).json()
    session = answer["sessionId"]
    runtime.launcher.wait_event("session_time_limit_near", session=session, timeout=DEADLINE)
    ended = runtime.launcher.wait_event("session_ended", session=session, timeout=DEADLINE)
    assert ended["outcome"] == "stopped"

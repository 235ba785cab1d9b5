"""The census of secrets versions and `agent-run secrets retired` (#19), with real processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from launcher.ops.census import describe, holders
from launcher.ops.status import CensusEntry

from .conftest import AGENTS, CLI, Launcher, alive

CALLER = AGENTS / "caller.py"
README = Path(__file__).parent.parent / "README.md"
DEADLINE = 60.0


def test_holders_are_the_version_and_every_older_one() -> None:
    """`retired 2` is blocked by v1 and v2 processes and pending slots, never by v3 or no set."""
    census = [
        CensusEntry(3, "ready", 2),
        CensusEntry(2, "draining", 1),
        CensusEntry(1, "pending", 1),
        CensusEntry(None, "ready", 1),
    ]
    assert holders(census, 2) == census[1:3]
    assert holders(census, 0) == []
    assert describe(census) == "v3: 2 ready; v2: 1 draining; v1: 1 pending; no set: 1 ready"


def _wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def _status(cli: CLI) -> dict[str, object]:
    answer = cli("status", "--json")
    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    assert isinstance(data, dict)
    return data


def _census(cli: CLI) -> set[tuple[int | None, str, int]]:
    items = _status(cli)["census"]
    return {(c["version"], c["state"], c["processes"]) for c in items}  # type: ignore[attr-defined]


@pytest.fixture
def caller_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "calls"
    directory.mkdir()
    return directory


def test_census_across_a_rollout_with_a_draining_worker(
    cli: CLI, launch: Callable[..., Launcher], caller_dir: Path
) -> None:
    """During a rollout's drain, status and /metrics count the old worker on v1; `retired 1` says held, then retired once it exits."""
    cli("secrets", "set", "prod", "PROVIDER_API_KEY=old")
    launcher = launch(
        "--secrets", "prod", "--ready", "notify", "--health", "127.0.0.1:0", str(CALLER),
        env={"CALLER_DIR": str(caller_dir), "CALLER_NOTIFY": "1"},
    )  # fmt: skip
    address = launcher.wait_event("health_listening")["address"]
    old = int(launcher.wait_event("worker_ready", version=1)["pid"])  # type: ignore[call-overload]
    assert _census(cli) == {(1, "ready", 1)}
    cli("secrets", "set", "prod", "PROVIDER_API_KEY=new")
    launcher.wait_event("rollout_succeeded", to_version=2)
    _wait_for(lambda: _census(cli) == {(2, "ready", 1), (1, "draining", 1)}, "v1 draining")
    text = cli("status").stdout
    assert "processes by secrets version: v2: 1 ready; v1: 1 draining" in text
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'agent_run_processes{secrets_version="1",state="draining"} 1.0' in metrics
    assert 'agent_run_processes{secrets_version="2",state="ready"} 1.0' in metrics
    assert 'agent_run_secrets_version_oldest{set="prod"} 1.0' in metrics
    held = cli("secrets", "retired", "prod", "1")
    assert held.returncode == 1
    assert re.search(r"v1 is still held: launcher prod \(pid \d+\): .*v1: 1 draining", held.stderr)
    waiting = subprocess.Popen(
        [*cli.argv("secrets", "retired", "prod", "1", "--wait", "--timeout", "120")],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    (caller_dir / f"release-{old}").touch()  # its call in progress ends
    out, err = waiting.communicate(timeout=DEADLINE * 2)
    assert waiting.returncode == 0, err
    assert "prod v1 retired" in out
    assert (caller_dir / f"{old}.end").exists() and not alive(old)
    assert _census(cli) == {(2, "ready", 1)}


def test_retired_wait_returns_when_the_last_old_session_ends(
    cli: CLI, launch: Callable[..., Launcher], tmp_path: Path
) -> None:
    """Session mode: a session on v1 holds v1 after the warm processes moved on; `retired --wait` answers once it ended."""
    sessions = tmp_path / "sessions"
    sessions.mkdir()
    cli("secrets", "set", "demo", "DEMO_API_KEY=value-1")
    launcher = launch(
        "--secrets", "demo", "--listen", "127.0.0.1:0", "--no-watch", "--idle", "1",
        str(AGENTS / "session_agent.py"), env={"SESSION_DIR": str(sessions)},
    )  # fmt: skip
    launcher.wait_event("sessions_listening")
    _wait_for(lambda: (1, "warm", 1) in _census(cli), "a warm v1 process")
    started = cli("sessions", "start", "--body", '{"seconds": 600}', "--json")
    session = json.loads(started.stdout)
    cli("secrets", "set", "demo", "DEMO_API_KEY=value-2")
    assert cli("reload").returncode == 0  # the idle process moves to v2
    _wait_for(lambda: _census(cli) == {(2, "warm", 1), (1, "session", 1)}, "v1 session only")
    waiting = subprocess.Popen(
        [*cli.argv("secrets", "retired", "demo", "1", "--wait", "--json")],
        env=cli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    held = cli("secrets", "retired", "demo", "1")
    assert held.returncode == 1 and "1 session" in held.stderr
    assert waiting.poll() is None  # the session still holds v1
    assert cli("sessions", "stop", session["id"]).returncode == 0
    out, err = waiting.communicate(timeout=DEADLINE * 2)
    assert waiting.returncode == 0, err
    assert json.loads(out) == {"set": "demo", "version": 1, "retired": True}
    assert not alive(int(session["pid"]))  # reaped before the answer
    assert (sessions / f"{session['id']}.end").exists()


# --- the rotation script of README, end to end ----------------------------------------------


class Provider:
    """A stand-in API provider on 127.0.0.1: records every use of a key, refuses revoked ones."""

    def __init__(self) -> None:
        self.uses: list[tuple[float, str, bool]] = []  # (time, key, accepted)
        self.revoked: dict[str, float] = {}
        self.lock = threading.Lock()
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                with provider.lock:
                    accepted = key not in provider.revoked
                    provider.uses.append((time.time(), key, accepted))
                self.send_response(200 if accepted else 401)
                self.end_headers()

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                key = self.rfile.read(length).decode()
                with provider.lock:
                    provider.revoked[key] = time.time()
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def used(self, key: str) -> list[float]:
        with self.lock:
            return [at for at, used, _ in self.uses if used == key]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def provider() -> Iterator[Provider]:
    found = Provider()
    yield found
    found.close()


def _rotation_script() -> str:
    match = re.search(r"<!-- rotation-script -->\n+```sh\n(.*?)\n```", README.read_text(), re.S)
    assert match, "README has no rotation script block"
    return match.group(1)


def test_the_readme_rotation_script_never_lets_a_revoked_key_be_used(
    cli: CLI, launch: Callable[..., Launcher], caller_dir: Path, provider: Provider, tmp_path: Path
) -> None:
    """README's rotate script: new key set, old one revoked only after the last call on it ended; the provider never sees a revoked key."""
    script = tmp_path / "rotate-key.sh"
    script.write_text(_rotation_script())
    cli("secrets", "set", "prod", "PROVIDER_API_KEY=key-old", f"PROVIDER_URL={provider.url}/call")
    launcher = launch(
        "--secrets", "prod", "--workers", "2", "--ready", "notify", str(CALLER),
        env={"CALLER_DIR": str(caller_dir), "CALLER_NOTIFY": "1"},
    )  # fmt: skip
    launcher.wait_event("worker_ready", version=1)
    launcher.wait_event("worker_ready", version=1)
    revoke = [sys.executable, "-c", REVOKE, f"{provider.url}/revoke", "key-old"]
    rotation = subprocess.Popen(
        ["sh", str(script), "prod", "PROVIDER_API_KEY", *revoke],
        env={
            **cli.env,
            "NEW_KEY": "key-new",
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        },
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    launcher.wait_event("rollout_succeeded", to_version=2)
    _wait_for(lambda: len(provider.used("key-new")) > 0, "the new key in use")
    # Both old workers still finish their calls on the old key: nothing may be revoked yet.
    drained_from = time.time()
    _wait_for(lambda: any(at > drained_from for at in provider.used("key-old")), "a draining call")
    assert rotation.poll() is None and not provider.revoked
    (caller_dir / "release-all").touch()
    out, err = rotation.communicate(timeout=DEADLINE * 2)
    assert rotation.returncode == 0, out + err
    revoked_at = provider.revoked["key-old"]
    refused = [use for use in provider.uses if not use[2]]
    assert refused == []  # no process ever called with a revoked key
    assert max(provider.used("key-old")) < revoked_at
    ended = [json.loads(p.read_text()) for p in caller_dir.glob("*.end")]
    assert len(ended) == 2 and all(e["ended"] < revoked_at for e in ended)


REVOKE = (
    "import sys, urllib.request; "
    "urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=sys.argv[2].encode()))"
)

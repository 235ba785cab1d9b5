"""The child side of session mode: one import, one session, the right exit, with real processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.sessions.runtime import CHANNEL_VARIABLE, RunnerArguments, command

AGENT = Path(__file__).parent / "agents" / "session_agent.py"
DEADLINE = 30.0


class Child:
    """A session process started as the warm pool starts it, with the parent's end of its channel."""

    def __init__(
        self,
        tmp_path: Path,
        function: str = "bot",
        target: str = str(AGENT),
        flags: tuple[str, ...] = (),
    ) -> None:
        self.dir = tmp_path
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {**os.environ, "SESSION_DIR": str(tmp_path), CHANNEL_VARIABLE: str(child.fileno())}
        env.setdefault("DEMO_API_KEY", "sk-runtime-test")
        self.proc = subprocess.Popen(
            [sys.executable, *flags, *command("", "script", target, function, 15, ["a1"])[1:]],
            env=env,
            pass_fds=(child.fileno(),),
            stderr=subprocess.PIPE,
            process_group=0,
        )
        child.close()
        parent.settimeout(DEADLINE)
        self.channel = parent
        self.stream = parent.makefile("rb")

    def line(self) -> bytes:
        return self.stream.readline().strip()

    def session(self, session_id: str, body: object) -> None:
        self.channel.sendall(json.dumps({"session_id": session_id, "body": body}).encode() + b"\n")

    def wait(self) -> tuple[int, str]:
        _, err = self.proc.communicate(timeout=DEADLINE)
        self.channel.close()
        return self.proc.returncode, err.decode()

    def file(self, name: str) -> dict[str, object]:
        path = self.dir / name
        deadline = time.monotonic() + DEADLINE
        while not path.exists():
            assert time.monotonic() < deadline, f"{name} never appeared"
            time.sleep(0.01)
        data = json.loads(path.read_text())
        assert isinstance(data, dict)
        return data


@pytest.fixture
def child(tmp_path: Path) -> Iterator[Child]:
    started = Child(tmp_path)
    yield started
    if started.proc.poll() is None:
        started.proc.kill()
        started.proc.wait()


def test_async_entrypoint_gets_runner_arguments(child: Child) -> None:
    """An async bot gets session_id and the JSON body, and the process exits 0 when it returns."""
    assert child.line() == b"ready"
    child.session("s-1", {"room": "demo"})
    assert child.line() == b"started"
    report = child.file("s-1.json")
    code, _ = child.wait()
    assert code == 0
    assert report["kind"] == "async"
    assert report["session_id"] == "s-1" and report["env_session_id"] == "s-1"
    assert report["body"] == {"room": "demo"}
    assert report["handle_sigint"] is False
    assert report["channel_variable"] is None  # the channel's fd number is not the agent's business
    assert child.file("s-1.end") == {"outcome": "returned"}


def test_runtime_needs_nothing_but_the_standard_library(tmp_path: Path) -> None:
    """Run by path with `-I -S` (no site-packages, so no agent-run, no PYTHONPATH), beside a
    `launcher.py` of the user's that would shadow a `-m launcher...` runtime: it serves a
    session all the same, with plain argument objects that accept new attributes."""
    home = tmp_path / "bot"
    home.mkdir()
    (home / "bot.py").write_text(AGENT.read_text())
    (home / "launcher.py").write_text("raise SystemExit('the user launcher.py was imported')\n")
    started = Child(tmp_path, target=str(home / "bot.py"), flags=("-I", "-S"))
    try:
        assert started.line() == b"ready"
        started.session("s-iso", {"n": 1})
        assert started.line() == b"started"
        assert started.file("s-iso.json")["body"] == {"n": 1}
        code, err = started.wait()
        assert code == 0, err
    finally:
        if started.proc.poll() is None:
            started.proc.kill()
            started.proc.wait()
    arguments = RunnerArguments(session_id="s", body={})
    arguments.call_data = {"call_id": "CA1"}  # create_transport writes these
    arguments.transport_type = "twilio"  # type: ignore[attr-defined]
    assert arguments.transport_type == "twilio"  # type: ignore[attr-defined]


def test_sync_entrypoint(tmp_path: Path) -> None:
    """A plain `def` entrypoint is called the same way."""
    child = Child(tmp_path, function="sync_bot")
    assert child.line() == b"ready"
    child.session("s-2", [1, 2])
    assert child.line() == b"started"
    assert child.wait()[0] == 0
    assert child.file("s-2.json")["kind"] == "sync"
    assert child.file("s-2.json")["body"] == [1, 2]


def test_module_code_runs_once_and_not_as_main(child: Child) -> None:
    """The agent is imported once, under its own name, before `ready`; its __main__ block never runs."""
    assert child.line() == b"ready"
    imported = child.file(f"import-{child.proc.pid}")
    child.session("s-3", {})
    assert child.line() == b"started"
    assert child.wait()[0] == 0
    assert imported["name"] == "session_agent"
    assert imported["argv"] == [str(AGENT), "a1"]  # sys.argv as `python bot.py a1` has it
    assert sorted(p.name for p in child.dir.glob("import-*")) == [f"import-{child.proc.pid}"]
    assert not list(child.dir.glob("main-*"))


def test_exception_exits_1_with_traceback(child: Child) -> None:
    """A session that raises ends the process with 1 and its traceback on stderr."""
    assert child.line() == b"ready"
    child.session("s-4", {"fail": True})
    assert child.line() == b"started"
    code, err = child.wait()
    assert code == 1
    assert "session failed on purpose" in err and "Traceback" in err


def test_closed_channel_retires_a_warm_process(child: Child) -> None:
    """An idle process whose channel closes exits 0 without calling the entrypoint."""
    assert child.line() == b"ready"
    child.channel.shutdown(socket.SHUT_RDWR)
    assert child.wait()[0] == 0
    assert not list(child.dir.glob("*.json"))


def test_stop_signal_cancels_async_session(child: Child) -> None:
    """The stop signal cancels an async session (its finally blocks run) and the process exits 0."""
    assert child.line() == b"ready"
    child.session("s-5", {"seconds": 600})
    assert child.line() == b"started"
    child.file("s-5.json")
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait()[0] == 0
    assert child.file("s-5.end") == {"outcome": "cancelled"}


def test_stop_signal_ends_sync_session(tmp_path: Path) -> None:
    """The stop signal ends a sync session too."""
    child = Child(tmp_path, function="sync_bot")
    assert child.line() == b"ready"
    child.session("s-6", {"seconds": 600})
    assert child.line() == b"started"
    child.file("s-6.json")
    child.proc.send_signal(signal.SIGTERM)
    assert child.wait()[0] == 0
    assert child.file("s-6.end") == {"outcome": "stopped"}


def test_import_error_exits_before_ready(tmp_path: Path) -> None:
    """An agent that fails to import exits 1 and never says `ready`."""
    broken = tmp_path / "broken.py"
    broken.write_text("raise ImportError('no such model')\nasync def bot(args): pass\n")
    child = Child(tmp_path, target=str(broken))
    assert child.line() == b""
    code, err = child.wait()
    assert code == 1 and "no such model" in err


def test_runner_arguments_repr_shows_no_body() -> None:
    """RunnerArguments' repr names the session only: a body may carry tokens."""
    arguments = RunnerArguments(session_id="abc", body={"token": "t0ps3cret"})
    assert "t0ps3cret" not in repr(arguments) and "abc" in repr(arguments)

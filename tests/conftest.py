"""Shared fixtures: a temporary store, a master key, and a way to run the real CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import settings

# No per-example deadline: on a loaded machine (CI shares the developer's cores) an example
# that takes 200 ms says nothing about the code, and hypothesis would fail it as "slow".
settings.register_profile("agent-run", deadline=None)
settings.load_profile("agent-run")

AGENTS = Path(__file__).parent / "agents"
SAMPLE_AGENTS = Path(__file__).parent.parent / "sample_agents"


def wait_gone(pid: int, timeout: float = 30) -> None:
    """Until `pid` no longer runs: gone, or a zombie waiting for init to reap it.

    A SIGKILLed process still exists until the kernel has torn it down, and an orphan's
    zombie until init reaps it: on a loaded machine both take a while after the launcher
    has exited, so "gone" is awaited, never checked once.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return
        if state in ("Z", "X"):
            return
        time.sleep(0.02)
    raise AssertionError(f"process {pid} still runs")


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """An empty store directory (created by agent-run on first use)."""
    return tmp_path / "store"


@pytest.fixture
def master_key() -> str:
    """A fresh base64 master key, as AGENT_RUN_MASTER_KEY takes it."""
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def cli_env(store_dir: Path, master_key: str, tmp_path: Path) -> dict[str, str]:
    """An environment for the CLI that points at the temporary store and key, and nothing else."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_RUN_", "LIVEKIT_")) and k not in ("CREDENTIALS_DIRECTORY",)
    }
    env["AGENT_RUN_HOME"] = str(store_dir)
    env["AGENT_RUN_MASTER_KEY"] = master_key
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env.pop("NOTIFY_SOCKET", None)
    return env


class CLI:
    """Runs `agent-run` as a real subprocess (via `python -m launcher`)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        return subprocess.run(
            [sys.executable, "-m", "launcher", *args],
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or self.cwd,
            timeout=timeout,
        )

    def argv(self, *args: str) -> Sequence[str]:
        return [sys.executable, "-m", "launcher", *args]


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> Iterator[CLI]:
    """The real CLI bound to a temporary store and master key."""
    work = tmp_path / "work"
    work.mkdir()
    yield CLI(cli_env, work)


@pytest.fixture
def anyio_backend() -> str:
    """The supervisor runs on asyncio; so do the async tests."""
    return "asyncio"


PROBE = AGENTS / "probe.py"


class Launcher:
    """A running `agent-run` whose JSON log events the test can wait for."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        import queue
        import threading

        self.events: list[dict[str, object]] = []
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._queue: queue.Queue[dict[str, object] | None] = queue.Queue()
        self.proc = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._readers = [
            threading.Thread(target=self._read_stderr, daemon=True),
            threading.Thread(target=self._read_stdout, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stderr(self) -> None:
        import json as _json

        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line)
            try:
                event = _json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                self.events.append(event)
                self._queue.put(event)
        self._queue.put(None)

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.stdout_lines.append(line)

    def wait_event(self, name: str, timeout: float = 30, **match: object) -> dict[str, object]:
        """The next event called `name` (with these fields), waiting up to `timeout` seconds."""
        import queue
        import time as _time

        for event in self.events:
            matches = all(event.get(k) == v for k, v in match.items())
            if event.get("event") == name and matches and not event.get("_seen"):
                event["_seen"] = True
                return event
        deadline = _time.monotonic() + timeout
        while True:
            remaining = deadline - _time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no {name} {match} within {timeout}s; got {[e.get('event') for e in self.events]}\n{''.join(self.stderr_lines[-20:])}"
                )
            try:
                event = self._queue.get(timeout=remaining)
            except queue.Empty:
                continue
            if event is None:
                raise AssertionError(
                    f"launcher exited before {name} {match}:\n{''.join(self.stderr_lines[-30:])}"
                )
            if (
                event.get("event") == name
                and all(event.get(k) == v for k, v in match.items())
                and not event.get("_seen")
            ):
                event["_seen"] = True
                return event

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout=timeout)
        self._close()
        return code

    def _close(self) -> None:
        for reader in self._readers:
            reader.join(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None and not any(r.is_alive() for r in self._readers):
                stream.close()

    def output(self) -> str:
        return "".join(self.stdout_lines) + "".join(self.stderr_lines)

    def stop(self) -> None:
        import signal as _signal

        if self.proc.poll() is None:
            self.proc.send_signal(_signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close()


def alive(pid: int) -> bool:
    """True while a process with this pid exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def read_reports(directory: Path) -> dict[int, dict[str, object]]:
    """Every probe report in `directory`, by pid."""
    import json as _json

    reports = {}
    for path in directory.glob("*.json"):
        data = _json.loads(path.read_text())
        reports[int(data["pid"])] = data
    return reports


def wait_reports(directory: Path, count: int, timeout: float = 60) -> dict[int, dict[str, object]]:
    """`read_reports`, once at least `count` processes have reported (each writes its file
    atomically)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reports = read_reports(directory)
        if len(reports) >= count:
            return reports
        time.sleep(0.02)
    raise AssertionError(f"only {len(read_reports(directory))} of {count} processes reported")


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "reports"
    directory.mkdir()
    return directory


@pytest.fixture
def launch(cli: CLI, probe_dir: Path) -> Iterator[Callable[..., Launcher]]:
    """Start `agent-run ARGS` (JSON logs, probe reports in probe_dir); stopped after the test."""
    started: list[Launcher] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> Launcher:
        full_env = {
            **cli.env,
            "PROBE_DIR": str(probe_dir),
            "AGENT_RUN_LOG_FORMAT": "json",
            **(env or {}),
        }
        launcher = Launcher(list(cli.argv(*args)), full_env, cli.cwd)
        started.append(launcher)
        return launcher

    yield start
    for launcher in started:
        launcher.stop()


@pytest.fixture(scope="session")
def nobody_can_run() -> None:
    """Skip unless root can run the CLI as uid 65534 (tests/as_user.py)."""
    from .as_user import cannot_run_as_nobody

    reason = cannot_run_as_nobody()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def shared_dir(nobody_can_run: None) -> Iterator[Path]:
    """A directory every local user can traverse (pytest's tmp_path is private to root)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="agent-run-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)

"""Nobody else can impersonate or block a launcher's control socket (issue #15).

The squatter tests need a second user: run as root, they start a process as uid 65534
(nobody) that binds the launcher's socket name first, as another local user could in a
shared directory such as /tmp.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from launcher.ops import control
from launcher.ops.status import PoolStatus, as_dict

from .conftest import CLI

NOBODY = 65534

# Binds argv[1] first, answers like a launcher would, and reports what it was sent.
SQUATTER = """
import socket, sys
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(4)
print("ready", flush=True)
conn, _ = server.accept()
conn.settimeout(60)
data = b""
try:
    while b"\\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    if data:
        conn.sendall(b'{"ok": true, "message": "reload succeeded", "status": {"name": "fake", '
                     b'"pid": 1, "secret_set": "prod", "version": 9, "ready_on_current": 0, '
                     b'"workers": [], "rollout": {"state": "idle"}}}\\n')
except OSError:
    pass
print("got:" + data.decode("utf-8", "replace"), flush=True)
"""

# Connects as another user to a socket whose mode was widened by hand.
INTRUDER = """
import socket, sys
client = socket.socket(socket.AF_UNIX)
client.settimeout(60)
client.connect(sys.argv[1])
try:
    client.sendall(b'{"command": "status"}\\n')
except BrokenPipeError:
    pass  # the server may refuse (answer and close) before the request is sent
print(client.recv(65536).decode(), flush=True)
"""


def _python_for_nobody() -> str:
    """An interpreter uid 65534 may run (ours may live under root's 0700 home)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process as another user")
    for candidate in (
        os.path.realpath(sys.executable),
        "/usr/bin/python3",
        "/usr/local/bin/python3",
    ):
        try:
            done = subprocess.run(
                [candidate, "-I", "-c", "pass"], user=NOBODY, group=NOBODY, timeout=60
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0:
            return candidate
    pytest.skip("no Python interpreter that uid 65534 may run")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory like /tmp (1777), reachable by every user; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="agent-run-shared-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _refused(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert text in result.stderr, result.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["status", "--name", "prod"],
        ["reload", "--name", "prod"],
        ["sessions", "start", "--name", "prod", "--body", '{"token": "s3cr3t"}'],
    ],
)
def test_client_refuses_a_squatter_and_sends_it_nothing(
    cli: CLI, shared_dir: Path, command: list[str]
) -> None:
    """Another user's socket under the launcher's name: exit 77, and it receives no request."""
    python = _python_for_nobody()
    squatter = subprocess.Popen(
        [python, "-I", "-c", SQUATTER, str(shared_dir / "prod.sock")],
        user=NOBODY,
        group=NOBODY,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert squatter.stdout is not None
        assert squatter.stdout.readline().strip() == "ready"
        result = cli(*command, env={"AGENT_RUN_RUNTIME_DIR": str(shared_dir)})
        _refused(result, 77, f"served by uid {NOBODY}")
        assert "fake" not in result.stdout
        out, _ = squatter.communicate(timeout=60)
        assert out.strip() == "got:"  # the connection closed before any byte was sent
    finally:
        squatter.kill()
        squatter.wait()


def test_launcher_refuses_a_shared_runtime_directory(cli: CLI, shared_dir: Path) -> None:
    """A runtime directory others can write (1777) is refused before any worker starts: 77."""
    result = cli("--restart", "never", "--", "true", env={"AGENT_RUN_RUNTIME_DIR": str(shared_dir)})
    _refused(result, 77, "writable by other users")
    assert "worker_started" not in result.stderr


def test_launcher_refuses_another_users_runtime_directory(cli: CLI, tmp_path: Path) -> None:
    """A runtime directory owned by another user (even 0700) is refused (77) with a per-user
    name that then works."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory to another user")
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o700)
    os.chown(foreign, NOBODY, NOBODY)
    result = cli("--restart", "never", "--", "true", env={"AGENT_RUN_RUNTIME_DIR": str(foreign)})
    own = f"{foreign}-{os.geteuid()}"
    _refused(result, 77, f"belongs to uid {NOBODY}")
    assert f"AGENT_RUN_RUNTIME_DIR to one, e.g. {own} " in result.stderr
    result = cli("status", env={"AGENT_RUN_RUNTIME_DIR": str(foreign)})
    assert "Traceback" not in result.stderr
    # The suggested per-user name works as given.
    result = cli("--restart", "never", "--", "true", env={"AGENT_RUN_RUNTIME_DIR": own})
    assert result.returncode == 0, result.stderr
    assert os.stat(own).st_mode & 0o777 == 0o700


def test_a_private_runtime_directory_cannot_be_squatted(shared_dir: Path) -> None:
    """The launcher's own directory is created 0700: another user cannot bind a name in it."""
    from launcher.ops import runtime_dir

    store = shared_dir / "store"
    store.mkdir(mode=0o755)
    run = store / "run"
    runtime_dir.make_private(str(run))
    assert run.stat().st_mode & 0o777 == 0o700
    python = _python_for_nobody()
    attempt = subprocess.run(
        [python, "-I", "-c", SQUATTER, str(run / "prod.sock")],
        user=NOBODY,
        group=NOBODY,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert attempt.returncode != 0 and "PermissionError" in attempt.stderr
    assert not (run / "prod.sock").exists()


def _status() -> dict[str, Any]:
    return as_dict(PoolStatus(name="prod", pid=1, secret_set="prod", version=3, workers=()))


@pytest.mark.anyio
async def test_server_answers_only_its_own_user(tmp_path: Path) -> None:
    """A client of another uid (socket mode widened by hand) gets "not allowed", no status."""
    python = _python_for_nobody()
    base = Path(tempfile.mkdtemp(prefix="agent-run-server-", dir="/tmp"))
    try:
        base.chmod(0o711)

        async def reload() -> dict[str, Any]:
            return {"ok": True}

        handlers = control.Handlers(status=_status, reload=reload)
        async with control.serving(base / "run", "prod", handlers) as path:
            (base / "run").chmod(0o711)
            path.chmod(0o666)
            intruder = await anyio.to_thread.run_sync(
                lambda: subprocess.run(
                    [python, "-I", "-c", INTRUDER, str(path)],
                    user=NOBODY,
                    group=NOBODY,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
            )
            own = await anyio.to_thread.run_sync(control.request, path, "status")
        assert intruder.returncode == 0, intruder.stderr
        assert "not allowed" in intruder.stdout and "prod" not in intruder.stdout
        assert own["ok"] is True and own["status"]["name"] == "prod"
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_socket_paths_too_long_for_af_unix_are_refused_up_front(cli: CLI, tmp_path: Path) -> None:
    """status/reload and the launcher name the 107-byte limit instead of failing in connect."""
    deep = tmp_path / ("d" * 60)
    deep.mkdir(mode=0o700)
    env = {"AGENT_RUN_RUNTIME_DIR": str(deep)}
    name = "n" * 64
    for command in (["status", "--name", name], ["reload", "--name", name]):
        _refused(cli(*command, env=env), 78, "107")
    result = cli("--name", name, "--restart", "never", "--", "true", env=env)
    _refused(result, 78, "107")
    assert "worker_started" not in result.stderr
    # The default name (the set's): the agent still runs, without a control socket, as before.
    assert cli("secrets", "set", "s" * 60, "K=1").returncode == 0
    result = cli("--secrets", "s" * 60, "--restart", "never", "--", "true", env=env)
    assert result.returncode == 0, result.stderr
    _refused(cli("status", "--name", "x" * 300), 65, "launcher name")

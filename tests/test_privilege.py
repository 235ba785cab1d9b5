"""Least privilege: a worker gets its own secrets and nothing else (issue #17).

Each test starts a real launcher whose worker (tests/agents/spy.py) tries every route to
what is not its own: the launcher's /proc/<pid>/environ and /proc/<pid>/mem, the key file,
the store, other sets, the control socket. The tests run as root, so the "same uid" case
runs the launcher itself as an unprivileged user, and `--user` drops the workers of a root
launcher to one.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .as_user import NOBODY, as_uid, interpreter_for
from .conftest import Launcher

AGENTS = Path(__file__).parent / "agents"
SPY = AGENTS / "spy.py"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")


@pytest.fixture
def base() -> Iterator[Path]:
    """A directory every user can enter (not pytest's 0700 tmp): only the store's own modes
    may keep the worker out. Short, for AF_UNIX paths."""
    path = Path(tempfile.mkdtemp(prefix="ar-priv-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _env(base: Path, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "AGENT_RUN_HOME": str(base / "store"),
        "AGENT_RUN_LOG_FORMAT": "json",
        "SPY_REPORT": str(base / "report" / "spy.json"),
        "TMPDIR": str(base),
    }
    _interpreter()
    env["PYTHONPATH"] = interpreter_for(NOBODY)[1]  # type: ignore[index]
    env.update(extra)
    return env


def _interpreter() -> str:
    """A Python the unprivileged workers (uid NOBODY) can run; skip when there is none."""
    found = interpreter_for(NOBODY)
    if found is None:
        pytest.skip("no Python this package runs on is executable by an unprivileged user")
    return found[0]


def _as_nobody() -> dict[str, object]:
    return as_uid(NOBODY)


def _cli(base: Path, env: dict[str, str], *args: str, nobody: bool = False) -> None:
    result = subprocess.run(
        [_interpreter(), "-m", "launcher", *args],
        env=env,
        cwd=base,
        capture_output=True,
        text=True,
        timeout=60,
        **(_as_nobody() if nobody else {}),  # type: ignore[arg-type]
    )
    assert result.returncode == 0, result.stderr


def _spy_report(base: Path, env: dict[str, str], *args: str, nobody: bool) -> dict[str, object]:
    """Run the launcher with the spy as its worker; the spy's report once it has written it."""
    report = base / "report"
    report.mkdir()
    report.chmod(0o777)  # the spy writes here, whoever it runs as
    proc = subprocess.Popen(
        [_interpreter(), "-m", "launcher", *args, "--", _interpreter(), str(SPY)],
        env=env,
        cwd=base,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **(_as_nobody() if nobody else {}),  # type: ignore[arg-type]
    )
    try:
        deadline = time.monotonic() + 60
        path = report / "spy.json"
        while not path.exists():
            if proc.poll() is not None:
                raise AssertionError(f"launcher exited {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                raise AssertionError("the spy did not report")
            time.sleep(0.05)
        data: dict[str, object] = json.loads(path.read_text())
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    data["launcher_log"] = stderr
    return data


def test_same_uid_worker_cannot_read_the_key_from_the_launchers_proc_entries(
    base: Path,
) -> None:
    """A worker of the launcher's own uid reads neither its environ nor its mem (the key)."""
    import base64

    key = base64.b64encode(os.urandom(32)).decode()
    os.chown(base, NOBODY, NOBODY)
    env = _env(base, AGENT_RUN_MASTER_KEY=key)
    _cli(base, env, "secrets", "set", "prod", "API_KEY=sk-own-0042", nobody=True)
    report = _spy_report(base, env, "--secrets", "prod", nobody=True)
    assert report["uid"] == NOBODY
    assert report["env"]["API_KEY"] == "sk-own-0042"  # type: ignore[index]
    assert "AGENT_RUN_MASTER_KEY" not in report["env"]  # type: ignore[operator]
    routes: dict[str, str] = report["routes"]  # type: ignore[assignment]
    assert [v for k, v in routes.items() if k.endswith("/environ")] == ["denied"]
    assert [v for k, v in routes.items() if k.endswith("/mem")] == ["denied"]
    assert key not in json.dumps(report)


def test_root_launcher_hides_the_key_from_its_own_proc_environ(base: Path) -> None:
    """The key is overwritten in the launcher's /proc/<pid>/environ, which root can read."""
    import base64

    key = base64.b64encode(os.urandom(32)).decode()
    env = _env(base, AGENT_RUN_MASTER_KEY=key)
    _cli(base, env, "secrets", "set", "prod", "API_KEY=sk-own-0042")
    report = _spy_report(base, env, "--secrets", "prod", nobody=False)
    routes: dict[str, str] = report["routes"]  # type: ignore[assignment]
    environ = next(v for k, v in routes.items() if k.endswith("/environ"))
    assert environ.startswith("read:") and "AGENT_RUN_MASTER_KEY=" in environ  # root reads it
    assert key not in environ
    assert report["env"]["API_KEY"] == "sk-own-0042"  # type: ignore[index]


def test_worker_under_user_gets_its_secrets_and_nothing_else(base: Path) -> None:
    """--user: the worker runs as that user without groups; notify, private files and file
    secrets (owned by it) work;
    the key file, the store, another set and the control socket are out of its reach."""
    env = _env(base)  # the key is the store's own master.key, created by the first set
    (base / "creds.json").write_text('{"private_key": "file-own-0042"}')
    _cli(base, env, "secrets", "set", "prod", "API_KEY=sk-own-0042",
         "--file", f"GOOGLE_CREDS={base / 'creds.json'}")  # fmt: skip
    _cli(base, env, "secrets", "set", "other", "OTHER_KEY=sk-not-yours-0099")
    (base / "cfg.tmpl").write_text('{"key": "${secret:API_KEY}"}')
    store = base / "store"
    key_file = store / "master.key"
    assert key_file.exists()
    env["SPY_TRY"] = os.pathsep.join(
        [str(store), str(key_file), str(store / "other"), str(store / "run"),
         str(store / "run" / "prod.sock")]
    )  # fmt: skip
    (base / "report").mkdir(mode=0o777)
    (base / "report").chmod(0o777)
    launcher = Launcher(
        [_interpreter(), "-m", "launcher", "--user", f"{NOBODY}:{NOBODY}", "--secrets", "prod",
         "--ready", "notify", "--render", "cfg.tmpl:cfg.json", "--", _interpreter(), str(SPY)],
        env, base,
    )  # fmt: skip
    try:
        launcher.wait_event("worker_ready", timeout=60)  # its READY=1 reached the launcher
        report = json.loads((base / "report" / "spy.json").read_text())
    finally:
        launcher.stop()
    assert launcher.proc.returncode == 0
    assert (report["uid"], report["gid"], report["groups"]) == (NOBODY, NOBODY, [])
    assert report["env"]["API_KEY"] == "sk-own-0042"
    # Its identity is the user's (the launcher's HOME here is `base`), as su and User= give.
    account = pwd.getpwuid(NOBODY)
    identity = {name: report["env"].get(name) for name in ("HOME", "USER", "LOGNAME")}
    assert identity == {"HOME": account.pw_dir, "USER": account.pw_name, "LOGNAME": account.pw_name}
    assert report["notified"] is True
    assert report["files"] == {
        "cfg.json": ['read:{"key": "sk-own-0042"}', NOBODY],
        "GOOGLE_CREDS": ['read:{"private_key": "file-own-0042"}', NOBODY],
    }
    assert report["env"]["GOOGLE_CREDS"] == os.path.join(
        report["env"]["AGENT_RUN_FILES"], "GOOGLE_CREDS"
    )
    routes: dict[str, str] = report["routes"]  # type: ignore[assignment]
    assert set(routes.values()) == {"denied"}, routes
    assert "sk-not-yours-0099" not in json.dumps(report)
    assert key_file.read_bytes().decode() not in json.dumps(report)


def test_user_needs_a_root_launcher(base: Path) -> None:
    """AGENT_RUN_USER from a launcher that is not root: one line, exit 77, nothing started."""
    os.chown(base, NOBODY, NOBODY)
    env = _env(base, AGENT_RUN_USER="root")
    result = subprocess.run(
        [_interpreter(), "-m", "launcher", "--", "true"],
        env=env, cwd=base, capture_output=True, text=True, timeout=60, **_as_nobody(),  # type: ignore[arg-type]
    )  # fmt: skip
    assert result.returncode == 77
    assert result.stderr.count("\n") == 1 and "root" in result.stderr


def test_unknown_user_is_a_usage_error(base: Path) -> None:
    """--user naming no user of the host: exit 2, one line."""
    result = subprocess.run(
        [_interpreter(), "-m", "launcher", "--user", "no-such-user-17", "--", "true"],
        env=_env(base), cwd=base, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "no-such-user-17" in result.stderr


def test_worker_under_user_owns_its_terminal(base: Path) -> None:
    """--user with a terminal on the launcher's stdout: the worker's pty is the worker's."""
    env = _env(base)
    _cli(base, env, "secrets", "set", "prod", "API_KEY=sk-own-0042")
    (base / "report").mkdir()
    (base / "report").chmod(0o777)
    master, replica = os.openpty()
    proc = subprocess.Popen(
        [_interpreter(), "-m", "launcher", "--user", str(NOBODY), "--secrets", "prod",
         "--", _interpreter(), str(SPY)],
        env=env, cwd=base, stdin=subprocess.DEVNULL, stdout=replica, stderr=subprocess.PIPE,
    )  # fmt: skip
    os.close(replica)
    try:
        path = base / "report" / "spy.json"
        deadline = time.monotonic() + 60
        while not path.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no report"
            time.sleep(0.05)
        report = json.loads(path.read_text())
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
        os.close(master)
    assert report["uid"] == NOBODY
    assert report["tty_owner"] == NOBODY


def test_session_processes_under_user_get_their_secrets_and_nothing_else(base: Path) -> None:
    """Session mode with --user, the launcher holding only the capabilities the deployment
    files grant: the warm process that serves a session runs as the user without groups and
    has the set's secrets; the launcher's /proc entries, the key file, the store, another
    set and the control socket are out of its reach."""
    import httpx

    from launcher.privilege import CAPABILITIES

    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (util-linux) to bound the launcher's capabilities")
    bounded = ["setpriv", "--bounding-set=-all," + ",".join(f"+{c.lower()}" for c in CAPABILITIES)]

    env = _env(base)
    _cli(base, env, "secrets", "set", "prod", "API_KEY=sk-own-0042")
    _cli(base, env, "secrets", "set", "other", "OTHER_KEY=sk-not-yours-0099")
    store = base / "store"
    key_file = store / "master.key"
    env["SPY_TRY"] = os.pathsep.join(
        [str(store), str(key_file), str(store / "other.set"), str(store / "run"),
         str(store / "run" / "prod.sock")]
    )  # fmt: skip
    (base / "report").mkdir()
    (base / "report").chmod(0o777)
    launcher = Launcher(
        [*bounded, "--", _interpreter(), "-m", "launcher", "--user", f"{NOBODY}:{NOBODY}",
         "--secrets", "prod", "--mode", "session", "--listen", "127.0.0.1:0", "--idle", "1", "--no-watch",
         str(AGENTS / "session_spy.py")],
        env, base,
    )  # fmt: skip
    try:
        address = launcher.wait_event("sessions_listening", timeout=60)["address"]
        answer = httpx.post(f"http://{address}/sessions", json={}, timeout=60)
        assert answer.status_code == 201, answer.text
        path = base / "report" / "spy.json"
        deadline = time.monotonic() + 60
        while not path.exists():
            assert launcher.proc.poll() is None and time.monotonic() < deadline, "no report"
            time.sleep(0.05)
        report = json.loads(path.read_text())
    finally:
        launcher.stop()
    assert launcher.proc.returncode == 0
    assert answer.json()["warm"] is True and report["session_id"] == answer.json()["id"]
    assert (report["uid"], report["gid"], report["groups"]) == (NOBODY, NOBODY, [])
    assert report["env"]["API_KEY"] == "sk-own-0042"
    routes: dict[str, str] = report["routes"]
    assert len(routes) == 7 and set(routes.values()) == {"denied"}, routes
    assert "sk-not-yours-0099" not in json.dumps(report)
    assert key_file.read_bytes().decode() not in json.dumps(report)


def test_user_naming_the_launchers_own_user_changes_nothing(base: Path) -> None:
    """AGENT_RUN_USER naming the (non-root) launcher's own uid: nothing to drop, the worker
    runs as that user (the image's AGENT_RUN_USER=agent under `docker run --user 10001`)."""
    os.chown(base, NOBODY, NOBODY)
    env = _env(base, AGENT_RUN_USER=str(NOBODY))
    _cli(base, env, "secrets", "set", "prod", "API_KEY=sk-own-0042", nobody=True)
    report = _spy_report(base, env, "--secrets", "prod", nobody=True)
    assert report["uid"] == NOBODY and report["env"]["API_KEY"] == "sk-own-0042"  # type: ignore[index]

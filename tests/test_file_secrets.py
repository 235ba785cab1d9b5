"""File secrets (`secrets set --file NAME=PATH`): a private copy per process, its path in NAME,
swapped by a rollout, gone when the process is, even after SIGKILL of the launcher (#17)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import CLI, PROBE, Launcher, read_reports

NOTIFY = {"PROBE_NOTIFY": "1"}
CREDS = json.dumps(
    {"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIEv-file-0042\\n"},
    indent=2,
)


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR: the private-file base of this test's launchers only."""
    path = Path(tempfile.mkdtemp(prefix="ar-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _report(probe_dir: Path, pid: int, timeout: float = 30) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = read_reports(probe_dir).get(pid)
        if report is not None:
            return report["env"]  # type: ignore[return-value]
        time.sleep(0.02)
    raise AssertionError(f"probe {pid} did not report")


def _start(cli: CLI, launch: Callable[..., Launcher], runtime_dir: Path) -> Launcher:
    (cli.cwd / "sa.json").write_text(CREDS)
    result = cli("secrets", "set", "prod", "API_KEY=sk-plain-0042",
                 "--file", "GOOGLE_APPLICATION_CREDENTIALS=sa.json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    (cli.cwd / "sa.json").unlink()  # the store holds it now, sealed
    return launch("--secrets", "prod", "--ready", "notify", str(PROBE),
                  env={**NOTIFY, "XDG_RUNTIME_DIR": str(runtime_dir)})  # fmt: skip


def test_file_secret_reaches_the_worker_as_a_private_file_and_leaves_with_it(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, runtime_dir: Path, store_dir: Path
) -> None:
    """The variable holds the path of a 0600 copy outside store and cwd; gone after exit."""
    launcher = _start(cli, launch, runtime_dir)
    pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
    env = _report(probe_dir, pid)
    path = Path(env["GOOGLE_APPLICATION_CREDENTIALS"])
    assert path.read_text() == CREDS
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.is_relative_to(runtime_dir)
    assert not path.is_relative_to(store_dir) and not path.is_relative_to(cli.cwd)
    assert env["API_KEY"] == "sk-plain-0042"
    assert not any("MIIEv-file-0042" in value for value in env.values())  # not in the env
    listing = cli("secrets", "list", "prod")
    assert "delivery=file" in listing.stdout and "MIIEv" not in listing.stdout
    launcher.stop()
    assert launcher.proc.returncode == 0
    assert not path.exists() and not path.parent.exists()
    assert "MIIEv-file-0042" not in launcher.output()


def test_rollout_swaps_the_file_and_the_old_one_goes_with_its_process(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, runtime_dir: Path
) -> None:
    """A new content reaches the replacement in its own file; the old file leaves with the old
    process (never rewritten under it)."""
    launcher = _start(cli, launch, runtime_dir)
    old_pid = int(launcher.wait_event("worker_ready", version=1)["pid"])  # type: ignore[call-overload]
    old = Path(_report(probe_dir, old_pid)["GOOGLE_APPLICATION_CREDENTIALS"])
    (cli.cwd / "sa2.json").write_text(CREDS.replace("0042", "0043"))
    result = cli("secrets", "set", "prod", "--file", "GOOGLE_APPLICATION_CREDENTIALS=sa2.json")
    assert result.returncode == 0, result.stderr
    launcher.wait_event("rollout_succeeded", to_version=2)
    new_pid = int(launcher.wait_event("worker_ready", version=2)["pid"])  # type: ignore[call-overload]
    new = Path(_report(probe_dir, new_pid)["GOOGLE_APPLICATION_CREDENTIALS"])
    assert new != old
    assert new.read_text() == CREDS.replace("0042", "0043")
    launcher.wait_event("worker_drained", pid=old_pid)
    assert not old.exists()


def test_files_of_a_sigkilled_launcher_are_swept_at_the_next_start(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, runtime_dir: Path
) -> None:
    """SIGKILL of the launcher leaves no file secret behind once the next launcher starts."""
    launcher = _start(cli, launch, runtime_dir)
    pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
    path = Path(_report(probe_dir, pid)["GOOGLE_APPLICATION_CREDENTIALS"])
    launcher.proc.send_signal(signal.SIGKILL)
    launcher.wait()
    result = cli("--restart", "never", "--", sys.executable, "-c", "pass",
                 env={"XDG_RUNTIME_DIR": str(runtime_dir)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not path.exists()
    assert list((runtime_dir / "agent-run-files").iterdir()) == []
    with pytest.raises(ProcessLookupError):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the worker died with it (parent-death signal)
            os.kill(pid, 0)
            time.sleep(0.02)


@pytest.mark.parametrize(
    ("spec", "code", "message"),
    [
        ("GOOGLE_CREDS=missing.json", 65, "does not exist"),
        ("GOOGLE_CREDS=big.json", 65, "larger than"),
        ("google-creds=sa.json", 65, "google-creds"),
        ("GOOGLE_CREDS", 2, "NAME=PATH"),
    ],
)
def test_bad_file_secrets_are_refused_before_anything_is_stored(
    cli: CLI, spec: str, code: int, message: str
) -> None:
    """A missing or oversized file, a bad name, a malformed spec: one line, nothing stored."""
    (cli.cwd / "sa.json").write_text(CREDS)
    (cli.cwd / "big.json").write_text("x" * (16 * 1024 + 1))
    result = cli("secrets", "set", "prod", "--file", spec)
    assert result.returncode == code, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert cli("secrets", "list").stdout.count("prod") == 0

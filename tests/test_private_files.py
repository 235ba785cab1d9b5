"""--render and private per-process files: private, per process, gone when the process is."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher.process.private_files import LOCK, PrivateFiles, sweep_stale

from .conftest import CLI, PROBE, Launcher, read_reports

NOTIFY = {"PROBE_NOTIFY": "1"}
TEMPLATE = '{"api_key": "${secret:API_KEY}", "region": "eu"}\n'


@pytest.fixture
def runtime_dir() -> Iterator[Path]:
    """A private XDG_RUNTIME_DIR, so each test sees only its own launchers' trees (short:
    the launcher binds its notify socket there too, and AF_UNIX paths are short)."""
    path = Path(tempfile.mkdtemp(prefix="ar-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _files_dir(probe_dir: Path, pid: int, timeout: float = 30) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = read_reports(probe_dir).get(pid)
        if report is not None:
            return Path(report["env"]["AGENT_RUN_FILES"])  # type: ignore[index]
        time.sleep(0.02)
    raise AssertionError(f"probe {pid} did not report")


def _render_launch(
    cli: CLI, launch: Callable[..., Launcher], runtime_dir: Path, *extra: str
) -> Launcher:
    cli("secrets", "set", "prod", "API_KEY=sk-rendered-0042")
    (cli.cwd / "config.tmpl").write_text(TEMPLATE)
    return launch(
        "--secrets", "prod", "--render", "config.tmpl:config.json", "--ready", "notify", *extra,
        str(PROBE), env={**NOTIFY, "XDG_RUNTIME_DIR": str(runtime_dir)},
    )  # fmt: skip


def test_rendered_file_is_private_to_its_process_and_removed_at_exit(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, runtime_dir: Path
) -> None:
    """Each worker gets its own 0700 dir with a 0600 rendered file; all gone after shutdown."""
    launcher = _render_launch(cli, launch, runtime_dir, "--workers", "2")
    pids = [int(launcher.wait_event("worker_ready")["pid"]) for _ in range(2)]  # type: ignore[call-overload]
    dirs = [_files_dir(probe_dir, pid) for pid in pids]
    assert dirs[0] != dirs[1]
    for directory in dirs:
        assert directory.is_relative_to(runtime_dir)
        rendered = directory / "config.json"
        assert rendered.read_text() == TEMPLATE.replace("${secret:API_KEY}", "sk-rendered-0042")
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(rendered.stat().st_mode) == 0o600
        assert rendered.stat().st_uid == directory.stat().st_uid == os.geteuid()
    assert "sk-rendered-0042" not in (cli.cwd / "config.tmpl").read_text()
    launcher.stop()
    assert launcher.proc.returncode == 0
    assert not any(d.exists() for d in dirs)
    assert list((runtime_dir / "agent-run-files").iterdir()) == []


def test_rendered_files_of_a_sigkilled_worker_are_removed(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, runtime_dir: Path
) -> None:
    """A worker killed with SIGKILL loses its files at reap; its replacement gets fresh ones."""
    launcher = _render_launch(cli, launch, runtime_dir)
    pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
    directory = _files_dir(probe_dir, pid)
    assert (directory / "config.json").exists()
    os.kill(pid, signal.SIGKILL)
    launcher.wait_event("worker_exited", pid=pid)
    assert not directory.exists()
    restarted = int(launcher.wait_event("worker_restarted")["pid"])  # type: ignore[call-overload]
    fresh = _files_dir(probe_dir, restarted)
    assert fresh != directory and (fresh / "config.json").exists()


def test_trees_of_a_sigkilled_launcher_are_swept_at_the_next_start(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, runtime_dir: Path
) -> None:
    """A launcher killed with SIGKILL leaves its tree; the next launcher removes it."""
    launcher = _render_launch(cli, launch, runtime_dir)
    pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
    tree = _files_dir(probe_dir, pid).parent
    launcher.proc.kill()
    launcher.wait()
    assert tree.exists()
    result = cli("--restart", "never", "--", sys.executable, "-c", "pass",
                 env={"XDG_RUNTIME_DIR": str(runtime_dir)})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert not tree.exists()


def test_sweep_leaves_the_trees_of_live_launchers(tmp_path: Path) -> None:
    """Only a tree whose lock nobody holds is stale; a live launcher's lock protects its own."""
    base = str(tmp_path / "base")
    # A live "launcher": another process holding its tree's lock until told to stop.
    holder = subprocess.Popen(
        [sys.executable, "-c", (
            "import sys; from launcher.process.private_files import PrivateFiles\n"
            f"files = PrivateFiles({base!r}); print(files.create({{'f': b'x'}}), flush=True)\n"
            "sys.stdin.read()"
        )],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None and holder.stdin is not None
    live = Path(holder.stdout.readline().strip()).parent
    dead = Path(base) / "999999999"  # a pid that cannot exist, its lock file free
    dead.mkdir()
    (dead / LOCK).touch()
    assert sweep_stale(base) == [str(dead)]
    assert live.exists()
    holder.stdin.close()
    holder.wait(timeout=30)
    holder.stdout.close()
    assert not live.exists()  # the holder removed its own tree at exit


def test_unsafe_base_directory_is_refused(tmp_path: Path) -> None:
    """A base directory readable by others (someone else's /dev/shm entry) is refused (77)."""
    from launcher.errors import PermissionProblem

    base = tmp_path / "open"
    base.mkdir(mode=0o755)
    base.chmod(0o755)
    with pytest.raises(PermissionProblem, match="not a private directory"):
        PrivateFiles(str(base)).prepare()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("config.tmpl", "TEMPLATE:DEST"),
        ("config.tmpl:../x.json", "file name"),
        ("config.tmpl:.hidden", "file name"),
        ("config.tmpl:", "file name"),
    ],
)
def test_bad_render_options_are_usage_errors(cli: CLI, spec: str, message: str) -> None:
    """A malformed --render is exit 2 with one line; a missing template is 65."""
    (cli.cwd / "config.tmpl").write_text("x")
    result = cli("--render", spec, "--", sys.executable, "-c", "pass")
    assert result.returncode == 2 and message in result.stderr
    missing = cli("--render", "nope.tmpl:c.json", "--", sys.executable, "-c", "pass")
    assert missing.returncode == 65 and "nope.tmpl does not exist" in missing.stderr


def test_template_with_unknown_reference_exits_65(cli: CLI) -> None:
    """A template that references a missing secret names the template, line and secret."""
    cli("secrets", "set", "prod", "A=1")
    (cli.cwd / "config.tmpl").write_text("ok\nkey=${secret:API_KEY}\n")
    result = cli("--secrets", "prod", "--render", "config.tmpl:c.ini", "--", "true")
    assert result.returncode == 65
    assert "config.tmpl: line 2 references secret API_KEY" in result.stderr

"""One worker process: fork/exec, process group, parent-death signal, stop once, exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from launcher.process import worker as process
from launcher.process.output import Masker

from .conftest import wait_gone

AGENTS = Path(__file__).parent / "agents"
ROOT = Path(__file__).parent.parent


def _read_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line, "the spawner ended early"
    return line.strip()


@pytest.fixture
def run_child() -> Iterator[list[int]]:
    """Pids spawned by a test, SIGKILLed and reaped afterwards."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _capture(argv: list[str], **kwargs: object) -> tuple[int, str]:
    """Run argv with fork_exec, its stdout into a pipe; (exit code, output)."""
    read_end, write_end = os.pipe()
    pid = process.fork_exec(argv, os.environ, stdin=0, stdout=write_end, stderr=None, **kwargs)  # type: ignore[arg-type]
    os.close(write_end)
    output = b""
    while chunk := os.read(read_end, 4096):
        output += chunk
    os.close(read_end)
    _, status = os.waitpid(pid, 0)
    return process.exit_code(status), output.decode()


def test_child_runs_in_its_own_process_group() -> None:
    """A worker leads its own process group, so its sub-processes can be stopped with it."""
    code, output = _capture(
        [sys.executable, "-c", "import os; print(os.getpgid(0) == os.getpid() != os.getppid())"]
    )
    assert (code, output.strip()) == (0, "True")


def test_child_gets_default_signal_dispositions() -> None:
    """SIGPIPE is not left ignored (as Python sets it) and our handlers do not leak into the child."""
    previous = signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        code, output = _capture(["grep", "-E", "^Sig(Ign|Cgt|Blk)", "/proc/self/status"])
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert code == 0
    masks = dict(line.split(":\t") for line in output.strip().splitlines())
    for name in ("SigIgn", "SigBlk"):
        bits = int(masks[name], 16)
        for sig in (signal.SIGPIPE, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            assert not bits & (1 << (sig - 1)), (name, sig)


def test_only_passed_fds_are_inherited() -> None:
    """An inheritable fd of the launcher is closed in the worker; pass_fds stay open."""
    stray_r, stray_w = os.pipe()
    keep_r, keep_w = os.pipe()
    os.set_inheritable(stray_r, True)
    try:
        code, output = _capture(
            [
                sys.executable,
                "-c",
                "import os; print(sorted(map(int, os.listdir('/proc/self/fd'))))",
            ],
            pass_fds=(keep_r,),
        )
    finally:
        for fd in (stray_r, stray_w, keep_r, keep_w):
            os.close(fd)
    fds = eval(output)  # a list of ints printed by the child
    assert code == 0
    assert keep_r in fds
    assert stray_r not in fds and stray_w not in fds and keep_w not in fds


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["agent-run-no-such-command"], FileNotFoundError),
        (["{tmp}/not-executable"], PermissionError),
        (["./does/not/exist"], FileNotFoundError),
    ],
)
def test_a_command_that_cannot_run_raises(
    argv: list[str], error: type[OSError], tmp_path: Path
) -> None:
    """A missing or non-executable command is an OSError in the launcher, not a dead child."""
    (tmp_path / "not-executable").write_text("#!/bin/sh\n")
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    with pytest.raises(error):
        process.fork_exec(argv, os.environ, stdin=0, stdout=None, stderr=None)


def test_the_command_is_found_on_the_workers_path(tmp_path: Path) -> None:
    """A bare command name is searched on the PATH of the worker's environment."""
    tool = tmp_path / "my-agent"
    tool.write_text("#!/bin/sh\necho from-path\n")
    tool.chmod(0o755)
    read_end, write_end = os.pipe()
    env = {**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin"}
    pid = process.fork_exec(["my-agent"], env, stdin=0, stdout=write_end, stderr=None)
    os.close(write_end)
    assert os.read(read_end, 100) == b"from-path\n"
    os.close(read_end)
    assert os.waitpid(pid, 0)[1] == 0


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("raise SystemExit(0)", 0),
        ("raise SystemExit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + 15),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
    ],
)
def test_exit_codes_as_a_shell_reports_them(script: str, expected: int) -> None:
    """An exit code passes through; death by signal N is 128+N."""
    code, _ = _capture([sys.executable, "-c", script])
    assert code == expected


def test_worker_dies_with_its_launcher() -> None:
    """When the launcher is SIGKILLed, the parent-death signal takes its worker down too."""
    spawner = subprocess.Popen(
        [sys.executable, str(AGENTS / "spawner.py"), sys.executable, "-c",
         "import time; time.sleep(1000)"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        child = int(_read_line(spawner).split()[1])
        os.kill(child, 0)  # it runs
        spawner.kill()
        spawner.wait(timeout=30)
        wait_gone(child)
    finally:
        spawner.kill()
        spawner.wait()
        assert spawner.stdout is not None
        spawner.stdout.close()


def test_subreaper_collects_orphaned_grandchildren() -> None:
    """A subreaper launcher reaps the orphan its worker left, by pid, with its status."""
    script = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(0.3); os._exit(7)\n"  # the grandchild outlives its parent
        "print(os.getpid(), flush=True)\n"
    )
    spawner = subprocess.Popen(
        [sys.executable, str(AGENTS / "spawner.py"), sys.executable, "-c", script],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "SPAWNER_SUBREAPER": "1"},
    )  # fmt: skip
    try:
        assert _read_line(spawner) == "subreaper True"
        child = int(_read_line(spawner).split()[1])
        worker_pid = int(_read_line(spawner))
        assert worker_pid == child
        reaped = {}
        while len(reaped) < 2:
            _, pid, code = _read_line(spawner).split()
            reaped[int(pid)] = int(code)
        assert reaped[child] == 0
        (orphan,) = set(reaped) - {child}
        assert reaped[orphan] == 7  # the orphan's own status, collected by us
    finally:
        spawner.kill()
        spawner.wait()
        assert spawner.stdout is not None
        spawner.stdout.close()


def test_stop_signals_the_main_process_once_and_kill_group_ends_the_rest(
    run_child: list[int], tmp_path: Path
) -> None:
    """stop() sends one signal to the main process only; kill_group() SIGKILLs its sub-processes."""
    report = tmp_path / "terms"
    script = (
        "import os, signal, subprocess, sys, time\n"
        f"path = {str(report)!r}\n"
        "sub = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1000)'])\n"
        "def on_term(*_):\n"
        "    with open(path, 'a') as f: f.write('term\\n')\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "print(sub.pid, flush=True)\n"
        "while True: time.sleep(1)\n"
    )
    worker = process.spawn(
        [sys.executable, "-c", script], os.environ, slot=0, version=None,
        masker=None, on_line=lambda line: lines.append(line),
    )  # fmt: skip
    lines: list[bytes] = []
    run_child.append(worker.pid)
    deadline = time.monotonic() + 30
    while not lines:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    grandchild = int(lines[0])
    worker.stop(signal.SIGTERM)
    worker.stop(signal.SIGTERM)  # a second stop request must not signal again
    while not report.exists() or not report.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(grandchild, 0)  # the group was not signalled: the sub-process still runs
    worker.kill_group()
    _, status = os.waitpid(worker.pid, 0)
    worker.reaped(status)
    run_child.clear()
    assert report.read_text() == "term\n"
    assert worker.exit_code == 128 + signal.SIGKILL
    wait_gone(grandchild)


def test_spawn_relays_masked_output_of_a_real_worker(tmp_path: Path) -> None:
    """spawn() with a masker relays the worker's stdout masked to the launcher's stdout."""
    script = tmp_path / "relay_probe.py"
    script.write_text(
        "import os, sys\n"
        "from launcher.process import worker as process\n"
        "from launcher.process.output import Masker\n"
        "worker = process.spawn([sys.executable, '-c', 'print(\"value=hunter2-secret\")'],\n"
        "    os.environ, slot=0, version=None, masker=Masker(['hunter2-secret']))\n"
        "os.waitpid(worker.pid, 0)\n"
        "worker.relay.wait(30)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "value=***\n"


def test_unused_masker_is_falsy() -> None:
    """A masker without values masks nothing (the relay passes bytes through)."""
    masker = Masker([])
    assert masker.mask(b"plain") == b"plain"

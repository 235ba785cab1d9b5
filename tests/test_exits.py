"""Exit reasons (#19): every exit says why, in logs, `status`, /metrics and rollout results."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from launcher.supervision.exits import ExitKind, classify

from .conftest import CLI, PROBE, Launcher

NOTIFY = {"PROBE_NOTIFY": "1"}
TERM = signal.SIGTERM


def _exited(code: int) -> int:
    return code << 8


def _signalled(number: int) -> int:
    return number


@pytest.mark.parametrize(
    ("status", "facts", "kind", "text"),
    [
        (_exited(0), {"ready": True}, ExitKind.CLEAN, "clean"),
        (_signalled(TERM), {"ready": True, "stop_sent": True}, ExitKind.CLEAN, "clean (SIGTERM)"),
        (_exited(3), {"ready": True}, ExitKind.CRASH, "crash (code 3)"),
        (_signalled(signal.SIGSEGV), {"ready": True}, ExitKind.SIGNAL, "signal SIGSEGV"),
        (_signalled(TERM), {"ready": True}, ExitKind.SIGNAL, "signal SIGTERM"),
        (_signalled(signal.SIGKILL), {"ready": True}, ExitKind.SIGNAL, "signal SIGKILL"),
        (
            _signalled(signal.SIGKILL),
            {"ready": True, "oom": "cgroup"},
            ExitKind.OOM_KILLED,
            "oom-killed (cgroup)",
        ),
        (
            _signalled(signal.SIGKILL),
            {"ready": False, "oom": "kernel log"},
            ExitKind.OOM_KILLED,
            "oom-killed (kernel log)",
        ),
        (_exited(1), {}, ExitKind.FAILED_BEFORE_READY, "failed-before-ready (code 1)"),
        (_exited(0), {}, ExitKind.CLEAN, "clean"),
        (_exited(0), {"not_ready": True, "stop_sent": True}, ExitKind.READINESS_TIMEOUT, None),
        (_signalled(9), {"killed_for": "drain deadline"}, ExitKind.DRAIN_DEADLINE, None),
        (_signalled(9), {"ready": True, "killed_for": "watchdog"}, ExitKind.WATCHDOG, None),
        (_signalled(9), {"killed_for": "forced", "oom": "cgroup"}, ExitKind.FORCED, None),
    ],
)
def test_classify_names_each_way_a_process_ends(
    status: int, facts: dict[str, object], kind: ExitKind, text: str | None
) -> None:
    """The rule table: what we did to a process outranks how it died; OOM outranks before-ready."""
    defaults: dict[str, object] = {"ready": False, "stop_sent": False}
    reason = classify(status, stop_signal=TERM, **{**defaults, **facts})  # type: ignore[arg-type]
    assert reason.kind is kind
    assert reason.text == (text or kind.value)


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return str(response.read().decode())


def _status(cli: CLI) -> dict[str, object]:
    answer = cli("status", "--json")
    assert answer.returncode == 0, answer.stderr
    data = json.loads(answer.stdout)
    assert isinstance(data, dict)
    return data


def test_an_import_error_is_failed_before_ready_with_its_masked_last_lines(
    cli: CLI, launch: Callable[..., Launcher], tmp_path: Path
) -> None:
    """An agent that dies importing: `failed-before-ready`, its traceback's last lines masked."""
    agent = tmp_path / "broken.py"
    agent.write_text(
        "import os, sys\n"
        "print('using token', os.environ['API_TOKEN'], file=sys.stderr, flush=True)\n"
        "import no_such_module_for_agent_run_tests\n"
    )
    cli("secrets", "set", "prod", "API_TOKEN=tok-very-secret-1234")
    launcher = launch("--secrets", "prod", "--ready", "notify", str(agent))
    exited = launcher.wait_event("worker_exited")
    assert exited["reason"] == "failed-before-ready (code 1)"
    lines = "\n".join(exited["last_lines"])  # type: ignore[arg-type]
    assert "ModuleNotFoundError" in lines and "using token ***" in lines
    assert "tok-very-secret" not in launcher.output()
    # The worker is spawned (and may fail) before the control socket is up.
    launcher.wait_event("control_listening")
    status = _status(cli)
    assert status["workers"][0]["exit_reason"] == "failed-before-ready (code 1)"  # type: ignore[index]
    record = status["recent_exits"][0]  # type: ignore[index]
    assert record["reason"] == "failed-before-ready"
    assert any("ModuleNotFoundError" in line for line in record["last_lines"])
    assert "failed-before-ready (code 1)" in cli("status").stdout


def test_a_readiness_timeout_is_named_in_status_and_logs(
    cli: CLI, launch: Callable[..., Launcher]
) -> None:
    """A worker that never says READY=1 within --ready-timeout: `readiness-timeout`, not a code."""
    launcher = launch("--ready", "notify", "--ready-timeout", "1", str(PROBE))
    ended = launcher.wait_event("worker_drained", timeout=60)
    assert ended["reason"] == "readiness-timeout"
    launcher.wait_event("control_listening")
    deadline = time.monotonic() + 30
    while _status(cli)["workers"][0]["exit_reason"] != "readiness-timeout":  # type: ignore[index]
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_bad_update_reports_why_the_replacement_ended_and_metrics_count_exits(
    cli: CLI, launch: Callable[..., Launcher]
) -> None:
    """A rollout aborted by a crashing replacement carries its exit reason; /metrics counts exits."""
    cli("secrets", "set", "prod", "A=1")
    launcher = launch(
        "--secrets", "prod", "--ready", "notify", "--health", "127.0.0.1:0", str(PROBE), env=NOTIFY
    )  # fmt: skip
    address = launcher.wait_event("health_listening")["address"]
    pid = int(launcher.wait_event("worker_ready")["pid"])  # type: ignore[call-overload]
    cli("secrets", "set", "prod", "PROBE_MODE=exit:3")
    aborted = launcher.wait_event("rollout_aborted", timeout=60)
    assert aborted["exit_reason"] == "failed-before-ready (code 3)"
    rollout = _status(cli)["rollout"]
    assert rollout["exit_reason"] == "failed-before-ready (code 3)"  # type: ignore[index]
    os.kill(pid, signal.SIGSEGV)
    assert launcher.wait_event("worker_exited", pid=pid)["reason"] == "signal SIGSEGV"
    metrics = _get(f"http://{address}/metrics")
    assert 'agent_run_exits_total{reason="failed-before-ready"} 1.0' in metrics
    assert 'agent_run_exits_total{reason="signal"} 1.0' in metrics
    assert 'agent_run_exits_total{reason="oom-killed"} 0.0' in metrics


# --- OOM inside a memory-limited cgroup -----------------------------------------------------


def _memory_cgroup_parent() -> tuple[Path, str] | None:
    """A writable memory cgroup we are in: (directory, the limit file's name), or None."""
    from launcher.process.containment import cgroup2_mount

    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            mount = cgroup2_mount()
            if mount is None:
                continue
            here = Path(mount) / path.lstrip("/")
            parent = here.parent if path != "/" else here
            controls = (parent / "cgroup.subtree_control").read_text().split()
            if "memory" in controls and os.access(parent, os.W_OK):
                return parent, "memory.max"
        elif "memory" in controllers.split(","):
            here = Path("/sys/fs/cgroup/memory") / path.lstrip("/")
            if os.access(here, os.W_OK) and (here / "memory.limit_in_bytes").exists():
                return here, "memory.limit_in_bytes"
    return None


@pytest.fixture
def memory_cgroup() -> Iterator[Path]:
    """A fresh memory cgroup limited to 160 MiB (skipped where cgroups are not writable)."""
    found = _memory_cgroup_parent()
    if found is None:
        pytest.skip("no writable memory cgroup (cgroup v2 with the memory controller, or v1)")
    parent, limit = found
    group = parent / f"agent-run-test-oom-{os.getpid()}"
    try:
        group.mkdir()
        (group / limit).write_text(str(160 * 1024 * 1024))
    except OSError as error:
        pytest.skip(f"cannot create a memory cgroup under {parent}: {error.strerror}")
    for name in ("memory.swappiness", "memory.swap.max"):  # the leak must not swap
        if (group / name).exists():
            with contextlib.suppress(OSError):
                (group / name).write_text("0")
    yield group
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def test_an_oom_kill_in_a_memory_limited_cgroup_is_named_oom_killed(
    cli_env: dict[str, str], memory_cgroup: Path, tmp_path: Path
) -> None:
    """A worker the kernel's OOM killer ends is `oom-killed (cgroup)`, not "exited 137"."""
    agent = tmp_path / "leak.py"
    trigger = tmp_path / "leak-now"
    agent.write_text(
        "import os, time\n"
        f"while not os.path.exists({str(trigger)!r}):  # serves a while, then leaks\n"
        "    time.sleep(0.02)\n"
        "hoard = []\n"
        "while True:\n"
        "    hoard.append(bytearray(8 * 1024 * 1024))\n"
        "    time.sleep(0.005)\n"
    )
    enter = f'echo $$ > {memory_cgroup}/cgroup.procs && exec "$@"'
    argv = ["sh", "-c", enter, "sh", sys.executable, "-m", "launcher"]
    argv += ["--ready", "started", "--ready-delay", "0", "--restart", "never", str(agent)]
    launcher = Launcher(argv, {**cli_env, "AGENT_RUN_LOG_FORMAT": "json"}, tmp_path)
    try:
        launcher.wait_event("worker_ready")  # tracked by the engine: its cgroup is known
        trigger.touch()
        exited = launcher.wait_event("worker_exited", timeout=120)
        assert exited["code"] == 137 and exited["reason"] == "oom-killed (cgroup)", exited
        assert launcher.wait(timeout=60) == 137  # exec-like: the child's own status
    finally:
        launcher.stop()

"""Running agents: environment layers, exit codes, signals, restarts, masking (SPEC §3)."""

from __future__ import annotations

import base64
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import CLI, PROBE, Launcher, read_reports, wait_gone, wait_reports


def test_environment_layers_end_to_end(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, tmp_path: Path
) -> None:
    """A worker sees inherited < env-file < secret set < platform, runtime vars, no private ones."""
    cli("secrets", "set", "prod", "SHARED=from-set", "ONLY_SET=s1")
    cli(
        "platform", "set", "livekit", "LIVEKIT_URL=wss://platform", "LIVEKIT_API_SECRET=plat-secret"
    )
    env_file = tmp_path / "dev.env"
    env_file.write_text("SHARED=from-file\nONLY_FILE=f1\nLIVEKIT_URL=wss://dev-file\n")
    launcher = launch(
        "--secrets", "prod", "--env-file", str(env_file), "--ready-delay", "0.1",
        "--port-base", "9100", str(PROBE),
        env={"SHARED": "inherited", "ONLY_INHERITED": "i1", "LIVEKIT_API_KEY": "inherited-key",
             "NOTIFY_SOCKET": "/run/systemd/notify-of-launcher", "CREDENTIALS_DIRECTORY": "/x"},
    )  # fmt: skip
    launcher.wait_event("worker_ready")
    (report,) = wait_reports(probe_dir, 1).values()
    env = report["env"]
    assert isinstance(env, dict)
    assert env["SHARED"] == "from-set"
    assert (env["ONLY_SET"], env["ONLY_FILE"], env["ONLY_INHERITED"]) == ("s1", "f1", "i1")
    assert env["LIVEKIT_URL"] == "wss://platform"  # the env-file could not override it
    assert env["LIVEKIT_API_SECRET"] == "plat-secret"
    assert env["LIVEKIT_API_KEY"] == "inherited-key"  # not stored: the launcher's own
    assert (env["AGENT_RUN_WORKER"], env["AGENT_RUN_SECRETS_VERSION"], env["AGENT_RUN_PORT"]) == (
        "0",
        "1",
        "9100",
    )
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env["NOTIFY_SOCKET"] != "/run/systemd/notify-of-launcher"  # ours, not systemd's
    for private in ("AGENT_RUN_MASTER_KEY", "AGENT_RUN_KEY_FILE", "CREDENTIALS_DIRECTORY"):
        assert private not in env


@pytest.mark.parametrize(("code", "expected"), [(0, 0), (7, 7), (-9, 128 + 9)])
def test_exec_like_mode_returns_the_child_exit_code(cli: CLI, code: int, expected: int) -> None:
    """--workers 1 --restart never: the launcher exits as its child did (128+N for signal N)."""
    script = (
        f"import os, signal; os.kill(os.getpid(), {-code})"
        if code < 0
        else f"raise SystemExit({code})"
    )
    result = cli("--workers", "1", "--restart", "never", "--", sys.executable, "-c", script)
    assert result.returncode == expected, result.stderr


def test_term_is_forwarded_once_and_the_group_is_gone(
    launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """TERM to the launcher: each worker gets exactly one TERM, drains, and its sub-process dies."""
    launcher = launch(
        "--workers",
        "2",
        "--ready-delay",
        "0.1",
        str(PROBE),
        env={"PROBE_CHILD": "1", "PROBE_DRAIN": "0.3"},
    )
    launcher.wait_event("worker_ready")
    launcher.wait_event("worker_ready")
    reports = wait_reports(probe_dir, 2)
    children = [int(r["child"]) for r in reports.values()]  # type: ignore[call-overload]
    launcher.signal(signal.SIGTERM)
    assert launcher.wait() == 0
    final = read_reports(probe_dir)
    for report in final.values():
        assert len(report["terms"]) == 1  # type: ignore[arg-type]
        assert "exiting" in report
    for child in children:
        wait_gone(child)


def test_second_term_kills_at_once(launch: Callable[..., Launcher], probe_dir: Path) -> None:
    """A worker that ignores the stop signal is killed at a second TERM; the exit is 1, not 0."""
    launcher = launch("--ready-delay", "0.1", str(PROBE), env={"PROBE_MODE": "hang"})
    launcher.wait_event("worker_ready")
    launcher.signal(signal.SIGTERM)
    launcher.wait_event("worker_stopping")
    launcher.signal(signal.SIGTERM)
    launcher.wait_event("shutdown_forced")
    assert launcher.wait(timeout=30) == 1  # workers were killed: the shutdown was not clean
    (report,) = read_reports(probe_dir).values()
    wait_gone(int(report["pid"]))  # type: ignore[call-overload]


def test_drain_timeout_kills_the_group(launch: Callable[..., Launcher]) -> None:
    """A worker still running when --drain-timeout passes is SIGKILLed with its group."""
    launcher = launch(
        "--ready-delay", "0.1", "--drain-timeout", "0.5", str(PROBE), env={"PROBE_MODE": "hang"}
    )
    launcher.wait_event("worker_ready")
    launcher.signal(signal.SIGTERM)
    launcher.wait_event("worker_drain_timeout")
    assert launcher.wait() == 0


def test_crash_restarts_with_backoff_then_gives_up(launch: Callable[..., Launcher]) -> None:
    """A crashing worker is restarted with growing delays; after --max-restarts the launcher exits 1."""
    launcher = launch(
        "--max-restarts", "3", "--restart-window", "60", str(PROBE), env={"PROBE_MODE": "exit:3"}
    )
    exits = [launcher.wait_event("worker_exited", code=3) for _ in range(4)]
    launcher.wait_event("slot_gave_up")
    assert launcher.wait() == 1
    restarts = [e for e in launcher.events if e.get("event") == "worker_restarted"]
    assert len(restarts) == 3 and len(exits) == 4
    loops = [e["delay"] for e in launcher.events if e.get("event") == "worker_crash_loop"]
    assert loops == sorted(loops) and len(loops) >= 2  # the backoff grows


def test_on_failure_policy_ends_after_a_clean_exit(cli: CLI) -> None:
    """--restart on-failure: a worker that exits 0 is not restarted and the launcher exits 0."""
    result = cli("--restart", "on-failure", "--", sys.executable, "-c", "print('done')")
    assert result.returncode == 0
    assert result.stdout.strip() == "done"


def test_usr1_is_forwarded(
    launch: Callable[..., Launcher], probe_dir: Path, tmp_path: Path
) -> None:
    """USR1 to the launcher reaches the worker."""
    marker = tmp_path / "usr1"
    script = (
        "import signal, pathlib, sys; "
        f"signal.signal(signal.SIGUSR1, lambda *a: pathlib.Path({str(marker)!r}).write_text('x')); "
        "print('up', flush=True); signal.pause(); signal.pause()"
    )
    launcher = launch(
        "--ready-delay", "0.1", "--drain-timeout", "1", "--", sys.executable, "-c", script
    )
    launcher.wait_event("worker_ready")
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        launcher.signal(signal.SIGUSR1)
        time.sleep(0.1)
    assert marker.exists()


def test_output_is_masked_everywhere(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """Secret values and their base64 / URL-encoded forms never appear in any launcher output."""
    value = "sk-live/very+secret=value-0042"
    cli("secrets", "set", "prod", f"PROBE_SECRET_ONE={value}", "PROBE_PRINT=1")
    launcher = launch("--secrets", "prod", "--ready-delay", "0.1", str(PROBE))
    launcher.wait_event("worker_ready")
    deadline = time.monotonic() + 20
    while (
        sum("PROBE_SECRET_ONE" in line for line in launcher.stdout_lines + launcher.stderr_lines)
        < 6
    ):
        assert time.monotonic() < deadline, launcher.output()
        time.sleep(0.05)
    launcher.stop()
    output = launcher.output()
    for form in (
        value,
        base64.b64encode(value.encode()).decode(),
        urllib.parse.quote(value, safe=""),
    ):
        assert form not in output
    assert "stdout PROBE_SECRET_ONE=***" in "".join(launcher.stdout_lines)
    assert "stderr PROBE_SECRET_ONE=***" in "".join(launcher.stderr_lines)


def test_no_mask_passes_output_through(cli: CLI) -> None:
    """--no-mask hands the worker our file descriptors: output is untouched."""
    cli("secrets", "set", "prod", "PROBE_SECRET_X=visible-on-purpose")
    result = cli(
        "--secrets", "prod", "--no-mask", "--restart", "never", "--",
        sys.executable, "-c", "import os; print(os.environ['PROBE_SECRET_X'])",
    )  # fmt: skip
    assert result.stdout.strip() == "visible-on-purpose"


def test_unknown_set_exits_78_and_lists_known_sets(cli: CLI) -> None:
    """Launching with a missing set fails before anything starts, naming the known sets."""
    cli("secrets", "set", "dev", "A=1")
    result = cli("--secrets", "prod", str(PROBE))
    assert result.returncode == 78
    assert "known sets: dev" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0", "bot.py"], "--workers"),
        (["--ready", "sometimes", "bot.py"], "--ready"),
        (["--restart", "maybe", "bot.py"], "--restart"),
        ([], "no agent to run"),
        (["missing.py"], "does not exist"),
    ],
)
def test_bad_options_are_usage_errors(cli: CLI, args: list[str], message: str) -> None:
    """Bad options: one clear line and exit 2 (65 for a missing script)."""
    result = cli(*args)
    assert result.returncode in (2, 65)
    assert message in result.stderr


def test_options_from_environment_and_toml(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """agent-run.toml and AGENT_RUN_* set options; a flag beats both."""
    cli("secrets", "set", "tomlset", "FROM_TOML_SET=yes")
    (cli.cwd / "agent-run.toml").write_text(
        'secret_set = "tomlset"\nworkers = 3\nready_delay = 0.1\n'
    )
    launcher = launch(str(PROBE), env={"AGENT_RUN_WORKERS": "2"})
    launcher.wait_event("worker_ready")
    launcher.wait_event("worker_ready")
    reports = wait_reports(probe_dir, 2)
    assert len(reports) == 2  # env (2) beat toml (3)
    assert all(r["env"]["FROM_TOML_SET"] == "yes" for r in reports.values())  # type: ignore[index]


def test_help_documents_every_option(cli: CLI) -> None:
    """--help lists each run option with its default and environment variable."""
    text = cli("--help").stdout
    for flag in ("--secrets", "--env-file", "--workers", "--restart", "--max-restarts", "--ready",
                 "--ready-timeout", "--watchdog", "--drain-timeout", "--stop-signal", "--max-surge",
                 "--port-base", "--health", "--log-format", "--no-mask", "--no-watch"):  # fmt: skip
        assert flag in text
    flat = " ".join(text.split())  # argparse wraps lines wherever the text happens to fall
    assert "default: 3630.0" in flat and "AGENT_RUN_DRAIN_TIMEOUT" in flat


def test_workers_get_a_pty_when_the_launcher_runs_on_a_terminal(cli: CLI) -> None:
    """On a terminal, the worker sees a tty (colours survive), its output is still masked, and its lines end in CR LF, never CR CR LF."""
    import pty
    import select as select_module

    cli("secrets", "set", "prod", "PROBE_SECRET_TTY=tty-secret-value-123")
    script = (
        "import os, sys; "
        "print('isatty', sys.stdout.isatty(), os.environ['PROBE_SECRET_TTY'], flush=True)"
    )
    argv = cli.argv("--secrets", "prod", "--restart", "never", "--", sys.executable, "-c", script)
    pid, fd = pty.fork()
    if pid == 0:  # the child: agent-run with the pty as its terminal
        os.chdir(cli.cwd)
        os.execve(argv[0], list(argv), cli.env)
    output = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select_module.select([fd], [], [], 1)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the launcher exited and closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(fd)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output
    text = output.decode(errors="replace")
    assert "isatty True ***" in text
    assert "tty-secret-value-123" not in text
    assert b"isatty True ***\r\n" in output and b"\r\r\n" not in output


def test_dev_mode_restarts_on_code_change(
    launch: Callable[..., Launcher], probe_dir: Path, tmp_path: Path
) -> None:
    """`agent-run dev bot.py` replaces the worker when a .py file next to it changes."""
    app = tmp_path / "app"
    app.mkdir()
    bot = app / "bot.py"
    bot.write_text(PROBE.read_text())
    launcher = launch("dev", "--log-format", "json", "--ready-delay", "0.1", str(bot))
    first = launcher.wait_event("worker_ready")["pid"]
    deadline = time.monotonic() + 30
    while not [e for e in launcher.events if e.get("event") == "code_changed"]:
        assert time.monotonic() < deadline, "no code change seen"
        (app / "helper.py").write_text(f"X = {time.monotonic()}\n")  # until the watch is up
        time.sleep(0.2)
    launcher.wait_event("rollout_succeeded")
    second = launcher.wait_event("worker_ready")["pid"]
    assert second != first


def test_no_secret_value_in_any_launcher_output(cli: CLI) -> None:
    """A worker leaking its secret everywhere (output, STATUS=, a traceback) never gets it past the launcher."""
    value = 'pk_live "quoted" \\back/slash+plus=eq-7781'
    cli("secrets", "set", "prod", f"LEAKY_TOKEN={value}")
    script = (
        "import base64, os, sys, urllib.parse\n"
        "from launcher import notify_ready, notify_status\n"
        "v = os.environ['LEAKY_TOKEN']\n"
        "print('stdout', v, base64.b64encode(v.encode()).decode(), flush=True)\n"
        "print('stderr', urllib.parse.quote(v, safe=''), file=sys.stderr, flush=True)\n"
        "notify_ready(status=v)\n"
        "notify_status('status ' + v)\n"
        "raise RuntimeError('cannot authenticate with ' + v)\n"
    )
    result = cli(
        "--secrets", "prod", "--ready", "notify", "--restart", "on-failure",
        "--max-restarts", "1", "--log-format", "json", "--", sys.executable, "-c", script,
        env={"PYTHONPATH": str(Path(__file__).parent.parent)},
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # the slot gave up after its restart
    # Each run printed it (masked); an exit before READY=1 was seen repeats its last lines.
    assert output.count("cannot authenticate with ***") >= 2
    assert "stdout ***" in result.stdout and "stderr ***" in result.stderr
    for form in (
        value,
        base64.b64encode(value.encode()).decode(),
        urllib.parse.quote(value, safe=""),
        value.replace("\\", "\\\\").replace('"', '\\"'),  # as JSON would escape it
        "pk_live",  # no fragment either
    ):
        assert form not in output

"""Warm starts (#18): processes forked from a secret-free template interpreter.

Each observable of a forked process is compared with a fresh interpreter's under the same
launcher options (`--preload none`); the template is recognised by a module it preloaded
(`colorsys`, which the observer agent never imports).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.config import Target, TargetKind
from launcher.process import preload
from launcher.process.template import merge_environment

from .conftest import AGENTS, CLI, Launcher, alive, wait_gone, wait_reports
from .test_sessions import Server, serve  # noqa: F401 -- the fixture

OBSERVER = AGENTS / "observer.py"
DEADLINE = 60.0
# Differ between any two processes, template or not.
PER_PROCESS = ("pid", "ppid", "pgid", "preloaded", "version", "ttyname")


def _observe(
    launch: Callable[..., Launcher], directory: Path, preload_option: str, *target: str
) -> dict:  # type: ignore[type-arg]
    for old in directory.glob("*.json"):
        old.unlink()
    launcher = launch("--preload", preload_option, "--restart", "never", *target)
    report = next(iter(wait_reports(directory, 1).values()))
    assert report["ppid"] == launcher.proc.pid  # the launcher's own child, either way
    assert report["pgid"] == report["pid"]  # in its own process group
    launcher.stop()
    return report


def _same(fresh: dict, warm: dict) -> None:  # type: ignore[type-arg]
    assert not fresh["preloaded"] and warm["preloaded"]
    for key in PER_PROCESS:
        fresh.pop(key, None)
        warm.pop(key, None)
    assert warm == fresh


@pytest.mark.parametrize("kind", ["script", "module"])
def test_a_forked_process_observes_what_a_fresh_interpreter_does(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, kind: str
) -> None:
    """sys.argv, __main__, __file__, sys.path, cwd, stdio, signals and fds: as a fresh one's."""
    shutil.copy(OBSERVER, cli.cwd / "observer.py")
    target = ("observer.py", "one", "two") if kind == "script" else ("-m", "observer", "x")
    fresh = _observe(launch, probe_dir, "none", *target)
    warm = _observe(launch, probe_dir, "colorsys", *target)
    _same(fresh, warm)


def test_on_a_terminal_a_forked_process_has_its_pty_and_reads_the_terminal(cli: CLI) -> None:
    """On a terminal: the pty, the foreground and stdin are a fresh interpreter's."""
    from .test_terminal import ASK, Terminal

    (cli.cwd / "ask.py").write_text(ASK)
    shutil.copy(OBSERVER, cli.cwd / "observer.py")
    reports = cli.cwd / "reports"
    reports.mkdir()
    cli.env = {**cli.env, "PROBE_DIR": str(reports), "OBSERVE_EXIT": "0"}
    seen = []
    for option in ("none", "colorsys"):
        for old in reports.glob("*.json"):
            old.unlink()
        term = Terminal(cli, "--preload", option, "--restart", "never", "observer.py")
        try:
            term.expect(b"observed")
            assert term.wait() == 0
        finally:
            term.close()
        seen.append(next(iter(wait_reports(reports, 1).values())))
    fresh, warm = seen
    assert fresh["ttyname"] and warm["ttyname"]  # each on a pty of its own
    assert warm["streams"]["stdout"]["tty"] and warm["streams"]["stdin"]["tty"]
    _same(fresh, warm)
    term = Terminal(cli, "--preload", "colorsys", "--restart", "never", "ask.py")
    try:
        term.expect(b"asking")
        term.type(b"warm\r")
        term.expect(b"got:warm")
        assert term.wait() == 0
    finally:
        term.close()


def _template_pid(launcher: Launcher) -> int:
    pid = launcher.wait_event("template", timeout=DEADLINE)["pid"]
    assert isinstance(pid, int)
    return pid


def test_rollout_and_crash_restart_fork_from_a_template_that_never_sees_a_secret(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """Launch, rollout and crash restart all fork warm; the template's environment has no secret."""
    cli("secrets", "set", "prod", "OBSERVED_SECRET=first-value")
    launcher = launch(
        "--secrets", "prod", "--workers", "2", "--preload", "colorsys", "--ready-delay", "0.2",
        str(OBSERVER),
    )  # fmt: skip
    template = _template_pid(launcher)
    first = wait_reports(probe_dir, 2)
    environ = Path(f"/proc/{template}/environ").read_bytes()
    assert b"first-value" not in environ and b"OBSERVED_SECRET" not in environ
    for report in first.values():
        assert report["preloaded"] and report["secret"] == "first-value"
        assert report["ppid"] == launcher.proc.pid
    assert cli("secrets", "set", "prod", "OBSERVED_SECRET=second-value").returncode == 0
    launcher.wait_event("rollout_succeeded", timeout=DEADLINE)
    second = {p: r for p, r in wait_reports(probe_dir, 4).items() if p not in first}
    assert [r["secret"] for r in second.values()] == ["second-value"] * 2
    assert all(r["preloaded"] and r["ppid"] == launcher.proc.pid for r in second.values())
    assert b"second-value" not in Path(f"/proc/{template}/environ").read_bytes()
    crashed = next(iter(second))
    os.kill(crashed, signal.SIGKILL)
    launcher.wait_event("worker_exited", pid=crashed, code=137, timeout=DEADLINE)
    launcher.wait_event("worker_restarted", timeout=DEADLINE)
    restarted = {p: r for p, r in wait_reports(probe_dir, 5).items() if p not in first | second}
    (report,) = restarted.values()
    assert report["preloaded"] and report["secret"] == "second-value"
    assert report["ppid"] == launcher.proc.pid


def test_a_template_killed_mid_rollout_is_replaced_and_the_rollout_completes(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """Kill the template as a rollout starts: it finishes (old way meanwhile); a new template."""
    cli("secrets", "set", "prod", "OBSERVED_SECRET=a")
    launcher = launch(
        "--secrets", "prod", "--workers", "2", "--preload", "colorsys", "--ready-delay", "0.2",
        str(OBSERVER),
    )  # fmt: skip
    template = _template_pid(launcher)
    first = wait_reports(probe_dir, 2)
    launcher.wait_event("worker_ready", timeout=DEADLINE)
    launcher.wait_event("worker_ready", timeout=DEADLINE)
    os.kill(template, signal.SIGKILL)
    launcher.wait_event("template_exited", pid=template, timeout=DEADLINE)
    assert cli("secrets", "set", "prod", "OBSERVED_SECRET=b").returncode == 0
    launcher.wait_event("rollout_succeeded", timeout=DEADLINE)
    second = {p: r for p, r in wait_reports(probe_dir, 4).items() if p not in first}
    assert sorted(r["secret"] for r in second.values()) == ["b", "b"]
    assert all(r["ppid"] == launcher.proc.pid for r in second.values())
    # A new template was started; once it has imported its modules, processes fork from it
    # again (until then they start the old way): rollouts until one is warm.
    seen = set(first) | set(second)
    for _ in range(10):
        assert cli("reload", "--name", "prod").returncode == 0
        fresh = {p: r for p, r in wait_reports(probe_dir, len(seen) + 2).items() if p not in seen}
        seen |= set(fresh)
        assert all(r["secret"] == "b" and r["ppid"] == launcher.proc.pid for r in fresh.values())
        if any(r["preloaded"] for r in fresh.values()):
            break
    else:
        raise AssertionError("no process came from the new template in 10 rollouts")
    assert launcher.wait_event("template_ready")["pid"] == template  # the launch's
    assert launcher.wait_event("template_ready")["pid"] != template  # its successor's


def test_a_killed_launcher_takes_the_template_and_every_forked_process(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """SIGKILL to the launcher: its template and the processes forked from it die with it."""
    launcher = launch("--workers", "2", "--preload", "colorsys", str(OBSERVER))
    template = _template_pid(launcher)
    workers = list(wait_reports(probe_dir, 2))
    assert alive(template) and all(alive(pid) for pid in workers)
    launcher.proc.kill()
    launcher.wait()
    for pid in [template, *workers]:
        wait_gone(pid)


def test_a_preloaded_module_that_reads_a_secret_at_import_is_not_trusted_with_it(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path, tmp_path: Path
) -> None:
    """A module that read OBSERVED_SECRET at import: its process starts fresh and sees the value."""
    library = tmp_path / "library"
    library.mkdir()
    (library / "reads_secret.py").write_text(
        "import os\nVALUE = os.environ.get('OBSERVED_SECRET')\n"
    )
    cli("secrets", "set", "prod", "OBSERVED_SECRET=the-value")
    launcher = launch(
        "--secrets", "prod", "--preload", "colorsys,reads_secret", str(OBSERVER),
        env={"PYTHONPATH": str(library)},
    )  # fmt: skip
    event = launcher.wait_event("template_not_used", timeout=DEADLINE)
    assert "OBSERVED_SECRET" in str(event["reason"])
    assert "the-value" not in launcher.output()
    (report,) = wait_reports(probe_dir, 1).values()
    assert not report["preloaded"] and report["secret"] == "the-value"


def test_exit_codes_and_tracebacks_are_a_fresh_interpreters(cli: CLI, tmp_path: Path) -> None:
    """sys.exit(N) gives N; an uncaught exception prints the agent's frames only and gives 1."""
    (cli.cwd / "fails.py").write_text(
        "import sys\ndef main():\n    raise ValueError('broken ' + sys.argv[1])\nmain()\n"
    )
    outputs = []
    for option in ("none", "colorsys"):
        result = cli("--preload", option, "--restart", "never", "fails.py", "arg")
        assert result.returncode == 1
        outputs.append([line for line in result.stderr.splitlines() if not line.startswith("{")])
        exited = cli(
            "--preload", option, "--restart", "never", str(OBSERVER),
            env={"OBSERVE_EXIT": "3", "PROBE_DIR": str(tmp_path)},
        )  # fmt: skip
        assert exited.returncode == 3
    assert outputs[0] == outputs[1]
    assert outputs[1][-1] == "ValueError: broken arg"


def test_environment_changes_made_at_start_up_carry_over_unless_the_child_sets_its_own() -> None:
    """A variable the template's start-up changed is changed in the child, unless overridden."""
    launched = {"PYTHONPATH": "/boot:/lib", "KEEP": "1", "GONE": "x"}
    current = {"PYTHONPATH": "/lib", "KEEP": "1", "ADDED": "lib-default"}
    child = {"PYTHONPATH": "/boot:/lib", "KEEP": "1", "GONE": "x", "ADDED": "mine", "S": "s"}
    merged = merge_environment(child, launched, current)
    assert merged == {"PYTHONPATH": "/lib", "KEEP": "1", "ADDED": "mine", "S": "s"}
    assert merge_environment({"GONE": "own"}, launched, current) == {
        "GONE": "own",
        "ADDED": "lib-default",
    }


def test_preload_discovery_takes_dependencies_and_never_the_agents_own_modules(
    tmp_path: Path,
) -> None:
    """Top-level imports of the script and of its own package; never the agent's own modules."""
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "__init__.py").write_text("import yaml\nfrom . import local\n")
    (tmp_path / "bot.py").write_text(
        "from __future__ import annotations\nimport os, json as j\nfrom helpers import x\n"
        "from pipecat.pipeline import Pipeline\nimport helpers.sub\n"
        "def later():\n    import lazy_dependency\n"
    )
    found = preload.discover(Target(TargetKind.SCRIPT, str(tmp_path / "bot.py")))
    assert found == ["os", "json", "pipecat.pipeline", "yaml"]
    # The agent's own files, which the template compiles and never runs.
    files = preload.agent_files(Target(TargetKind.SCRIPT, str(tmp_path / "bot.py")))
    assert files == [str(tmp_path / "bot.py"), str(tmp_path / "helpers" / "__init__.py")]
    assert preload.third_party(found) == ["pipecat.pipeline", "yaml"]
    assert preload.parse("none") == "none" and preload.parse("a.b, c") == ("a.b", "c")
    with pytest.raises(ValueError):
        preload.parse("not-a-module")


def test_the_cli_refuses_a_bad_preload_list(cli: CLI) -> None:
    """--preload with a name that is not a module: one line on stderr, exit 2."""
    (cli.cwd / "bot.py").write_text("print('hi')\n")
    result = cli("--preload", "no such", "bot.py")
    assert result.returncode == 2, result.stderr
    assert "--preload" in result.stderr and "Traceback" not in result.stderr


SESSION_AGENT = """
import json, os, sys

PRELOADED = "colorsys" in sys.modules


async def bot(runner_args):
    report = {
        "pid": os.getpid(), "ppid": os.getppid(), "preloaded": PRELOADED,
        "version": os.environ.get("AGENT_RUN_SECRETS_VERSION"),
        "key": os.environ.get("DEMO_API_KEY"),
    }
    path = os.path.join(os.environ["SESSION_DIR"], runner_args.session_id + ".json")
    with open(path + ".tmp", "w") as stream:
        json.dump(report, stream)
    os.replace(path + ".tmp", path)
"""


def test_session_mode_read_after_write_through_the_template(
    serve: Callable[..., Server],  # noqa: F811 -- the fixture imported above
    cli: CLI,
    tmp_path: Path,
) -> None:
    """`secrets set` returns, a session starts at once: forked warm, with the new value."""
    agent = tmp_path / "warm_bot.py"
    agent.write_text(SESSION_AGENT)
    server = serve("--idle", "2", "--preload", "colorsys", target=str(agent))
    template = _template_pid(server.launcher)
    for round_ in range(2, 7):
        value = f"value-{round_}"
        assert cli("secrets", "set", "demo", f"DEMO_API_KEY={value}").returncode == 0
        answer = server.started({})
        report = server.file(f"{answer['id']}.json")
        assert (report["version"], report["key"]) == (str(round_), value)
        assert report["preloaded"] and report["ppid"] == server.launcher.proc.pid
    environ = Path(f"/proc/{template}/environ").read_bytes()
    assert b"DEMO_API_KEY" not in environ and b"value-" not in environ


def test_a_stuck_template_is_replaced_and_the_restart_happens_the_old_way(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """A template that does not answer (SIGSTOP): the restart starts fresh, the template is killed."""
    launcher = launch("--preload", "colorsys", "--ready-delay", "0.2", str(OBSERVER))
    template = _template_pid(launcher)
    (first,) = wait_reports(probe_dir, 1)
    os.kill(template, signal.SIGSTOP)
    os.kill(first, signal.SIGKILL)
    failed = launcher.wait_event("template_failed", timeout=DEADLINE)
    assert "no answer" in str(failed["reason"])
    launcher.wait_event("template_exited", pid=template, timeout=DEADLINE)
    second = [r for p, r in wait_reports(probe_dir, 2).items() if p != first]
    assert not second[0]["preloaded"] and second[0]["ppid"] == launcher.proc.pid


def _asked(template: int) -> bool:
    """A request from the launcher waits unread in the (stopped) template's socket."""
    table = subprocess.run(["ss", "-x", "-p", "-H"], capture_output=True, text=True).stdout
    return any(
        f"pid={template}," in line and int(line.split()[2]) > 0 for line in table.splitlines()
    )


def test_the_event_loop_answers_while_a_stuck_template_is_asked_for_a_fork(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """While the launcher waits for a stopped template's answer, /healthz answers; resumed, it forks the restart."""
    launcher = launch(
        "--preload", "colorsys", "--ready-delay", "0.2", "--health", "127.0.0.1:0", str(OBSERVER),
        env={"AGENT_RUN_TEMPLATE_TIMEOUT": "300"},  # the wait outlasts the whole test
    )  # fmt: skip
    address = launcher.wait_event("health_listening", timeout=DEADLINE)["address"]
    template = _template_pid(launcher)
    (first,) = wait_reports(probe_dir, 1)
    os.kill(template, signal.SIGSTOP)
    try:
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + DEADLINE
        while not _asked(template):  # the restart has asked the template: the wait is on
            assert time.monotonic() < deadline, "the launcher never asked the template"
            time.sleep(0.05)
        try:
            with urllib.request.urlopen(f"http://{address}/healthz", timeout=DEADLINE) as answer:
                status = answer.status
        except urllib.error.HTTPError as refused:  # 503 is an answer too: the loop ran
            status = refused.code
        assert status in (200, 503)
        assert not [e for e in launcher.events if e.get("event") == "template_failed"]
    finally:
        os.kill(template, signal.SIGCONT)
    second = [r for p, r in wait_reports(probe_dir, 2).items() if p != first]
    assert second[0]["preloaded"] and second[0]["ppid"] == launcher.proc.pid
    assert alive(template)


WEBSOCKET_AGENT = """
import gc, json, os, sys

import starlette  # the agent uses Starlette: the runtime's warm-up imports uvicorn for it


async def bot(runner_args):
    tracked = {id(o) for o in gc.get_objects()}  # gc.freeze() in the template hid the rest
    names = ("starlette.websockets", "uvicorn.config", "uvicorn.protocols.websockets.auto")
    report = {name: id(sys.modules[name]) not in tracked for name in names}
    path = os.path.join(os.environ["SESSION_DIR"], runner_args.session_id + ".json")
    with open(path + ".tmp", "w") as stream:
        json.dump(report, stream)
    os.replace(path + ".tmp", path)
"""


def test_the_session_runtimes_websocket_imports_come_from_the_template(
    serve: Callable[..., Server],  # noqa: F811 -- the fixture imported above
    tmp_path: Path,
) -> None:
    """A Starlette/Pipecat agent's processes find the runtime's uvicorn imports done in the template."""
    agent = tmp_path / "web_bot.py"
    agent.write_text(WEBSOCKET_AGENT)
    server = serve("--idle", "1", target=str(agent))
    answer = server.started({})
    report = server.file(f"{answer['id']}.json")
    assert report == dict.fromkeys(report, True) and len(report) == 3


# Reports whether the code it runs is the template's: its functions' code objects are the
# ones the template compiled from this file (template_runtime._CompiledSources), and the
# session runtime's functions were made in the template (frozen: not in gc.get_objects()).
COMPILED_AGENT = """
import gc, json, os, sys

MARK = "first"


def _report(name, extra):
    template = sys.modules.get("_agent_run_template_runtime")
    known = template._CompiledSources.code.get(__file__) if template else None
    report = {
        "mark": MARK,
        "code_from_template": known is not None
        and any(const is _report.__code__ for const in known[1].co_consts),
        **extra,
    }
    with open(os.path.join(os.environ["PROBE_DIR"], name + ".tmp"), "w") as stream:
        json.dump(report, stream)
    os.replace(os.path.join(os.environ["PROBE_DIR"], name + ".tmp"),
               os.path.join(os.environ["PROBE_DIR"], name))


async def bot(runner_args):
    runtime = sys.modules["_agent_run_session_runtime"]
    made_here = any(o is runtime.main for o in gc.get_objects())
    _report(f"{os.getpid()}.json", {"pid": os.getpid(), "runtime_from_template": not made_here})


if __name__ == "__main__":
    import time
    _report(f"{os.getpid()}.json", {"pid": os.getpid()})
    time.sleep(600)
"""


def test_sessions_run_code_the_template_compiled_and_never_stale_code(
    serve: Callable[..., Server],  # noqa: F811 -- the fixture imported above
    cli: CLI,
    tmp_path: Path,
    probe_dir: Path,
) -> None:
    """Without bytecode files, a session runs the template's compiled agent and runtime; an
    agent file edited since runs its new code."""
    agent = tmp_path / "compiled_bot.py"
    agent.write_text(COMPILED_AGENT)
    server = serve("--idle", "1", target=str(agent), env={"PYTHONDONTWRITEBYTECODE": "1"})
    _template_pid(server.launcher)
    answer = server.started({})
    report = wait_reports(probe_dir, 1)[answer["pid"]]
    assert report == {
        "mark": "first", "code_from_template": True, "runtime_from_template": True,
        "pid": answer["pid"],
    }  # fmt: skip
    agent.write_text(COMPILED_AGENT.replace('MARK = "first"', 'MARK = "edited"'))
    # A new version replaces the idle process, which imported the file before the edit.
    assert cli("secrets", "set", "demo", "DEMO_API_KEY=value-2").returncode == 0
    answer = server.started({})
    report = wait_reports(probe_dir, 2)[answer["pid"]]
    assert report == {
        "mark": "edited", "code_from_template": False, "runtime_from_template": True,
        "pid": answer["pid"],
    }  # fmt: skip


def test_workers_run_the_script_the_template_compiled_and_never_stale_code(
    launch: Callable[..., Launcher], tmp_path: Path, probe_dir: Path
) -> None:
    """Without bytecode files, a forked worker runs the script as the template compiled it; a
    restart after an edit runs the new code."""
    agent = tmp_path / "compiled_worker.py"
    agent.write_text(COMPILED_AGENT.replace("async def bot(", "async def not_a_bot("))
    launcher = launch("--preload", "colorsys", str(agent), env={"PYTHONDONTWRITEBYTECODE": "1"})
    _template_pid(launcher)
    ((pid, report),) = wait_reports(probe_dir, 1).items()
    assert report == {"mark": "first", "code_from_template": True, "pid": pid}
    agent.write_text(agent.read_text().replace('MARK = "first"', 'MARK = "edited"'))
    os.kill(pid, signal.SIGKILL)
    launcher.wait_event("worker_restarted", timeout=DEADLINE)
    reports = wait_reports(probe_dir, 2)
    (restarted,) = (r for p, r in reports.items() if p != pid)
    assert restarted["mark"] == "edited" and restarted["code_from_template"] is False

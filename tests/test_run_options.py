"""What an operator types around the target: where options go, modes, version, typos, help."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from launcher.cli.run_command import build_config
from launcher.config import Target, TargetKind
from launcher.errors import UsageError
from launcher.sessions.entrypoint import Entrypoint, find_entrypoint, is_session_bot

from .conftest import CLI

ARGV_SCRIPT = "import sys\nprint(sys.argv[1:])\n"


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AGENT_RUN_* variable and no agent-run.toml around an in-process build_config."""
    import os

    for name in list(os.environ):
        if name.startswith("AGENT_RUN_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize(
    ("after", "hint"),
    [
        (["--secrets", "demo", "--workers", "2"], "agent-run --secrets demo bot.py"),
        (["--workers=2"], "agent-run --workers=2 bot.py"),
        (["--no-mask"], "agent-run --no-mask bot.py"),
    ],
)
def test_agent_run_option_after_the_script_is_refused(
    cli: CLI, after: list[str], hint: str
) -> None:
    """`agent-run bot.py --secrets demo` exits 2 and says where the option goes (and `--`)."""
    (cli.cwd / "bot.py").write_text(ARGV_SCRIPT)
    result = cli("bot.py", *after)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert hint in result.stderr and "bot.py -- " in result.stderr


def test_option_after_a_module_is_refused(cli: CLI) -> None:
    """The same rule holds for `-m module`."""
    result = cli("-m", "json.tool", "--workers", "2")
    assert result.returncode == 2 and "after -m json.tool" in result.stderr


def test_options_after_double_dash_are_the_agents(cli: CLI) -> None:
    """`agent-run bot.py -- --workers 2` runs `bot.py --workers 2` (the `--` is not passed)."""
    (cli.cwd / "bot.py").write_text(ARGV_SCRIPT)
    result = cli("--restart", "never", "bot.py", "--verbose", "--", "--workers", "2", "--")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['--verbose', '--workers', '2', '--']"


def test_a_commands_arguments_are_never_checked(cli: CLI) -> None:
    """After `-- COMMAND`, every argument is the command's, our option names included."""
    result = cli("--restart", "never", "--", sys.executable, "-c", ARGV_SCRIPT, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['--workers', '2']"


def test_version(cli: CLI) -> None:
    """`agent-run --version` prints the installed version."""
    from launcher import __version__

    result = cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"agent-run {__version__}"


def test_unknown_variable_is_warned_with_a_suggestion(cli: CLI) -> None:
    """AGENT_RUN_SECRET=demo is not silently ignored: a warning names AGENT_RUN_SECRETS."""
    result = cli("--restart", "never", "--", "true", env={"AGENT_RUN_SECRET": "demo"})
    assert result.returncode == 0
    assert (
        "unknown variable AGENT_RUN_SECRET ignored (did you mean AGENT_RUN_SECRETS?)"
        in result.stderr
    )


def test_runtime_variables_are_not_warned(cli: CLI) -> None:
    """An agent that runs agent-run itself carries AGENT_RUN_WORKER etc.: no warning."""
    env = {"AGENT_RUN_WORKER": "0", "AGENT_RUN_SECRETS_VERSION": "3", "AGENT_RUN_PORT": "8000"}
    result = cli("--restart", "never", "--", "true", env=env)
    assert result.returncode == 0 and "warning" not in result.stderr


def test_every_variable_agent_run_reads_is_known() -> None:
    """Each AGENT_RUN_* name in the code is an option's or listed: none is warned as unknown."""
    import re

    from launcher.cli.run_command import OPTIONS, OTHER_VARIABLES, _env_name

    root = Path(__file__).parent.parent / "launcher"
    used = {
        name
        for path in root.rglob("*.py")
        for name in re.findall(r"\bAGENT_RUN_[A-Z][A-Z0-9_]*[A-Z0-9]\b", path.read_text())
    }
    known = {_env_name(option) for option in OPTIONS} | OTHER_VARIABLES
    assert used - known == set()


def test_toml_typo_is_warned_with_a_suggestion(cli: CLI) -> None:
    """`worker = 2` in agent-run.toml: "did you mean 'workers'?"."""
    (cli.cwd / "agent-run.toml").write_text("worker = 2\n")
    result = cli("--restart", "never", "--", "true")
    assert "unknown key 'worker' ignored (did you mean 'workers'?)" in result.stderr


def test_help_texts(cli: CLI) -> None:
    """Main help names `sessions`; dev help says what dev changes; --key-file the order."""
    main = cli("--help").stdout
    assert "agent-run sessions" in main and "--version" in main and "--mode" in main
    assert "/run/secrets/agent-run.key" in main and "<store>/master.key" in main
    dev = cli("dev", "--help").stdout
    assert "--drain-timeout 5" in dev and "--max-restarts never" in dev
    assert "changed .py file restarts" in dev


def test_a_crash_loop_ends_the_launcher_by_default(cli: CLI) -> None:
    """With default options a worker that always fails is given up and agent-run exits 1."""
    result = cli("--", sys.executable, "-c", "raise SystemExit(3)", timeout=90)
    assert result.returncode == 1
    assert '"slot_gave_up"' in result.stderr


def test_restart_limits_by_default_never_and_under_dev(clean_environ: None) -> None:
    """Finite by default, `never` when asked, and never under `agent-run dev`."""
    assert build_config(["--", "true"], dev=False).max_restarts == 5
    assert build_config(["--max-restarts", "never", "--", "true"], dev=False).max_restarts is None
    assert build_config(["--", "true"], dev=True).max_restarts is None
    assert build_config(["--max-restarts", "2", "--", "true"], dev=True).max_restarts == 2


def test_a_helper_named_bot_keeps_a_plain_script(cli: CLI) -> None:
    """A script with a module-level `def bot():` helper runs as a script, not in session mode."""
    (cli.cwd / "tool.py").write_text("def bot():\n    return 'beep'\n\nprint('ran', bot())\n")
    result = cli("--restart", "never", "tool.py", timeout=30)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ran beep"


def test_mode_worker_runs_a_pipecat_bot_as_a_script(cli: CLI) -> None:
    """--mode worker: a file with `async def bot(runner_args)` runs as a plain script."""
    (cli.cwd / "bot.py").write_text("async def bot(runner_args):\n    pass\n\nprint('main')\n")
    result = cli("--mode", "worker", "--restart", "never", "bot.py", timeout=30)
    assert result.returncode == 0 and result.stdout.strip() == "main"


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("async def bot(runner_args):\n    pass\n", True),
        ("async def bot(runner_args: 'RunnerArguments') -> None:\n    pass\n", True),
        ("async def bot(args, extra=None):\n    pass\n", True),
        ("async def bot(*args):\n    pass\n", True),
        ("def bot(runner_args):\n    pass\n", False),  # sync: ask with --mode session
        ("def bot():\n    pass\n", False),
        ("async def bot():\n    pass\n", False),
        ("async def bot(a, b):\n    pass\n", False),
        ("async def bot(a, *, key):\n    pass\n", False),
        ("class A:\n    async def bot(self, args): pass\n", False),
    ],
)
def test_only_pipecats_signature_selects_session_mode(source: str, expected: bool) -> None:
    """Session mode by itself only for a module-level `async def bot(runner_args)`."""
    assert is_session_bot(source.encode()) is expected


def test_mode_session_accepts_any_bot_and_refuses_none(tmp_path: Path) -> None:
    """--mode session takes a sync bot(); without any bot() it says what to do."""
    script = tmp_path / "agent.py"
    script.write_text("def bot(args):\n    pass\n")
    target = Target(TargetKind.SCRIPT, str(script))
    assert find_entrypoint(target, None) is None
    assert find_entrypoint(target, None, "session") == Entrypoint("script", str(script), "bot")
    script.write_text("print('no bot')\n")
    with pytest.raises(UsageError, match="--entrypoint"):
        find_entrypoint(target, None, "session")
    with pytest.raises(UsageError, match="give one of them"):
        find_entrypoint(target, "main", "worker")

"""Hot paths and their imports: the launcher's before its first worker exists, and the
`secrets` commands' (one of which runs on every update).

An agent's first output line should come within 40 ms of `agent-run bot.py` (bench/launch.py),
so the supervisor spawns its workers before it imports its event loop, logging or HTTP
stacks. These tests run the real CLI in a subprocess with an audit hook that takes a
snapshot of `sys.modules` at the first `os.fork` (the audit event of every spawn), and fail
when a module that belongs after the spawn has crept in before it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import CLI

# Runs `agent-run ARGS...` in-process and records what was imported before the first fork.
DRIVER = """
import os, sys
before = set(sys.modules)
parent = os.getpid()
report = sys.argv[1]

def at_fork(event, args):
    if event == "os.fork" and os.getpid() == parent and not os.path.exists(report):
        with open(report, "w") as stream:
            stream.write("\\n".join(sorted(set(sys.modules) - before)))

sys.addaudithook(at_fork)
from launcher.cli import main
sys.exit(main(sys.argv[2:]))
"""

# Belong after the first spawn: the event loop and what runs in it, and the standard
# library modules the launch path does without (each costs 2-7 ms; `typing`, `contextlib`,
# `re` and `base64`, under 2 ms together after `json`, are allowed: plain code wins there).
AFTER_SPAWN = (
    "anyio",
    "asyncio",
    "sniffio",
    "structlog",
    "uvicorn",
    "starlette",
    "h11",
    "prometheus_client",
    "watchfiles",
    "argparse",
    "dataclasses",
    "inspect",
    "pathlib",
    "urllib.parse",
    "subprocess",
    "threading",
    "socket",
    "tempfile",
    "hashlib",
    "logging",
    "datetime",
    "tomllib",
)


def _imported_before_spawn(tmp_path: Path, env: dict[str, str], *args: str) -> set[str]:
    """Run `agent-run --restart never ARGS bot.py`; the modules it imported before forking."""
    report = tmp_path / "imported.txt"
    bot = tmp_path / "bot.py"
    bot.write_text("print('agent up', flush=True)\n")
    result = subprocess.run(
        [sys.executable, "-c", DRIVER, str(report), "--restart", "never", *args, str(bot)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "agent up" in result.stdout
    imported = set(report.read_text().split())
    assert {"launcher.store.sets", "launcher.process.worker"} <= imported  # the snapshot is real
    return imported


@pytest.fixture
def secret_set(cli: CLI) -> str:
    cli("secrets", "set", "prod", "API_KEY=sk-launch-path-0001", "OTHER=value-0002")
    return "prod"


def test_nothing_heavy_is_imported_before_the_first_spawn(
    tmp_path: Path, cli: CLI, secret_set: str
) -> None:
    """With a secret set, masking and the key from the environment, the spawn comes first."""
    imported = _imported_before_spawn(tmp_path, cli.env, "--secrets", secret_set, "--no-watch")
    early = sorted(name for name in AFTER_SPAWN if name in imported)
    assert early == [], f"imported before the first worker was spawned: {early}"


def test_a_key_file_and_the_store_watcher_keep_the_spawn_first(
    tmp_path: Path, cli: CLI, secret_set: str
) -> None:
    """A master key read from a file, and watching the store, add no heavy import either."""
    key_file = tmp_path / "master.key"
    key_file.write_text(cli.env["AGENT_RUN_MASTER_KEY"] + "\n")
    key_file.chmod(0o600)
    env = {k: v for k, v in cli.env.items() if k != "AGENT_RUN_MASTER_KEY"}
    env["AGENT_RUN_KEY_FILE"] = str(key_file)
    imported = _imported_before_spawn(tmp_path, env, "--secrets", secret_set)
    early = sorted(name for name in AFTER_SPAWN if name in imported)
    assert early == [], f"imported before the first worker was spawned: {early}"


# What the store commands an operator runs often (and a deploy script runs on every update)
# must not import: each would add 1-4 ms to every `secrets set` (bench/store.py).
STORE_COMMAND_AVOIDS = ("pathlib", "datetime", "dataclasses", "inspect", "subprocess")

# Runs `agent-run ARGS...` in-process and writes the modules it imported to a report file.
IMPORTS_DRIVER = """
import sys
before = set(sys.modules)
from launcher.cli import main
code = main(sys.argv[2:])
with open(sys.argv[1], "w") as stream:
    stream.write("\\n".join(sorted(set(sys.modules) - before)))
sys.exit(code)
"""


@pytest.mark.parametrize(
    "args",
    [
        ("secrets", "set", "prod", "API_KEY=sk-store-path-0003"),
        ("secrets", "unset", "prod", "OTHER"),
        ("secrets", "list"),
        ("secrets", "list", "prod"),
        ("secrets", "history", "prod"),
    ],
    ids=lambda args: " ".join(args[:2]) + (" NAME" if len(args) > 2 else ""),
)
def test_store_commands_stay_light(
    tmp_path: Path, cli: CLI, secret_set: str, args: tuple[str, ...]
) -> None:
    report = tmp_path / "imported.txt"
    result = subprocess.run(
        [sys.executable, "-c", IMPORTS_DRIVER, str(report), *args],
        capture_output=True,
        text=True,
        env=cli.env,
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    imported = set(report.read_text().split())
    assert "launcher.store.sets" in imported  # the report is real
    heavy = sorted(name for name in STORE_COMMAND_AVOIDS if name in imported)
    assert heavy == [], f"`agent-run {' '.join(args)}` imported {heavy}"

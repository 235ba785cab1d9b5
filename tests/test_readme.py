"""README's commands run as written: every block marked `<!-- readme-test: NAME -->`.

Each block runs line by line in a fresh sandbox (empty home, no AGENT_RUN_* variables, this
checkout's `agent-run` on PATH, the sample agents in the working directory), in bash, with the
environment carried from one line to the next (`export` works). A line that starts an agent
runs until the agent has printed what the test expects, then gets Ctrl-C (SIGINT) and must
exit 0. The Docker block is run by tests/test_deploy.py (as the image would run it).
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
DEADLINE_S = 60.0
STORE_COMMANDS = {"secrets", "key", "platform", "status", "reload", "sessions"}


def readme_blocks() -> dict[str, str]:
    """The marked blocks of README.md, by name."""
    found = re.findall(
        r"<!-- readme-test: ([\w-]+) -->\n+```[a-z]*\n(.*?)\n```", README.read_text(), re.S
    )
    return dict(found)


def command_lines(block: str) -> list[str]:
    """The block's commands, continuation lines joined."""
    return [line for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def sandbox(tmp_path: Path) -> tuple[dict[str, str], Path]:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "sample_agents").symlink_to(ROOT / "sample_agents")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_RUN_", "XDG_", "LIVEKIT_", "CREDENTIALS_", "NOTIFY_"))
    }
    env.update(HOME=str(home), PATH=f"{BIN}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}")
    return env, work


def starts_agent(line: str) -> bool:
    words = line.split()
    return bool(words) and words[0] == "agent-run" and words[1] not in STORE_COMMANDS


def run_line(
    line: str, env: dict[str, str], cwd: Path, prefix: Sequence[str] = ()
) -> dict[str, str]:
    """Run one shell line (after `prefix`, e.g. a change of user); return the environment it
    leaves behind (for `export`)."""
    read_end, write_end = os.pipe()
    script = f"set -e\n{line}\nenv -0 >&{write_end}\n"
    with subprocess.Popen(
        [*prefix, "bash", "-c", script],
        env=env,
        cwd=cwd,
        pass_fds=(write_end,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as process:
        os.close(write_end)
        with os.fdopen(read_end, "rb") as stream:
            leftover = stream.read()
        _, err = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0, f"{line!r} failed ({process.returncode}): {err.decode()}"
    return dict(item.split("=", 1) for item in leftover.decode().split("\0") if "=" in item)


def run_agent(line: str, env: dict[str, str], cwd: Path, expect: str) -> str:
    """Start the agent line, wait until its output matches `expect`, Ctrl-C it: exit 0."""
    process = subprocess.Popen(
        ["bash", "-c", f"exec {line}"],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    output = b""
    try:
        selector = selectors.DefaultSelector()
        assert process.stdout is not None
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + DEADLINE_S
        while not re.search(expect, output.decode(errors="replace")):
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{line!r} never printed {expect!r}: {output.decode()}"
            if selector.select(remaining):
                chunk = os.read(process.stdout.fileno(), 65536)
                assert chunk, f"{line!r} ended early: {output.decode()}"
                output += chunk
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=DEADLINE_S)
        assert process.returncode == 0, f"{line!r} exited {process.returncode}: {err.decode()}"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return output.decode()


def run_block(name: str, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Run a block that starts no agent; return its final environment and directory."""
    env, cwd = sandbox(tmp_path)
    for line in command_lines(readme_blocks()[name]):
        assert not starts_agent(line), line
        env = run_line(line, env, cwd)
    return env, cwd


def test_every_marked_block_is_tested() -> None:
    """Each block marked for testing in README is one this suite knows how to run."""
    assert set(readme_blocks()) == {
        "quickstart",
        "first-use",
        "master-key",
        "deploy-store",
        "docker",
    }


def test_test_command_is_where_ci_reads_it() -> None:
    """.ci/run finds the test command between the TEST-COMMAND markers."""
    text = README.read_text()
    block = re.search(r"<!-- TEST-COMMAND -->\n```\n(.*?)\n```\n<!-- /TEST-COMMAND -->", text, re.S)
    assert block is not None
    assert "pip install -q -e '.[test]'" in block.group(1) and "pytest" in block.group(1)


def test_quickstart(tmp_path: Path) -> None:
    """The quickstart line stores a set and runs the sample worker with its two secrets."""
    steps = readme_blocks()["quickstart"].strip().split(" && ")
    # The first two steps make and fill .venv; the suite already runs in such an install.
    assert steps[0] == "python3 -m venv .venv" and steps[1].startswith(".venv/bin/pip install")
    env, cwd = sandbox(tmp_path)
    commands = [step.replace(".venv/bin/agent-run", "agent-run") for step in steps[2:]]
    env = run_line(commands[0], env, cwd)
    output = run_agent(commands[1], env, cwd, r"secrets v1: .*\n")
    assert "secrets v1: DEMO_API_KEY, OPENAI_API_KEY" in output


def test_first_use(tmp_path: Path) -> None:
    """Both workers of the first-use block see the file's and stdin's secrets, no value."""
    env, cwd = sandbox(tmp_path)
    lines = command_lines(readme_blocks()["first-use"])
    for line in lines[:-1]:
        env = run_line(line, env, cwd)
    output = run_agent(lines[-1], env, cwd, r"(?s)(secrets v2: .*\n.*){2}")
    assert output.count("secrets v2: CARTESIA_API_KEY, DEEPGRAM_API_KEY, OPENAI_API_KEY") == 2
    assert "sk-test-1" not in output and "sk-live-3" not in output


def test_master_key_backup_and_restore(tmp_path: Path) -> None:
    """Backing up, restoring and checking the key work on a store that has a set."""
    env, cwd = sandbox(tmp_path)
    env = run_line("agent-run secrets set prod DEMO_API_KEY=sk-demo-123", env, cwd)
    key = Path(env["HOME"]) / ".local/share/agent-run/master.key"
    original = key.read_bytes()
    for line in command_lines(readme_blocks()["master-key"]):
        env = run_line(line, env, cwd)
    assert key.read_bytes() == original
    assert stat.S_IMODE((Path(env["HOME"]) / "backup/agent-run-master.key").stat().st_mode) == 0o600


def test_deploy_store_holds_sets_only(tmp_path: Path) -> None:
    """The deploy store has the set and no key; the key file beside it is private."""
    _, cwd = run_block("deploy-store", tmp_path)
    store = cwd / "deploy-store"
    assert sorted(p.name for p in store.iterdir() if not p.name.startswith(".")) == ["prod.set"]
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    assert stat.S_IMODE((store / "prod.set").stat().st_mode) == 0o600
    assert stat.S_IMODE((cwd / "agent-run.key").stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["quickstart", "first-use", "master-key", "deploy-store"])
def test_blocks_need_no_placeholders(name: str) -> None:
    """A runnable block has no `...` or `<placeholder>` a reader would have to fill in."""
    block = readme_blocks()[name]
    assert "..." not in block and not re.search(r"<[a-z-]+>", block)

"""Shared fixtures: a temporary store, a master key, and a way to run the real CLI."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

AGENTS = Path(__file__).parent / "agents"
SAMPLE_AGENTS = Path(__file__).parent.parent / "sample_agents"


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """An empty store directory (created by agent-run on first use)."""
    return tmp_path / "store"


@pytest.fixture
def master_key() -> str:
    """A fresh base64 master key, as AGENT_RUN_MASTER_KEY takes it."""
    return base64.b64encode(os.urandom(32)).decode()


@pytest.fixture
def cli_env(store_dir: Path, master_key: str, tmp_path: Path) -> dict[str, str]:
    """An environment for the CLI that points at the temporary store and key, and nothing else."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AGENT_RUN_", "LIVEKIT_")) and k not in ("CREDENTIALS_DIRECTORY",)
    }
    env["AGENT_RUN_HOME"] = str(store_dir)
    env["AGENT_RUN_MASTER_KEY"] = master_key
    env["XDG_DATA_HOME"] = str(tmp_path / "xdg")
    env.pop("NOTIFY_SOCKET", None)
    return env


class CLI:
    """Runs `agent-run` as a real subprocess (via `python -m launcher`)."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.env = env
        self.cwd = cwd

    def __call__(
        self,
        *args: str,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        return subprocess.run(
            [sys.executable, "-m", "launcher", *args],
            input=input,
            capture_output=True,
            text=True,
            env=full_env,
            cwd=cwd or self.cwd,
            timeout=timeout,
        )

    def argv(self, *args: str) -> Sequence[str]:
        return [sys.executable, "-m", "launcher", *args]


@pytest.fixture
def cli(cli_env: dict[str, str], tmp_path: Path) -> Iterator[CLI]:
    """The real CLI bound to a temporary store and master key."""
    work = tmp_path / "work"
    work.mkdir()
    yield CLI(cli_env, work)


@pytest.fixture
def anyio_backend() -> str:
    """The supervisor runs on asyncio; so do the async tests."""
    return "asyncio"

"""agent-run's start-up hook for Python targets (launcher/process/python_bootstrap)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from .conftest import CLI

REPORT = (
    "import json, os, sys\n"
    "print(json.dumps({'PYTHONPATH': os.environ.get('PYTHONPATH'),\n"
    "    'on_path': [p for p in sys.path if 'python_bootstrap' in p],\n"
    "    'marker': os.environ.get('SHADOWED_SITECUSTOMIZE_RAN')}))\n"
)


def _run(
    cli: CLI, tmp_path: Path, script: str, *options: str, env: dict[str, str] | None = None
) -> dict[str, object]:
    agent = tmp_path / "agent.py"
    agent.write_text(script)
    done = cli("--restart", "never", "--no-watch", *options, str(agent), env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_hook_leaves_no_trace_and_runs_a_shadowed_sitecustomize(cli: CLI, tmp_path: Path) -> None:
    """The agent sees its own PYTHONPATH and sys.path, and a sitecustomize of its own still runs."""
    own = tmp_path / "own"
    own.mkdir()
    (own / "sitecustomize.py").write_text(
        "import os\nos.environ['SHADOWED_SITECUSTOMIZE_RAN'] = '1'\n"
    )
    report = _run(cli, tmp_path, REPORT, env={"PYTHONPATH": str(own)})
    assert report == {"PYTHONPATH": str(own), "on_path": [], "marker": "1"}


def test_hook_is_for_python_targets_only(cli: CLI, tmp_path: Path) -> None:
    """A command target (`-- CMD`) gets no PYTHONPATH from agent-run."""
    done = cli("--restart", "never", "--no-watch", "--", sys.executable, "-c", REPORT)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["PYTHONPATH"] is None


LIVEKIT_PORTS = (
    "import json, os\n"
    "from livekit.agents import AgentServer, WorkerOptions\n"
    "from livekit.agents.worker import ServerEnvOption\n"
    "pinned = AgentServer(port=8081)\n"
    "print(json.dumps({'default': ServerEnvOption.getvalue(AgentServer()._port, False),\n"
    "    'dev': ServerEnvOption.getvalue(AgentServer()._port, True),\n"
    "    'options': ServerEnvOption.getvalue(WorkerOptions(entrypoint_fnc=print).port, False),\n"
    "    'pinned': pinned._port}))\n"
)


def test_livekit_default_health_port_becomes_the_workers_own(cli: CLI, tmp_path: Path) -> None:
    """AgentServer()'s production default 8081 becomes AGENT_RUN_PORT; an explicit port= and dev mode's 0 are kept (without --port-base it becomes 0: tests/test_livekit.py)."""
    pytest.importorskip("livekit.agents")
    report = _run(cli, tmp_path, LIVEKIT_PORTS, "--port-base", "47000")
    assert report == {"default": 47000, "dev": 0, "options": 47000, "pinned": 8081}

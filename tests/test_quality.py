"""The house tooling holds: ruff (lint and format) and mypy --strict pass on the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_ruff_lint_and_format() -> None:
    """ruff finds nothing to fix in launcher/, tests/ and bench/."""
    lint = _run("ruff", "check", "launcher", "tests", "bench", "sample_agents")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = _run("ruff", "format", "--check", "launcher", "tests", "bench", "sample_agents")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


@pytest.mark.slow
def test_mypy_strict() -> None:
    """mypy --strict (configured in pyproject.toml) passes on the launcher package."""
    result = _run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr

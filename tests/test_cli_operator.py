"""Store commands an operator gets wrong or needs reminding of: duplicates, access, rotation."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import CLI
from .test_deploy_recipes import as_user

OTHER_UID = 23457


def test_duplicate_key_is_refused_and_nothing_is_stored(cli: CLI) -> None:
    """`secrets set lim A=1 A=2` exits 65, names A, and writes nothing."""
    result = cli("secrets", "set", "lim", "A_KEY=first", "A_KEY=second")
    assert result.returncode == 65
    assert "A_KEY given more than once" in result.stderr
    assert "first" not in result.stderr and "second" not in result.stderr
    assert "no secret sets" in cli("secrets", "list").stdout


def test_duplicate_across_forms_is_refused(cli: CLI) -> None:
    """The same key as a pair and through --secrets or --from-env is refused too."""
    assert cli("secrets", "set", "s", "K_1=a", "--secrets", "K_1=b").returncode == 65
    env = {"K_2": "from-env"}
    assert cli("secrets", "set", "s", "K_2=a", "--from-env", "K_2", env=env).returncode == 65


def test_key_rotate_reminds_to_replace_deployed_copies(cli: CLI, tmp_path: Path) -> None:
    """After `key rotate` the operator is told to replace deployed keys, set files, backups."""
    key_file = tmp_path / "k.key"
    env = {"AGENT_RUN_MASTER_KEY": "", "AGENT_RUN_KEY_FILE": str(key_file)}
    assert cli("key", "init", env=env).returncode == 0
    assert cli("secrets", "set", "s", "K_1=value-1", env=env).returncode == 0
    result = cli("key", "rotate", env=env)
    assert result.returncode == 0, result.stderr
    assert "replace every deployed copy of the key" in result.stderr
    assert "backups" in result.stderr


@pytest.fixture
def private_store() -> Iterator[tuple[Path, dict[str, str]]]:
    """A store (0700) with a set, owned by root, in a directory other users can reach."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the command runs as another user")
    base = Path(tempfile.mkdtemp(prefix="agent-run-private-", dir="/tmp"))
    base.chmod(0o755)
    store = base / "store"
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "AGENT_RUN_HOME": str(store),
        "HOME": str(base),
    }
    subprocess.run(
        [sys.executable, "-m", "launcher", "platform", "set", "livekit", "LIVEKIT_URL=wss://x"],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    yield base, env
    shutil.rmtree(base)


def _as_other(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*as_user(OTHER_UID, OTHER_UID), sys.executable, "-m", "launcher", *argv],
        env=env, capture_output=True, text=True, timeout=60, cwd="/",
    )  # fmt: skip


def test_platform_show_on_an_unreadable_store_exits_77(
    private_store: tuple[Path, dict[str, str]],
) -> None:
    """`platform show` on a store it cannot read exits 77 like `secrets list`, no `missing`."""
    _, env = private_store
    listing = _as_other(["secrets", "list"], env)
    show = _as_other(["platform", "show"], env)
    assert listing.returncode == 77
    assert show.returncode == 77, show.stdout + show.stderr
    assert "missing" not in show.stdout and "permission denied" in show.stderr
    assert "Traceback" not in show.stderr


def test_permission_error_names_the_owner_and_the_fix(
    private_store: tuple[Path, dict[str, str]],
) -> None:
    """The 77 message says which uid runs, which owns the store, and how to fix it."""
    _, env = private_store
    result = _as_other(["secrets", "list"], env)
    assert f"agent-run runs as uid {OTHER_UID}" in result.stderr
    assert "belongs to uid 0" in result.stderr and "docker run --user 0" in result.stderr

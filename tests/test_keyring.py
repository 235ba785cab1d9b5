"""The keyring and `key rotate` (store/keyring.py): one protocol for writers, readers, rotation."""

from __future__ import annotations

import base64
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

from launcher.store.keyring import Keyring
from launcher.store.keys import MasterKey
from launcher.store.sets import Store

from .conftest import CLI, PROBE, Launcher

FILE_KEY = {"AGENT_RUN_MASTER_KEY": ""}  # use <store>/master.key, which rotate replaces


def _start(cli: CLI, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        list(cli.argv(*args)),
        env={**cli.env, **FILE_KEY},
        cwd=cli.cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process: subprocess.Popen[str]) -> str:
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    return out


def test_concurrent_writers_during_key_rotate_never_damage_a_set(cli: CLI, store_dir: Path) -> None:
    """Rounds of `secrets set` racing `key rotate`: every set opens with the final key, no write lost."""
    sets = [f"s{n}" for n in range(12)]
    for name in sets:
        assert cli("secrets", "set", name, "BASE=1", env=FILE_KEY).returncode == 0
    rng = random.Random(12)
    expected: dict[str, dict[str, str]] = {name: {"BASE": "1"} for name in sets}
    for round_ in range(8):
        rotation = _start(cli, "key", "rotate")
        writers = []
        for writer in range(5):
            # Existing sets (re-sealed under the writer's feet) and new ones (never listed
            # by the rotation when it started).
            name = rng.choice(sets) if writer < 4 else f"new{round_}"
            key = f"R{round_}W{writer}"
            expected.setdefault(name, {})[key] = "x"
            writers.append(_start(cli, "secrets", "set", name, f"{key}=x"))
        _finish(rotation)
        for process in writers:
            _finish(process)
        ring = Keyring.open(store_dir, None, {})
        assert ring.next is None  # the rotation finished: one key, no `.next` left
        store = Store(store_dir)
        for name, values in expected.items():
            assert store.read(name, ring).plain() == values, (round_, name)


def test_a_running_launcher_follows_rotations(
    cli: CLI, launch: Callable[..., Launcher], probe_dir: Path
) -> None:
    """A launcher keeps rolling out new versions across `key rotate`, without a restart."""
    cli("secrets", "set", "prod", "N=1", env=FILE_KEY)
    launcher = launch(
        "--secrets", "prod", "--ready", "notify", str(PROBE), env={"PROBE_NOTIFY": "1", **FILE_KEY}
    )  # fmt: skip
    launcher.wait_event("worker_ready", version=1)
    for version in (2, 3):
        _finish(_start(cli, "key", "rotate"))
        assert cli("secrets", "set", "prod", f"N={version}", env=FILE_KEY).returncode == 0
        launcher.wait_event("rollout_succeeded", to_version=version)
    assert not any(e.get("event") == "rollout_skipped" for e in launcher.events)


def test_an_interrupted_rotation_is_sealed_with_the_next_key_and_resumes(
    cli: CLI, store_dir: Path
) -> None:
    """With `<key>.next` left by a crashed rotation, writes seal with it and rotate finishes."""
    cli("secrets", "set", "a", "K=1", env=FILE_KEY)
    cli("secrets", "set", "b", "K=1", env=FILE_KEY)
    current = Keyring.open(store_dir, None, {}).current
    following = MasterKey(os.urandom(32), "next")
    (store_dir / "master.key.next").write_bytes(base64.b64encode(following.key) + b"\n")
    (store_dir / "master.key.next").chmod(0o600)
    # The crashed rotation had re-sealed `a` already; `b` is still under the current key.
    Store(store_dir).rewrap("a", Keyring(current, following), following)
    assert cli("secrets", "set", "b", "K=2", env=FILE_KEY).returncode == 0
    assert cli("secrets", "set", "c", "K=3", env=FILE_KEY).returncode == 0
    for name in ("a", "b", "c"):
        header = (store_dir / f"{name}.set").read_text().split("\n")[0]
        assert following.id in header, name  # the newest key seals every write
    rotated = cli("key", "rotate", env=FILE_KEY)
    assert rotated.returncode == 0 and "new key in" in rotated.stdout
    ring = Keyring.open(store_dir, None, {})
    assert ring.current.id == following.id and ring.next is None
    assert Store(store_dir).read("b", ring).plain() == {"K": "2"}

"""The secrets source (store/source.py): fingerprint first, versions only move forward."""

from __future__ import annotations

import base64
import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from launcher.cli.run_command import build_config, build_plan
from launcher.errors import VersionRegression
from launcher.store.keys import MasterKey
from launcher.store.sets import Store
from launcher.store.source import SecretsSource

from .conftest import CLI, PROBE, Launcher

NOTIFY = {"PROBE_NOTIFY": "1"}


def _put_back(path: Path, content: bytes) -> None:
    """Replace a set file with an older copy, the way a restore or `git checkout` would."""
    tmp = path.with_name(".restore.tmp")
    tmp.write_bytes(content)
    os.replace(tmp, path)


def test_a_write_during_the_first_read_is_not_recorded_as_rolled_out(
    cli: CLI, store_dir: Path, master_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version written while the launcher decrypts its first one still counts as new."""
    cli("secrets", "set", "prod", "N=1")
    for name, value in cli.env.items():
        monkeypatch.setenv(name, value)
    original = Store.read
    writes: list[int] = []

    def read_then_someone_writes(self: Store, name: str, key: Any) -> Any:
        result = original(self, name, key)
        if not writes:  # forced interleaving: `secrets set` lands right after decryption
            writes.append(cli("secrets", "set", "prod", "N=2").returncode)
        return result

    monkeypatch.setattr(Store, "read", read_then_someone_writes)
    plan = build_plan(build_config(["--secrets", "prod", str(PROBE)], dev=False))
    assert writes == [0]
    assert plan.layers.secrets_version == 1
    # The start-up fingerprint must not claim v2 is served: watcher and sessions compare it.
    assert plan.fingerprint is not None and plan.fingerprint() != plan.initial_fingerprint


def test_older_versions_are_refused_and_rollback_is_not(tmp_path: Path) -> None:
    """A snapshot never goes below a version it returned; a rollback (a newer version) passes."""
    key = MasterKey(os.urandom(32), "test")
    store = Store(tmp_path)
    store.update("prod", key, lambda v: {"N": "1"})
    store.update("prod", key, lambda v: {"N": "2"})
    v2 = (tmp_path / "prod.set").read_bytes()
    store.update("prod", key, lambda v: {"N": "3"})
    environ = {"AGENT_RUN_MASTER_KEY": base64.b64encode(key.key).decode()}
    source = SecretsSource(store, "prod", environ=environ)
    assert source.snapshot().version == 3
    _put_back(tmp_path / "prod.set", v2)
    with pytest.raises(VersionRegression, match=r"went back from v3 to v2.*secrets rollback"):
        source.snapshot()
    result = store.rollback("prod", key, 1)  # written as v4, above everything served
    assert result.version == 4
    snapshot = source.snapshot()
    assert (snapshot.version, snapshot.layers.secrets["N"]) == (4, "1")


def _metrics(address: str) -> str:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
        return str(response.read().decode())


def test_an_older_file_put_back_is_refused_while_the_pool_serves(
    cli: CLI, launch: Callable[..., Launcher], store_dir: Path, probe_dir: Path
) -> None:
    """An old set file pasted back is refused (log, status, metric); the next write rolls out."""
    cli("secrets", "set", "prod", "TOKEN=revoked")
    old_file = (store_dir / "prod.set").read_bytes()
    cli("secrets", "set", "prod", "TOKEN=current")
    launcher = launch(
        "--secrets", "prod", "--ready", "notify", "--health", "127.0.0.1:0", str(PROBE),
        env=NOTIFY,
    )  # fmt: skip
    address = str(launcher.wait_event("health_listening")["address"])
    worker = launcher.wait_event("worker_ready", version=2)["pid"]
    _put_back(store_dir / "prod.set", old_file)
    refused = launcher.wait_event("secrets_version_refused")
    assert "went back from v2 to v1" in str(refused["reason"])
    status = cli("status", "--json", "--name", "prod")
    data = json.loads(status.stdout)
    assert data["version"] == 2 and data["rollout"]["refused"] == 1
    assert "went back from v2 to v1" in cli("status", "--name", "prod").stdout
    assert "agent_run_secrets_versions_refused_total 1.0" in _metrics(address)
    assert not any(e.get("event") == "rollout_started" for e in launcher.events)
    assert [w["pid"] for w in data["workers"]] == [worker]  # still serving, untouched
    # Writers continue above every version ever written (the lock file remembers v2).
    written = cli("secrets", "set", "prod", "TOKEN=fresh")
    assert written.returncode == 0 and "prod v3" in written.stdout
    launcher.wait_event("rollout_succeeded", to_version=3)
    rolled_back = cli("secrets", "rollback", "prod")
    assert rolled_back.returncode == 0 and "prod v4" in rolled_back.stdout
    launcher.wait_event("rollout_succeeded", to_version=4)

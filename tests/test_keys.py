"""Where the master key comes from (SPEC §2.1): source order, file modes, creation."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import ConfigError, PermissionProblem
from launcher.store import keys
from launcher.store.keys import MasterKey, load_master_key


def _key_file(path: Path, mode: int = 0o600, raw: bool = False) -> bytes:
    key = os.urandom(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key if raw else base64.b64encode(key) + b"\n")
    path.chmod(mode)
    return key


@pytest.fixture(autouse=True)
def no_docker_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the Docker secret location into the test's directory (nothing there by default)."""
    path = tmp_path / "run-secrets" / "agent-run.key"
    monkeypatch.setattr(keys, "DOCKER_SECRET", path)
    return path


def test_sources_are_tried_in_spec_order(tmp_path: Path, no_docker_secret: Path) -> None:
    """Env var, then key file, then $CREDENTIALS_DIRECTORY, then /run/secrets, then the store."""
    store = tmp_path / "store"
    from_store = _key_file(store / "master.key")
    from_docker = _key_file(no_docker_secret)
    from_credentials = _key_file(tmp_path / "creds" / "agent-run.key")
    from_file = _key_file(tmp_path / "explicit.key")
    from_env = os.urandom(32)
    environ = {
        "AGENT_RUN_MASTER_KEY": base64.b64encode(from_env).decode(),
        "AGENT_RUN_KEY_FILE": str(tmp_path / "explicit.key"),
        "CREDENTIALS_DIRECTORY": str(tmp_path / "creds"),
    }
    expected = [
        (from_env, "AGENT_RUN_MASTER_KEY"),
        (from_file, str(tmp_path / "explicit.key")),
        (from_credentials, str(tmp_path / "creds" / "agent-run.key")),
        (from_docker, str(no_docker_secret)),
        (from_store, str(store / "master.key")),
    ]
    for key, source in expected:
        found = load_master_key(store, None, environ)
        assert (found.key, found.source) == (key, source)
        # Take this source away: the next one in the order must win.
        if environ:
            del environ[next(iter(environ))]
        elif no_docker_secret.exists():
            no_docker_secret.unlink()


def test_key_file_argument_equals_the_environment_variable(tmp_path: Path) -> None:
    """--key-file (the key_file argument) is the same source as AGENT_RUN_KEY_FILE."""
    key = _key_file(tmp_path / "k")
    assert load_master_key(tmp_path / "store", tmp_path / "k", {}).key == key


def test_named_key_file_never_falls_back(tmp_path: Path) -> None:
    """A key file asked for by name that is missing is an error, even with a store key present."""
    _key_file(tmp_path / "store" / "master.key")
    with pytest.raises(ConfigError, match="does not exist"):
        load_master_key(tmp_path / "store", tmp_path / "typo.key", {}, create=True)
    assert not (tmp_path / "typo.key").exists()


def test_no_key_says_how_to_create_one(tmp_path: Path) -> None:
    """Without any key: ConfigError naming what was tried and `agent-run key init`."""
    with pytest.raises(ConfigError, match="agent-run key init") as caught:
        load_master_key(tmp_path / "store", None, {})
    assert "AGENT_RUN_MASTER_KEY" in str(caught.value)
    assert str(tmp_path / "store" / "master.key") in str(caught.value)
    assert not (tmp_path / "store").exists()


def test_create_makes_a_private_store_key_once(tmp_path: Path) -> None:
    """create=True writes <store>/master.key 0600 in a 0700 store, and reuses it afterwards."""
    store = tmp_path / "store"
    first = load_master_key(store, None, {}, create=True)
    assert first.created and first.source == str(store / "master.key")
    assert (store / "master.key").stat().st_mode & 0o777 == 0o600
    assert store.stat().st_mode & 0o777 == 0o700
    again = load_master_key(store, None, {}, create=True)
    assert not again.created and again.key == first.key
    assert [p.name for p in store.iterdir()] == ["master.key"]  # no temporary file left


CREATE = """
import sys
from pathlib import Path
from launcher.store.keys import load_master_key
print(load_master_key(Path(sys.argv[1]), None, {}, create=True).id, flush=True)
"""


def test_concurrent_first_use_agrees_on_one_key(tmp_path: Path) -> None:
    """Eight processes creating the store key at once all end up with the same key."""
    store = tmp_path / "store"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CREATE, str(store)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(8)
    ]
    ids = set()
    for proc in procs:
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0
        ids.add(out.strip())
    assert len(ids) == 1


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o700 | 0o004])
def test_key_file_open_to_others_is_refused(tmp_path: Path, mode: int) -> None:
    """Any group or other permission bit refuses the key, with the chmod that fixes it."""
    path = tmp_path / "k"
    _key_file(path, mode)
    with pytest.raises(PermissionProblem, match=f"chmod 600 {path}"):
        load_master_key(tmp_path, path, {})


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_file_is_accepted(tmp_path: Path, mode: int) -> None:
    """Owner-only modes are accepted, as ssh accepts them."""
    key = _key_file(tmp_path / "k", mode)
    assert load_master_key(tmp_path, tmp_path / "k", {}).key == key


def test_raw_32_byte_key_file_is_accepted(tmp_path: Path) -> None:
    """A key file may hold the 32 raw bytes instead of base64 text."""
    key = _key_file(tmp_path / "k", raw=True)
    assert load_master_key(tmp_path, tmp_path / "k", {}).key == key


@pytest.mark.parametrize("text", ["", "c2hvcnQ=", "not base64 at all!", "A" * 45])
def test_malformed_key_is_a_configuration_error(tmp_path: Path, text: str) -> None:
    """A key that is not 32 bytes of base64 is refused without echoing it."""
    with pytest.raises(ConfigError, match="not a base64-encoded 32-byte key") as caught:
        keys.decode_key(text.encode(), "AGENT_RUN_MASTER_KEY")
    if text:
        assert text not in str(caught.value)


def test_repr_never_shows_the_key() -> None:
    """The repr names the source and a fingerprint, never the key bytes or their base64."""
    raw = os.urandom(32)
    key = MasterKey(raw, "AGENT_RUN_MASTER_KEY")
    shown = repr(key)
    assert "AGENT_RUN_MASTER_KEY" in shown
    assert base64.b64encode(raw).decode() not in shown and repr(raw) not in shown
    assert raw.hex() not in shown

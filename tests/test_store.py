"""The store's guarantees: tamper evidence, atomicity under SIGKILL, no lost update."""

from __future__ import annotations

import base64
import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from launcher import crypto
from launcher.errors import ConfigError, DecryptionFailed
from launcher.keys import MasterKey
from launcher.store import Store


@pytest.fixture
def key() -> MasterKey:
    return MasterKey(crypto.new_key(), "test")


def test_every_flipped_byte_is_detected(tmp_path: Path, key: MasterKey) -> None:
    """Flipping any single byte of a set file fails to read; it never yields other values."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "1", "B": "two"})
    store.update("s", key, lambda v: {**v, "A": "changed"})
    path = store.set_path("s")
    original = path.read_bytes()
    for index in range(len(original)):
        damaged = bytearray(original)
        damaged[index] ^= 0x01
        path.write_bytes(bytes(damaged))
        with pytest.raises(ConfigError):  # DecryptionFailed, or a damaged header
            store.read("s", key)
    path.write_bytes(original)
    assert store.read("s", key).plain() == {"A": "changed", "B": "two"}


def test_renamed_file_does_not_open_as_another_set(tmp_path: Path, key: MasterKey) -> None:
    """A set file copied under another set's name is refused."""
    store = Store(tmp_path)
    store.update("prod", key, lambda v: {"A": "prod-value"})
    store.set_path("prod").rename(store.set_path("dev"))
    with pytest.raises(DecryptionFailed):
        store.read("dev", key)


def test_hand_made_rollback_is_detected(tmp_path: Path, key: MasterKey) -> None:
    """Restoring an old copy of line 3 (the values) under a newer header fails."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "old"})
    old_values = store.set_path("s").read_bytes().split(b"\n")[2]
    store.update("s", key, lambda v: {"A": "new"})
    lines = store.set_path("s").read_bytes().split(b"\n")
    lines[2] = old_values
    store.set_path("s").write_bytes(b"\n".join(lines))
    with pytest.raises(DecryptionFailed):
        store.read("s", key)


def test_data_keys_are_per_set_and_nonces_fresh(tmp_path: Path, key: MasterKey) -> None:
    """Two sets with equal values share no ciphertext; rewriting the same values re-seals."""
    store = Store(tmp_path)
    store.update("a", key, lambda v: {"A": "same"})
    store.update("b", key, lambda v: {"A": "same"})
    sealed_a = store.set_path("a").read_bytes().split(b"\n")[2]
    sealed_b = store.set_path("b").read_bytes().split(b"\n")[2]
    assert sealed_a != sealed_b
    meta_a = store.set_path("a").read_bytes().split(b"\n")[1]
    meta_b = store.set_path("b").read_bytes().split(b"\n")[1]
    assert meta_a != meta_b


WRITER = """
import base64, os, sys
from launcher.keys import MasterKey
from launcher.store import Store
store = Store(__import__("pathlib").Path(sys.argv[1]))
key = MasterKey(base64.b64decode(os.environ["KEY"]), "test")
name = sys.argv[2]
for i in range(int(sys.argv[3])):
    store.update("s", key, lambda v: {**v, name: str(i)})
print("done", flush=True)
"""


def test_eight_concurrent_writers_lose_nothing(tmp_path: Path, key: MasterKey) -> None:
    """Eight processes setting different keys at once end with every key present."""
    env = {**os.environ, "KEY": base64.b64encode(key.key).decode()}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), f"K{n}", "5"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        for n in range(8)
    ]
    for writer in writers:
        out, _ = writer.communicate(timeout=120)
        assert writer.returncode == 0 and "done" in out
    values = Store(tmp_path).read("s", key)
    assert values.plain() == {f"K{n}": "4" for n in range(8)}
    assert values.version == 8 * 5


@pytest.mark.slow
def test_sigkilled_writer_never_damages_a_set(tmp_path: Path, key: MasterKey) -> None:
    """A writer killed at random moments leaves the set at its old or new version, readable."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"K": "0"})
    env = {**os.environ, "KEY": base64.b64encode(key.key).decode()}
    rng = random.Random(1234)
    seen_versions = set()
    for _ in range(200):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), "K", "1000"],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        with contextlib.suppress(subprocess.TimeoutExpired):
            writer.wait(timeout=rng.uniform(0.03, 0.12))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        current = store.read("s", key)  # raises if the file was damaged
        assert set(current.plain()) == {"K"}
        seen_versions.add(current.version)
    assert len(seen_versions) > 50  # the kills really landed mid-way through many writes
    store.update("s", key, lambda v: {"K": "final"})
    assert not list(tmp_path.glob("*.tmp"))  # the next writer cleans up what killed ones left

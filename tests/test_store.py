"""The store's guarantees: tamper evidence, atomicity under SIGKILL, no lost update."""

from __future__ import annotations

import base64
import fcntl
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launcher.errors import ConfigError, DecryptionFailed, OperationFailed
from launcher.store.keys import MasterKey
from launcher.store.sets import Store, crypto

from .as_user import NOBODY, run_cli
from .conftest import CLI


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
    """Restoring an old copy of line 4 (the values) under a newer header fails."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "old"})
    old_values = store.set_path("s").read_bytes().split(b"\n")[3]
    store.update("s", key, lambda v: {"A": "new"})
    lines = store.set_path("s").read_bytes().split(b"\n")
    lines[3] = old_values
    store.set_path("s").write_bytes(b"\n".join(lines))
    with pytest.raises(DecryptionFailed):
        store.read("s", key)


def test_data_keys_are_per_set_and_nonces_fresh(tmp_path: Path, key: MasterKey) -> None:
    """Two sets with equal values share no ciphertext; rewriting the same values re-seals."""
    store = Store(tmp_path)
    store.update("a", key, lambda v: {"A": "same"})
    store.update("b", key, lambda v: {"A": "same"})
    sealed_a = store.set_path("a").read_bytes().split(b"\n")[3]
    sealed_b = store.set_path("b").read_bytes().split(b"\n")[3]
    assert sealed_a != sealed_b
    header_a = json.loads(store.set_path("a").read_bytes().split(b"\n")[0])
    header_b = json.loads(store.set_path("b").read_bytes().split(b"\n")[0])
    key_a = crypto.open_sealed(
        key.key, base64.b64decode(header_a["data_key"]), b"agent-run data key\x00a"
    )
    key_b = crypto.open_sealed(
        key.key, base64.b64decode(header_b["data_key"]), b"agent-run data key\x00b"
    )
    assert key_a != key_b and len(key_a) == 32


WRITER = """
import base64, os, sys
from launcher.store.keys import MasterKey
from launcher.store.sets import Store
store = Store(__import__("pathlib").Path(sys.argv[1]))
key = MasterKey(base64.b64decode(os.environ["KEY"]), "test")
name = sys.argv[2]
prefix = sys.argv[4] if len(sys.argv) > 4 else ""  # makes every write a change
for i in range(int(sys.argv[3])):
    store.update("s", key, lambda v: {**v, name: prefix + str(i)})
    print(i, flush=True)  # this write is committed
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
    version = 1
    for round_ in range(80):
        # Killed after a random number of committed writes, at whatever point of the next one
        # it has reached: the writer itself says where it is, so no clock decides (a kill
        # window in milliseconds missed every write on a loaded machine).
        committed = rng.randint(1, 6)
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), "K", "1000", f"r{round_}-"],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert writer.stdout is not None
        for _ in range(committed):
            assert writer.stdout.readline(), "the writer ended early"
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
        current = store.read("s", key)  # raises if the file was damaged
        assert set(current.plain()) == {"K"}
        assert current.version >= version + committed  # no committed write was lost
        version = current.version
    store.update("s", key, lambda v: {"K": "final"})
    assert not list(tmp_path.glob("*.tmp"))  # the next writer cleans up what killed ones left


def test_open_picks_the_root_like_the_spec(tmp_path: Path) -> None:
    """--store, else AGENT_RUN_HOME, else $XDG_DATA_HOME/agent-run."""
    assert Store.open(tmp_path / "x", {"AGENT_RUN_HOME": "/elsewhere"}).root == tmp_path / "x"
    assert Store.open(None, {"AGENT_RUN_HOME": str(tmp_path / "h")}).root == tmp_path / "h"
    assert Store.open(None, {"XDG_DATA_HOME": str(tmp_path)}).root == tmp_path / "agent-run"


def test_run_dir_is_private_and_made_on_demand(tmp_path: Path) -> None:
    """run_dir is <store>/run, created 0700 inside a 0700 store when first asked for."""
    store = Store.open(tmp_path / "store", {})
    run = store.run_dir
    assert run == tmp_path / "store" / "run" and run.is_dir()
    assert run.stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700


def test_current_version_follows_writes_without_the_key(tmp_path: Path, key: MasterKey) -> None:
    """current_version is None before the first write, then each write's version."""
    store = Store(tmp_path)
    assert store.current_version("s") is None
    store.update("s", key, lambda v: {"A": "1"})
    assert store.current_version("s") == 1
    store.update("s", key, lambda v: {**v, "B": "2"})
    assert store.current_version("s") == 2
    store.update("s", key, lambda v: dict(v))  # no change: no new version
    assert store.current_version("s") == 2


def test_reading_a_missing_set_names_the_known_ones(tmp_path: Path, key: MasterKey) -> None:
    """A missing set is a ConfigError listing the sets and the command that creates it."""
    store = Store(tmp_path)
    store.update("dev", key, lambda v: {"A": "1"})
    store.update("staging", key, lambda v: {"A": "1"})
    with pytest.raises(ConfigError) as caught:
        store.read("prod", key)
    message = str(caught.value)
    assert "known sets: dev, staging" in message
    assert "agent-run secrets set prod KEY=VALUE" in message
    assert caught.value.exit_code == 78


def test_a_set_that_is_not_ready_is_refused(tmp_path: Path, key: MasterKey) -> None:
    """A set whose status is not `ready` is refused before decryption, with exit 78."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "1"})
    path = store.set_path("s")
    path.write_bytes(path.read_bytes().replace(b'"status":"ready"', b'"status":"failed"', 1))
    with pytest.raises(ConfigError, match="not ready"):
        store.read("s", key)


def test_wrong_key_fails_with_the_key_source(tmp_path: Path, key: MasterKey) -> None:
    """Another master key is DecryptionFailed naming where the key came from."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "1"})
    with pytest.raises(DecryptionFailed, match="AGENT_RUN_MASTER_KEY"):
        store.read("s", MasterKey(crypto.new_key(), "AGENT_RUN_MASTER_KEY"))


def test_platform_credentials_live_in_their_own_file(tmp_path: Path, key: MasterKey) -> None:
    """Platform credentials are sealed apart from sets, never listed as a set; {} when absent."""
    store = Store(tmp_path)
    assert store.read_platform(key) == {} and not store.has_platform()
    store.update("_platform", key, lambda v: {"LIVEKIT_URL": "wss://x"})
    assert store.has_platform() and store.platform_path().exists()
    assert store.read_platform(key) == {"LIVEKIT_URL": "wss://x"}
    assert store.list_sets() == []


def test_history_keeps_ten_and_rolls_back_to_the_oldest(tmp_path: Path, key: MasterKey) -> None:
    """After 15 writes versions 6..15 are kept; rollback to 6 works, to 5 is refused."""
    store = Store(tmp_path)
    for i in range(1, 16):
        store.update("s", key, lambda v, i=i: {"A": f"value-{i}"})
    assert [e.version for e in store.history("s")] == list(range(15, 5, -1))
    with pytest.raises(OperationFailed, match="no version 5"):
        store.rollback("s", key, 5)
    result = store.rollback("s", key, 6)
    assert result.version == 16 and result.change.changed == ("A",)
    assert store.read("s", key).plain() == {"A": "value-6"}


def test_history_entries_cannot_be_swapped(tmp_path: Path, key: MasterKey) -> None:
    """History entries are bound to their version: swapped ones fail to restore.

    Without the data key, any edit of the history line already fails with the current values
    (it is in their associated data); this re-seals them as if the data key were known, to
    show that each entry carries its own binding as well.
    """
    store = Store(tmp_path)
    for value in ("one", "two", "three"):
        store.update("s", key, lambda v, value=value: {"A": value})
    path = store.set_path("s")
    lines = path.read_bytes().split(b"\n")
    header = json.loads(lines[0])
    data_key = crypto.open_sealed(
        key.key, base64.b64decode(header["data_key"]), b"agent-run data key\x00s"
    )
    values = crypto.open_sealed(data_key, base64.b64decode(lines[3]), b"\n".join(lines[:3]))
    history = json.loads(lines[2])
    history[0]["sealed"], history[1]["sealed"] = history[1]["sealed"], history[0]["sealed"]
    lines[2] = json.dumps(history, sort_keys=True, separators=(",", ":")).encode()
    lines[3] = base64.b64encode(crypto.seal(data_key, values, b"\n".join(lines[:3])))
    path.write_bytes(b"\n".join(lines))
    assert store.read("s", key).plain() == {"A": "three"}
    with pytest.raises(DecryptionFailed, match="version 2 of set 's' is damaged"):
        store.rollback("s", key, 2)
    assert store.read("s", key).version == 3  # nothing was restored


def test_edited_history_fails_the_current_values(tmp_path: Path, key: MasterKey) -> None:
    """Dropping a history entry by hand makes the whole set fail to open."""
    store = Store(tmp_path)
    for value in ("one", "two", "three"):
        store.update("s", key, lambda v, value=value: {"A": value})
    path = store.set_path("s")
    lines = path.read_bytes().split(b"\n")
    lines[2] = json.dumps(json.loads(lines[2])[:1], sort_keys=True, separators=(",", ":")).encode()
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(DecryptionFailed):
        store.read("s", key)


def test_a_file_of_another_format_says_so(tmp_path: Path, key: MasterKey) -> None:
    """A set file of another format version is refused with its format named (exit 78)."""
    store = Store(tmp_path)
    store.update("s", key, lambda v: {"A": "1"})
    path = store.set_path("s")
    path.write_bytes(path.read_bytes().replace(b'"format":2', b'"format":1', 1))
    with pytest.raises(ConfigError, match="format 1"):
        store.read("s", key)


def _blocked_on(inode: int, pid: int) -> bool:
    """True when `pid` waits in /proc/locks for a lock on `inode`."""
    with open("/proc/locks") as stream:
        for line in stream:
            fields = line.split()
            waiting = "->" in fields and str(pid) in fields
            if waiting and any(f.count(":") == 2 and f.split(":")[2] == str(inode) for f in fields):
                return True
    return False


def test_a_lock_held_across_a_delete_still_excludes_the_next_writer(
    cli: CLI, store_dir: Path
) -> None:
    """A writer holding the set's lock while `secrets delete` runs still keeps the next one out."""
    cli("secrets", "set", "s", "A=1")
    # A writer that opened the lock file before the delete, and takes the lock after it
    # (issue #12: delete unlinked the file, so the next writer locked a new one).
    fd = os.open(store_dir / ".s.lock", os.O_RDWR)
    try:
        assert cli("secrets", "delete", "s", "--yes").returncode == 0
        fcntl.flock(fd, fcntl.LOCK_EX)
        writer = subprocess.Popen(
            list(cli.argv("secrets", "set", "s", "B=2")),
            env=cli.env,
            cwd=cli.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        inode = os.fstat(fd).st_ino
        deadline = time.monotonic() + 60
        while writer.poll() is None and not _blocked_on(inode, writer.pid):
            assert time.monotonic() < deadline, "the writer neither blocked nor finished"
            time.sleep(0.01)
        assert writer.poll() is None, "a writer entered the set while another held its lock"
    finally:
        os.close(fd)  # leaves the critical section
    out, err = writer.communicate(timeout=60)
    assert writer.returncode == 0, err
    assert "s v2" in out  # and the versions continue above the deleted set's


def test_commands_on_a_missing_set_leave_no_lock_file(cli: CLI, store_dir: Path) -> None:
    """delete, unset and rollback of a set that does not exist create nothing in the store."""
    cli("secrets", "set", "a", "K=1")
    before = sorted(os.listdir(store_dir))
    for args in (
        ("secrets", "delete", "nosuch", "--yes"),
        ("secrets", "unset", "nosuch", "K"),
        ("secrets", "rollback", "nosuch"),
    ):
        result = cli(*args)
        assert result.returncode == 78 and "not found" in result.stderr, args
    assert sorted(os.listdir(store_dir)) == before


def test_a_set_written_again_after_delete_continues_its_versions(cli: CLI) -> None:
    """A deleted set written again starts above its old versions, so launchers follow it."""
    for n in range(3):
        cli("secrets", "set", "s", f"K={n}")
    assert cli("secrets", "delete", "s", "--yes").returncode == 0
    again = cli("secrets", "set", "s", "K=new")
    assert again.returncode == 0 and "s v4" in again.stdout


def test_a_set_rewritten_by_root_keeps_the_service_as_owner(cli: CLI, shared_dir: Path) -> None:
    """`sudo agent-run secrets set` on a service's store leaves every file the service's."""
    store = shared_dir / "store"
    store.mkdir(mode=0o700)
    os.chown(store, NOBODY, NOBODY)
    env = {**cli.env, "AGENT_RUN_HOME": str(store), "AGENT_RUN_MASTER_KEY": ""}
    assert run_cli(["secrets", "set", "prod", "A=1"], env, shared_dir, NOBODY).returncode == 0
    as_root = run_cli(["secrets", "set", "prod", "B=2"], env, shared_dir)
    assert as_root.returncode == 0, as_root.stderr
    as_root = run_cli(["secrets", "set", "other", "C=3"], env, shared_dir)  # a new set, too
    assert as_root.returncode == 0, as_root.stderr
    owners = {p.name: (p.stat().st_uid, p.stat().st_gid) for p in store.iterdir()}
    assert set(owners.values()) == {(NOBODY, NOBODY)}, owners
    again = run_cli(["secrets", "set", "prod", "D=4"], env, shared_dir, NOBODY)
    assert again.returncode == 0 and "prod v3" in again.stdout, again.stderr
    other = run_cli(["secrets", "set", "other", "E=5"], env, shared_dir, NOBODY)
    assert other.returncode == 0, other.stderr

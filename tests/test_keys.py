"""Where the master key comes from (SPEC §2.1): source order, file modes, creation."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from launcher.errors import ConfigError, PermissionProblem
from launcher.store import keys
from launcher.store.keys import MasterKey, load_master_key

from .as_user import NOBODY, run_cli, setpriv_prefix


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


# --- keys as platforms deliver them (real CLI processes, files owned as there) -------------

ACL_XATTR = "system.posix_acl_access"
ACL_USER_OBJ, ACL_USER, ACL_GROUP_OBJ, ACL_MASK, ACL_OTHER = 0x01, 0x02, 0x04, 0x10, 0x20
ACL_UNDEFINED_ID = 0xFFFFFFFF


def _grant(path: Path, owner: int, uid: int, perm: int) -> None:
    """What systemd does for `User=`: an ACL entry `user:UID:perm`, no access for group/others.

    Written as the kernel's xattr (what setfacl writes), so the test needs no `acl` package;
    `ls -l` then shows the mask in the group bits (0400 file -> 0440, 0500 dir -> 0550).
    """
    entries = [
        (ACL_USER_OBJ, owner, ACL_UNDEFINED_ID),
        (ACL_USER, perm, uid),
        (ACL_GROUP_OBJ, 0, ACL_UNDEFINED_ID),
        (ACL_MASK, perm, ACL_UNDEFINED_ID),
        (ACL_OTHER, 0, ACL_UNDEFINED_ID),
    ]
    blob = struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *entry) for entry in entries)
    try:
        os.setxattr(path, ACL_XATTR, blob)
    except OSError as error:
        pytest.skip(f"POSIX ACLs not supported here: {error.strerror}")


def _service_env(cli_env: dict[str, str], store: Path, **extra: str) -> dict[str, str]:
    store.mkdir(mode=0o700, exist_ok=True)
    os.chown(store, NOBODY, NOBODY)
    return {**cli_env, "AGENT_RUN_HOME": str(store), "AGENT_RUN_MASTER_KEY": "", **extra}


def test_systemd_credential_with_an_acl_is_accepted(
    cli_env: dict[str, str], shared_dir: Path
) -> None:
    """A LoadCredential= key (root, 0400 + ACL for User=, shown as 0440) works for that user."""
    credentials = shared_dir / "credentials"
    credentials.mkdir()
    key = credentials / "agent-run.key"
    key.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    key.chmod(0o400)
    _grant(key, 0o4, NOBODY, 0o4)
    credentials.chmod(0o500)
    _grant(credentials, 0o5, NOBODY, 0o5)
    assert oct(key.stat().st_mode & 0o777) == "0o440"
    env = _service_env(cli_env, shared_dir / "store", CREDENTIALS_DIRECTORY=str(credentials))
    result = run_cli(["secrets", "set", "prod", "A=1"], env, shared_dir, NOBODY)
    assert result.returncode == 0, result.stderr
    assert not (shared_dir / "store" / "master.key").exists()  # the credential was the key


def test_a_credentials_directory_others_can_enter_is_not_trusted(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    """$CREDENTIALS_DIRECTORY pointed at a shared folder: a 0644 key there is refused, with a way out."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    _key_file(shared / "agent-run.key", 0o644)
    env = {**cli_env, "AGENT_RUN_MASTER_KEY": "", "CREDENTIALS_DIRECTORY": str(shared)}
    result = run_cli(["secrets", "set", "prod", "A=1"], env, tmp_path)
    assert result.returncode == 77
    assert "not private" in result.stderr and "LoadCredential=" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _unshare_or_skip() -> None:
    if shutil.which("unshare") is None or shutil.which("setpriv") is None:
        pytest.skip("needs util-linux's unshare and setpriv")
    probe = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /mnt"],
        capture_output=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip("cannot create a mount namespace here (needs CAP_SYS_ADMIN)")


def _in_container(
    setup: str, args: list[str], env: dict[str, str], cwd: Path, uid: int = NOBODY
) -> subprocess.CompletedProcess[str]:
    """Run `agent-run ARGS` as `uid` in a private mount namespace prepared by `setup`.

    The namespace gets its own empty /run (a tmpfs), so /run/secrets there is what `setup`
    makes of it, as in a container; nothing is mounted on the host.
    """
    script = "mount -t tmpfs -o mode=0755 tmpfs /run\nmkdir /run/secrets\n" + setup + '\nexec "$@"'
    argv = [*setpriv_prefix(uid), sys.executable, "-m", "launcher", *args]
    return subprocess.run(
        ["unshare", "--mount", "sh", "-ec", script, "sh", *argv],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _root_key(path: Path, mode: int) -> None:
    path.write_bytes(base64.b64encode(os.urandom(32)) + b"\n")
    os.chown(path, 0, 0)
    path.chmod(mode)


def test_docker_secret_0444_is_accepted(cli_env: dict[str, str], shared_dir: Path) -> None:
    """A Docker secret (root-owned 0444, bind-mounted at /run/secrets) works for the app user."""
    _unshare_or_skip()
    _root_key(shared_dir / "secret", 0o444)
    setup = f"touch /run/secrets/agent-run.key\nmount --bind {shared_dir / 'secret'} /run/secrets/agent-run.key"
    env = _service_env(cli_env, shared_dir / "store")
    result = _in_container(setup, ["secrets", "set", "prod", "A=1"], env, shared_dir)
    assert result.returncode == 0, result.stderr
    assert not (shared_dir / "store" / "master.key").exists()


@pytest.mark.parametrize("read_only", [True, False], ids=["ro", "rw"])
def test_root_takes_a_read_only_secret_mount_whoever_owns_it(
    cli_env: dict[str, str], shared_dir: Path, read_only: bool
) -> None:
    """`docker run -v key:/run/secrets/agent-run.key:ro` keeps the host owner's uid: a root
    launcher accepts it read-only (nobody in the container can replace it), not read-write."""
    _unshare_or_skip()
    _key_file(shared_dir / "secret", 0o600)
    os.chown(shared_dir / "secret", NOBODY, NOBODY)
    target = "/run/secrets/agent-run.key"
    setup = f"touch {target}\nmount --bind {shared_dir / 'secret'} {target}"
    if read_only:
        setup += f"\nmount -o remount,bind,ro {target}"
    env = _service_env(cli_env, shared_dir / "store")
    result = _in_container(setup, ["secrets", "set", "prod", "A=1"], env, shared_dir, uid=0)
    if read_only:
        assert result.returncode == 0, result.stderr
        assert not (shared_dir / "store" / "master.key").exists()
    else:
        assert result.returncode == 77
        assert "owned by nobody (uid 65534), who could replace the key" in result.stderr


KUBERNETES_VOLUME = """mount -t tmpfs -o mode=0755 tmpfs /run/secrets
mkdir /run/secrets/..2026_12_01_00_00_00.1
cp {key} /run/secrets/..2026_12_01_00_00_00.1/agent-run.key
chmod {mode} /run/secrets/..2026_12_01_00_00_00.1/agent-run.key
ln -s ..2026_12_01_00_00_00.1 /run/secrets/..data
ln -s {target} /run/secrets/agent-run.key"""


def test_kubernetes_secret_volume_0644_is_accepted(
    cli_env: dict[str, str], shared_dir: Path
) -> None:
    """A Kubernetes Secret volume (0644 root files behind `..data` symlinks) works for the app."""
    _unshare_or_skip()
    _root_key(shared_dir / "secret", 0o600)
    setup = KUBERNETES_VOLUME.format(
        key=shared_dir / "secret", mode="0644", target="..data/agent-run.key"
    )
    env = _service_env(cli_env, shared_dir / "store")
    result = _in_container(setup, ["secrets", "set", "prod", "A=1"], env, shared_dir)
    assert result.returncode == 0, result.stderr
    assert not (shared_dir / "store" / "master.key").exists()


def test_a_link_out_of_a_secret_volume_gets_no_trust(
    cli_env: dict[str, str], shared_dir: Path
) -> None:
    """A /run/secrets link to a 0644 file elsewhere is judged where the file lies: refused."""
    _unshare_or_skip()
    _root_key(shared_dir / "secret", 0o600)
    _root_key(shared_dir / "elsewhere.key", 0o644)
    setup = KUBERNETES_VOLUME.format(
        key=shared_dir / "secret", mode="0644", target=shared_dir / "elsewhere.key"
    )
    env = _service_env(cli_env, shared_dir / "store")
    result = _in_container(setup, ["secrets", "set", "prod", "A=1"], env, shared_dir)
    assert result.returncode == 77
    assert "links out of /run/secrets" in result.stderr
    assert f"chmod 600 {shared_dir / 'elsewhere.key'}" in result.stderr


def test_run_secrets_on_an_ordinary_host_keeps_the_strict_rule(
    cli_env: dict[str, str], shared_dir: Path
) -> None:
    """A 0644 key in a plain /run/secrets folder (no secret mount) is refused: others can read it."""
    _unshare_or_skip()
    _root_key(shared_dir / "secret", 0o644)
    setup = f"cp -p {shared_dir / 'secret'} /run/secrets/agent-run.key"
    env = _service_env(cli_env, shared_dir / "store")
    result = _in_container(setup, ["secrets", "set", "prod", "A=1"], env, shared_dir)
    assert result.returncode == 77
    assert "plain directory" in result.stderr and "chmod 600" in result.stderr


def test_a_key_owned_by_another_user_is_refused(cli_env: dict[str, str], shared_dir: Path) -> None:
    """A 0600 key that another user owns (and so could replace) is refused, with the chown."""
    keys_dir = shared_dir / "keys"
    keys_dir.mkdir(mode=0o755)
    key = keys_dir / "other.key"
    _key_file(key, 0o600)
    os.chown(key, NOBODY, NOBODY)
    env = {**cli_env, "AGENT_RUN_MASTER_KEY": ""}
    result = run_cli(["secrets", "set", "prod", "A=1", "--key-file", str(key)], env, shared_dir)
    assert result.returncode == 77
    assert "owned by nobody (uid 65534)" in result.stderr and "chown root" in result.stderr


def test_a_fifo_in_place_of_the_key_does_not_hang(tmp_path: Path) -> None:
    """The key file is opened non-blocking and must be a regular file: a FIFO is refused at once."""
    os.mkfifo(tmp_path / "k", 0o600)
    with pytest.raises(PermissionProblem, match="not a regular file"):
        load_master_key(tmp_path, tmp_path / "k", {})

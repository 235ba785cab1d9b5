"""Where the master key comes from (SPEC §2.1); first source found wins.

1. `AGENT_RUN_MASTER_KEY` (base64);
2. `--key-file` / `AGENT_RUN_KEY_FILE`;
3. `$CREDENTIALS_DIRECTORY/agent-run.key` (systemd `LoadCredential=`);
4. `/run/secrets/agent-run.key` (Docker and Kubernetes secrets);
5. `<store>/master.key`, created on first `secrets set` when no key exists at all.

A key file readable by group or others is refused, as ssh refuses such private keys.

Paths are plain strings (os.path), and base64 is binascii: this module is on the launch
critical path, where `pathlib` would cost ~4 ms to import and `base64` would import `re`.
Any `os.PathLike` is accepted.
"""

from __future__ import annotations

import binascii
import os
import stat
from collections.abc import Mapping

from launcher.errors import ConfigError, PermissionProblem
from launcher.store import crypto

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (launch path)
if TYPE_CHECKING:
    StrPath = str | os.PathLike[str]

DOCKER_SECRET = "/run/secrets/agent-run.key"
STORE_KEY_NAME = "master.key"


class MasterKey:
    """The master key and where it came from; its repr never shows the key."""

    __slots__ = ("created", "key", "path", "source")

    def __init__(
        self, key: bytes, source: str, path: str | None = None, created: bool = False
    ) -> None:
        self.key = key
        self.source = source  # "AGENT_RUN_MASTER_KEY" or a file's path: said in errors
        self.path = path  # the file it came from, if any (key rotate replaces it)
        self.created = created  # True when load_master_key(create=True) just made it

    def __repr__(self) -> str:
        return f"MasterKey(source={self.source!r}, id={self.id!r})"

    @property
    def id(self) -> str:
        return crypto.key_id(self.key)


def decode_key(text: bytes, source: str) -> bytes:
    """A key is 32 bytes, written as base64 text (what `key init` writes) or raw."""
    stripped = text.strip()
    try:
        key = crypto.b64decode(stripped)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) == crypto.KEY_BYTES:
        return key
    if len(text) == crypto.KEY_BYTES:
        return text
    raise ConfigError(
        f"the master key from {source} is not a base64-encoded 32-byte key "
        "(create one with `agent-run key init`)"
    )


def read_key_file(path: StrPath) -> MasterKey:
    path = os.fspath(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise ConfigError(f"key file {path} does not exist") from None
    except PermissionError:
        raise PermissionProblem(f"cannot read key file {path}: permission denied") from None
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise PermissionProblem(
            f"key file {path} is accessible by group or others (mode {mode:04o}); "
            f"run `chmod 600 {path}`"
        )
    try:
        with open(path, "rb") as stream:
            data = stream.read()
    except PermissionError:
        raise PermissionProblem(f"cannot read key file {path}: permission denied") from None
    return MasterKey(decode_key(data, path), path, path)


def key_file_candidates(
    store_root: StrPath, key_file: StrPath | None, environ: Mapping[str, str]
) -> list[str]:
    """Key files in the order they are tried (the environment variable comes before all)."""
    explicit = key_file if key_file is not None else environ.get("AGENT_RUN_KEY_FILE") or None
    if explicit is not None:
        return [os.fspath(explicit)]  # asked for by name: never fall back to another key
    candidates: list[str] = []
    if environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(os.path.join(environ["CREDENTIALS_DIRECTORY"], "agent-run.key"))
    candidates += [os.fspath(DOCKER_SECRET), os.path.join(store_root, STORE_KEY_NAME)]
    return candidates


def load_master_key(
    store_root: StrPath,
    key_file: StrPath | None = None,
    environ: Mapping[str, str] = os.environ,
    create: bool = False,
) -> MasterKey:
    """The master key from the first source that has one; ConfigError when none does.

    With `create`, a missing key is not an error: a new one is written to
    `<store>/master.key` (0600) and returned with `created=True`, so the caller can say so.
    A key asked for by name (`--key-file`, AGENT_RUN_KEY_FILE) is never created implicitly:
    a typo in that path must not silently start a second, unrelated store key.
    """
    encoded = environ.get("AGENT_RUN_MASTER_KEY")
    if encoded:
        return MasterKey(
            decode_key(encoded.encode(), "AGENT_RUN_MASTER_KEY"), "AGENT_RUN_MASTER_KEY"
        )
    candidates = key_file_candidates(store_root, key_file, environ)
    explicit = key_file is not None or bool(environ.get("AGENT_RUN_KEY_FILE"))
    for path in candidates:
        if explicit or os.path.exists(path):
            return read_key_file(path)
    if create:
        path = os.path.join(store_root, STORE_KEY_NAME)
        try:
            write_key_file(path, crypto.new_key())
        except FileExistsError:
            return read_key_file(path)  # another writer created it first: use theirs
        except PermissionError:
            raise PermissionProblem(f"cannot create master key {path}: permission denied") from None
        key = read_key_file(path)
        return MasterKey(key.key, key.source, key.path, created=True)
    raise ConfigError(
        "no master key found (tried AGENT_RUN_MASTER_KEY, "
        + ", ".join(str(p) for p in candidates)
        + "); create one with `agent-run key init`"
    )


def write_key_file(path: StrPath, key: bytes) -> None:
    """Write a new key file, 0600 from birth, refusing to replace an existing one.

    The key is written to a temporary file first and hard-linked into place: `link` fails
    when the name exists, like O_EXCL, but the file appears with its content, so a process
    racing us never reads a half-written key. FileExistsError when a key is already there.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", mode=0o700, exist_ok=True)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, binascii.b2a_base64(key))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        # A filesystem without hard links: O_EXCL still refuses to replace a key.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, binascii.b2a_base64(key))
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    fsync_directory(directory or ".")


def fsync_directory(directory: StrPath) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

"""Where the master key comes from (SPEC §2.1), and which key files are trusted.

Sources, first found wins:

1. `AGENT_RUN_MASTER_KEY` (base64);
2. `--key-file` / `AGENT_RUN_KEY_FILE`;
3. `$CREDENTIALS_DIRECTORY/agent-run.key` (systemd `LoadCredential=`);
4. `/run/secrets/agent-run.key` (Docker and Kubernetes secrets);
5. `<store>/master.key`, created on first `secrets set` when no key exists at all.

The rule for key files, wherever they come from: **no local user other than the one running
agent-run (and root) may be able to read or replace the key.** How that is established:

- The file is opened first and judged by `fstat` of the open file, so what is checked is what
  is read (no stat-then-open race; O_NONBLOCK so a FIFO planted there cannot hang us).
- It must be a regular file owned by root or by the user running agent-run, with no write bit
  for group or others. (Root may also use a key owned by the owner of the directory it lies
  in: `sudo agent-run secrets set` on a service's store reads the service's own key; and a
  key owned by anyone on a read-only secret mount at `/run/secrets`, which no one in the
  container can replace: `docker run -v key:/run/secrets/agent-run.key:ro` keeps the host
  owner's uid, and the image's root launcher runs its workers as another user.)
- If its mode lets group or others read it, it is accepted only where the platform that put it
  there keeps other users out:
  * in `$CREDENTIALS_DIRECTORY` when that directory is owned by root or by us and others
    cannot enter it: systemd makes it private to the service (0500 plus an ACL for `User=`),
    and the 0440 a credential shows is that ACL, not a group's access;
  * at `/run/secrets` when the file, or `/run/secrets` itself, is a mount point: Docker
    bind-mounts each secret (0444) and Kubernetes mounts the Secret volume (0644 by default)
    into the container's own mount namespace. On an ordinary host `/run/secrets` is a plain
    directory, and the ordinary rule applies.
  Anywhere else a key readable by group or others is refused, as ssh refuses such private keys.
- Symlinks are followed (Kubernetes secret volumes are symlinks into `..data` by design), and
  the *resolved* file is judged: a platform place lends its trust only to files that resolve
  inside it, so a link planted there cannot vouch for a file elsewhere.

Every refusal names the file and says what to do *in that place*: `chmod 600` for an ordinary
file, the unit's `LoadCredential=` for systemd, the volume's `defaultMode` / the secret's
`mode` for Kubernetes and Docker, whose mounts are read-only.

Paths are plain strings (os.path), and base64 is binascii: this module is on the launch
critical path, where `pathlib` would cost ~4 ms to import and `base64` would import `re`.
Any `os.PathLike` is accepted.
"""

from __future__ import annotations

import binascii
import contextlib
import errno
import os
import stat
from collections.abc import Mapping
from typing import TYPE_CHECKING

from launcher.errors import ConfigError, PermissionProblem
from launcher.store import crypto
from launcher.store.files import fsync_directory, give, owner_of

if TYPE_CHECKING:
    StrPath = str | os.PathLike[str]

__all__ = [
    "DOCKER_SECRET",
    "NEXT_SUFFIX",
    "STORE_KEY_NAME",
    "MasterKey",
    "fsync_directory",
    "key_file_candidates",
    "load_master_key",
    "read_key_file",
    "write_key_file",
]

CREDENTIAL_NAME = "agent-run.key"
DOCKER_SECRET = "/run/secrets/agent-run.key"
STORE_KEY_NAME = "master.key"
NEXT_SUFFIX = ".next"  # `<key file>.next`: the key a rotation in progress seals with
MOUNTINFO = "/proc/self/mountinfo"


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


# --- the trust rule (see the module docstring) -------------------------------------------


def _inside(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (\\040...)."""
    if "\\" not in field:
        return field
    out, index = [], 0
    while index < len(field):
        if field[index] == "\\" and field[index + 1 : index + 4].isdigit():
            out.append(chr(int(field[index + 1 : index + 4], 8)))
            index += 4
        else:
            out.append(field[index])
            index += 1
    return "".join(out)


def mount_points(mountinfo: str = MOUNTINFO) -> list[str]:
    """Where something is mounted in this process's mount namespace ([] if unknown)."""
    return [point for point, _ in _mounts(mountinfo)]


def _mounts(mountinfo: str = MOUNTINFO) -> list[tuple[str, bool]]:
    """(mount point, read-only) in mountinfo's order: of two mounts on one point, the later
    is the one seen."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as stream:
            fields = [line.split(" ") for line in stream if line.count(" ") >= 5]
    except OSError:
        return []
    return [(_unescape(f[4]), "ro" in f[5].split(",")) for f in fields]


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _owner(path: str) -> int | None:
    """The uid owning the directory that holds `path`."""
    try:
        return os.stat(os.path.dirname(path) or ".").st_uid
    except OSError:
        return None


def _has_acl(path: str) -> bool:
    try:
        os.getxattr(path, "system.posix_acl_access")
    except OSError:
        return False
    return True


def _private_directory_problem(directory: str) -> str | None:
    """Why other local users could enter `directory`, or None when they cannot."""
    try:
        info = os.stat(directory)
    except OSError as error:
        return f"it cannot be inspected ({error.strerror})"
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid not in (0, os.geteuid()):
        return f"it is owned by {_user(info.st_uid)}"
    if mode & 0o007:
        return f"others may enter it (mode {mode:04o})"
    # Group bits on a directory with an ACL are the ACL's mask (systemd's shows 0550).
    if mode & 0o070 and info.st_gid not in (0, os.getegid()) and not _has_acl(directory):
        return f"group {info.st_gid} may enter it (mode {mode:04o})"
    return None


class _Place:
    """Where a key file lies, as far as the trust rule is concerned.

    `kind` picks the advice a refusal gives (built only on refusal: it looks up user names).
    """

    __slots__ = ("kind", "note")

    def __init__(self, kind: str, note: str = "") -> None:
        self.kind = kind  # "ordinary", "credentials", "mount", or "shared-credentials"
        self.note = note  # why an expected platform place is not trusted here

    @property
    def trusted(self) -> bool:
        """Group/other read bits here are the platform's doing, not a leak."""
        return self.kind in ("credentials", "mount")

    def advice(self, resolved: str, problem: str) -> str:
        """What to do about `problem` ("owner" or "mode") in this place."""
        if self.kind == "credentials":
            return (
                "deliver the key with `LoadCredential=agent-run.key:/path/to/key` in the unit "
                "(systemd makes that copy private to the service)"
            )
        if self.kind == "mount":
            return (
                "make the secret read-only and owned by root or this user (Kubernetes: "
                "`defaultMode: 0400` on the volume and the pod's securityContext; Compose: the "
                "secret's `mode: 0400` and `uid:`)"
            )
        chmod = f"run `chmod 600 {resolved}`"
        if problem == "owner":
            me = _user(os.geteuid()).split(" ")[0]
            return f"run `chown {me} {resolved}` as root, or use a key file you own"
        if self.kind == "shared-credentials":
            return (
                "let systemd provide it with `LoadCredential=agent-run.key:/path/to/key`, "
                f"or {chmod}"
            )
        return chmod


def _place(path: str, resolved: str, environ: Mapping[str, str]) -> _Place:
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if credentials and _inside(path, credentials):
        directory = os.path.realpath(credentials)
        if not _inside(resolved, directory):
            return _Place(
                "ordinary",
                f"; it links out of {credentials}, whose trust covers only its own files",
            )
        problem = _private_directory_problem(directory)
        if problem is None:
            return _Place("credentials")
        return _Place(
            "shared-credentials",
            f", and $CREDENTIALS_DIRECTORY {credentials} is not private: {problem}",
        )
    secrets_dir = os.path.dirname(DOCKER_SECRET)
    if _inside(path, secrets_dir):
        directory = os.path.realpath(secrets_dir)
        if not _inside(resolved, directory):
            return _Place(
                "ordinary",
                f"; it links out of {secrets_dir}, whose trust covers only its own files",
            )
        mounts = [m for m in mount_points() if _inside(m, directory)]
        if any(_inside(resolved, m) or m == os.path.abspath(path) for m in mounts):
            return _Place("mount")
        return _Place(
            "ordinary",
            f", and {secrets_dir} is a plain directory here, not a Docker or Kubernetes secret "
            "mount, so other users of this host can read it",
        )
    return _Place("ordinary")


def _read_only_secret(path: str, resolved: str) -> bool:
    """True for a key on a read-only mount at /run/secrets: nobody in this mount namespace
    can replace it, whoever owns it (a `docker run -v ...:ro` keeps the host's owner)."""
    secrets_dir = os.path.dirname(DOCKER_SECRET)
    real_dir = os.path.realpath(secrets_dir)
    if not (_inside(path, secrets_dir) and _inside(resolved, real_dir)):
        return False
    point, read_only = "", False
    for mount, ro in _mounts():  # the deepest mount holding the file is the one read through
        if _inside(resolved, mount) and len(mount) >= len(point):
            point, read_only = mount, ro
    return read_only and _inside(point, real_dir)


def _judge(path: str, resolved: str, info: os.stat_result, environ: Mapping[str, str]) -> None:
    """Raise PermissionProblem when the open key file breaks the rule; see the module doc."""
    shown = path if path == resolved else f"{path} (-> {resolved})"
    if not stat.S_ISREG(info.st_mode):
        raise PermissionProblem(
            f"key file {shown} is not a regular file; point agent-run at the key file itself"
        )
    mode = stat.S_IMODE(info.st_mode)
    euid = os.geteuid()
    if info.st_uid not in (0, euid) and not (
        euid == 0 and (_owner(resolved) == info.st_uid or _read_only_secret(path, resolved))
    ):
        raise PermissionProblem(
            f"key file {shown} is owned by {_user(info.st_uid)}, who could replace the key; "
            f"{_place(path, resolved, environ).advice(resolved, 'owner')}"
        )
    if mode & 0o022:
        raise PermissionProblem(
            f"key file {shown} is writable by group or others (mode {mode:04o}); "
            f"{_place(path, resolved, environ).advice(resolved, 'mode')}"
        )
    if mode & 0o044:
        place = _place(path, resolved, environ)
        if not place.trusted:
            raise PermissionProblem(
                f"key file {shown} is readable by group or others (mode {mode:04o}){place.note}; "
                f"{place.advice(resolved, 'mode')}"
            )


def read_key_file(path: StrPath, environ: Mapping[str, str] = os.environ) -> MasterKey:
    """Open, judge (module docstring) and read a key file; the key it holds."""
    path = os.fspath(path)
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    for attempt in range(3):
        resolved = os.path.realpath(path)
        try:
            fd = os.open(resolved, flags)
        except FileNotFoundError:
            if attempt < 2 and os.path.lexists(path):
                continue  # a secret volume swapped its `..data` link between resolve and open
            raise ConfigError(f"key file {path} does not exist") from None
        except PermissionError:
            raise PermissionProblem(f"cannot read key file {path}: permission denied") from None
        except OSError as error:
            if error.errno == errno.ELOOP and attempt < 2:
                continue  # the resolved name became a link since: resolve again
            raise ConfigError(f"cannot open key file {path}: {error.strerror}") from None
        try:
            _judge(path, resolved, os.fstat(fd), environ)
            chunks = []
            while chunk := os.read(fd, 4096):
                chunks.append(chunk)
                if sum(map(len, chunks)) > 4096:
                    break  # a key is 45 bytes; do not read a huge file whole
        except PermissionError:
            raise PermissionProblem(f"cannot read key file {path}: permission denied") from None
        finally:
            os.close(fd)
        return MasterKey(decode_key(b"".join(chunks), path), path, path)
    raise ConfigError(f"key file {path} kept changing while it was read; try again")


def key_file_candidates(
    store_root: StrPath, key_file: StrPath | None, environ: Mapping[str, str]
) -> list[str]:
    """Key files in the order they are tried (the environment variable comes before all)."""
    explicit = key_file if key_file is not None else environ.get("AGENT_RUN_KEY_FILE") or None
    if explicit is not None:
        return [os.fspath(explicit)]  # asked for by name: never fall back to another key
    candidates: list[str] = []
    if environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(os.path.join(environ["CREDENTIALS_DIRECTORY"], CREDENTIAL_NAME))
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
            return read_key_file(path, environ)
    if create:
        path = os.path.join(store_root, STORE_KEY_NAME)
        try:
            write_key_file(path, crypto.new_key())
        except FileExistsError:
            return read_key_file(path, environ)  # another writer created it first: use theirs
        except PermissionError:
            raise PermissionProblem(f"cannot create master key {path}: permission denied") from None
        key = read_key_file(path, environ)
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
    Written by root into a directory owned by a service user, it belongs to that user (see
    files.py), so the service can still read its own key.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", mode=0o700, exist_ok=True)
    owner = owner_of(directory or ".")
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        give(fd, owner)
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
            give(fd, owner)
            os.write(fd, binascii.b2a_base64(key))
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_directory(directory or ".")

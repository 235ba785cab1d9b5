"""The secret store: one sealed file per set, atomic writes, locking, versions, rollback.

A set file has four lines:
1. a small plaintext header — format, set name, version, status, update time, master key id,
   number of keys and the data key wrapped by the master key — so `current_version()` reads
   one short line, `secrets list` needs no key, and `read()` parses nothing else;
2. plaintext metadata — key names with their times, descriptions and tags (see
   metadata.py), what the last change did;
3. the nine previous versions, each sealed with the set's data key (their version, time and
   change bound as associated data);
4. the current values, all sealed at once with the set's data key (one AES-GCM operation, so
   a 1000-secret set opens in about a millisecond). Its associated data is lines 1-3 exactly
   as stored — set name, version, key names, history — so a renamed file, a hand-made
   rollback or any changed byte fails to open instead of yielding wrong values.

Reading the current version is: read the file, parse line 1, unwrap the data key, open line 4
against the bytes before it. History and key times are parsed only by the commands that
show or change them.

Writes take an exclusive `flock` on a side file, `.<set>.lock` (the set file itself is
replaced by rename, so it cannot carry the lock), write a temporary file in the same
directory, fsync, read it back and verify it, rename it over the set, and fsync the
directory: after a crash at any instant the set is its old or its new version. Writers also
hold the store's keyring lock shared (keyring.py: `key rotate` holds it exclusively).

Lock files are never deleted, not even by `secrets delete` (issue #12: a writer may hold or
wait on the lock's inode; unlinking it let the next writer lock a new inode and enter the
critical section beside it). They are only created for sets that are being written, never by
a command that fails because the set does not exist. A lock file also remembers the highest
version ever written to its set, so a set deleted and written again, or an older file put
back by hand, continues above every version a launcher may have run: versions only move
forward (launchers refuse to move back, source.py).

Written by root, a file keeps its owner and group, and a new one takes the store
directory's (files.py): `sudo agent-run secrets set` does not lock a service out.

Reading is on the launch critical path, so the module works on `str` paths with `os.path`:
`pathlib` costs ~4 ms to import (it pulls in urllib.parse and ipaddress), `typing` and
`contextlib` ~3 ms more. `root` and `set_path()` still hand callers `Path` objects.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from launcher.errors import ConfigError, DecryptionFailed, OperationFailed, PermissionProblem
from launcher.store import crypto, validate
from launcher.store.files import (
    NotRegularFile,
    fsync_directory,
    give,
    kind_of,
    open_regular,
    owner_of,
)
from launcher.store.keyring import KEYRING_LOCK, Keyring
from launcher.store.names import SET_NAME, check_set_name, check_set_size

if TYPE_CHECKING:
    from pathlib import Path
    from types import TracebackType
    from typing import Any, BinaryIO

    from launcher.store.keys import MasterKey, StrPath
    from launcher.store.metadata import Metadata, MetadataEdit
    from launcher.store.model import SecretSet

FORMAT = 2  # 1: development builds before the header carried the data key
SUFFIX = ".set"
PLATFORM = "_platform"  # cannot collide: set names start with a letter or digit
KEEP_VERSIONS = 10
READY = "ready"  # model.SetStatus.READY, spelled out to keep listing imports light
DAMAGED = "damaged"  # listing only: the file does not parse (never a stored status)
Clock = Callable[[], float]


# NamedTuples rather than dataclasses: `dataclasses` imports `inspect` (~5 ms), and
# `secrets list` must start within a few times `python -c pass`.
class SetInfo(NamedTuple):
    """What `secrets list` shows of a set, read without the key."""

    name: str
    version: int
    status: str
    updated: str
    keys: int


class Change(NamedTuple):
    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    described: tuple[str, ...] = ()  # kept keys whose description or tags changed

    @property
    def empty(self) -> bool:
        return not (self.added or self.changed or self.removed or self.described)

    @property
    def values_changed(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def as_dict(self) -> dict[str, list[str]]:
        data = {
            "added": list(self.added),
            "changed": list(self.changed),
            "removed": list(self.removed),
        }
        if self.described:  # only when present: files without it stay as they were
            data["described"] = list(self.described)
        return data


class WriteResult(NamedTuple):
    name: str
    version: int
    change: Change
    previous_version: int | None


class HistoryEntry(NamedTuple):
    version: int
    updated: str
    change: Change
    current: bool = False


class _Parsed(NamedTuple):
    """A set file split into its lines; only the header is parsed (see `_meta`, `_history`)."""

    header: dict[str, Any]
    meta_line: bytes
    history_line: bytes
    associated: bytes  # lines 1-3, exactly as stored
    sealed_values: bytes


def _canonical(data: Mapping[str, Any]) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _iso(timestamp: float) -> str:
    # time.gmtime, not datetime: importing datetime costs every `secrets set` ~1.6 ms.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def _data_key_context(name: str) -> bytes:
    return b"agent-run data key\x00" + name.encode()


def _history_context(name: str, entry: Mapping[str, Any]) -> bytes:
    public = {k: v for k, v in entry.items() if k != "sealed"}
    return b"agent-run history\x00" + name.encode() + b"\x00" + _canonical(public)


def _canonical_list(items: list[dict[str, Any]]) -> bytes:
    return json.dumps(items, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _change(data: Mapping[str, Any]) -> Change:
    return Change(**{k: tuple(v) for k, v in data.items()})


def _encode_values(values: Mapping[str, str]) -> bytes:
    return json.dumps(values, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _decode_values(data: bytes) -> dict[str, str]:
    values = json.loads(data.decode("utf-8"))
    if not isinstance(values, dict):
        raise DecryptionFailed("sealed values are malformed")
    return values


class Store:
    """A directory of sealed secret sets."""

    def __init__(
        self, root: StrPath, clock: Clock = time.time, environ: Mapping[str, str] | None = None
    ):
        self.directory = os.fspath(root)  # the store's directory, as a str (see module doc)
        self._clock = clock
        self._environ = os.environ if environ is None else environ

    @classmethod
    def open(cls, root: StrPath | None = None, environ: Mapping[str, str] = os.environ) -> Store:
        """`--store DIR`, else AGENT_RUN_HOME, else $XDG_DATA_HOME/agent-run."""
        return cls(default_root(environ) if root is None else root, environ=environ)

    # --- paths ---------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        """The store's directory as a Path (`directory` is the same, as a str)."""
        from pathlib import Path

        return Path(self.directory)

    def runtime_dir(self) -> str:
        """Control sockets: AGENT_RUN_RUNTIME_DIR, else `<store>/run`; created (0700) on demand.

        A store mounted read-only (a Kubernetes Secret volume) cannot hold it: then the path
        is returned uncreated, and whoever binds a socket there reports the problem (or the
        operator points AGENT_RUN_RUNTIME_DIR somewhere writable).
        """
        explicit = self._environ.get("AGENT_RUN_RUNTIME_DIR")
        path = explicit or os.path.join(self.directory, "run")
        try:
            if not explicit:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)  # the store is 0700 too
            os.mkdir(path, mode=0o700)
        except OSError:
            pass  # it exists already, or cannot be made here (see above)
        return path

    @property
    def run_dir(self) -> Path:
        """`runtime_dir()` as a Path."""
        from pathlib import Path

        return Path(self.runtime_dir())

    def set_path(self, name: str) -> Path:
        from pathlib import Path

        return Path(self._file(name))

    def platform_path(self) -> Path:
        return self.set_path(PLATFORM)

    def file(self, name: str) -> str:
        """The path of set `name`'s file (the name checked: InvalidInput if it is not one)."""
        return self._file(name)

    def _file(self, name: str) -> str:
        # Every path to a set is built here, so every command checks the name, reads
        # included: a 300-character name is an invalid name (65), not "File name too long".
        if name != PLATFORM:
            check_set_name(name)
        return os.path.join(self.directory, f"{name}{SUFFIX}")

    def _lock_path(self, name: str) -> str:
        return os.path.join(self.directory, f".{name}.lock")

    # --- reading without the key ---------------------------------------------------------

    def current_version(self, name: str) -> int | None:
        """The set's version from its first line: no decryption. None if there is no set."""
        header = self._header(name)
        if header is None:
            return None
        return int(header["version"])

    def _header(self, name: str) -> dict[str, Any] | None:
        """The first line, parsed and its fields' types checked; None if there is no set."""
        stream = self._open(name, missing_ok=True)
        if stream is None:
            return None
        with stream:
            first = stream.readline(4096)
        try:
            return validate.header(json.loads(first))
        except (ValueError, RecursionError):  # RecursionError: `[[[[...` nested too deep
            raise DecryptionFailed(f"set {name!r} is damaged (unreadable header)") from None

    def exists(self, name: str) -> bool:
        """True when the set's file is there; a store we may not look into is an error
        (77), never "no such set" (which would print credentials as missing, exit 0)."""
        try:
            os.stat(self._file(name))
        except (FileNotFoundError, NotADirectoryError):
            return False
        except PermissionError:
            raise PermissionProblem(self.denied("read")) from None
        except OSError:
            return True  # a name that is there but no file (a symlink loop): reading says so
        return True

    def denied(self, verb: str, path: str | None = None) -> str:
        """ "cannot <verb> store DIR (or FILE): permission denied", saying whose it is when
        the owner is another uid: in a container that is the usual cause, and the fix is
        the uid, never looser modes."""
        target = path or self.directory
        message = (
            f"cannot {verb} {target}: permission denied"
            if path
            else f"cannot {verb} store {target}: permission denied"
        )
        existing = target
        while existing and not os.path.exists(existing):  # the nearest existing ancestor
            existing = os.path.dirname(existing.rstrip("/"))
        try:
            owner = os.stat(existing or "/").st_uid
        except OSError:
            return message
        uid = os.geteuid()
        if owner == uid:
            return message
        if uid == 0:  # root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH (dropped capabilities)
            return (
                f"{message} (agent-run runs as root without the capability to read files of "
                f"others, and {existing} belongs to uid {owner}: add it, e.g. `docker run "
                "--cap-add DAC_READ_SEARCH`, or give the store to root; keep its modes 0700/0600)"
            )
        return (
            f"{message} (agent-run runs as uid {uid}, {existing} belongs to uid {owner}: run "
            f"as that user, e.g. `docker run --user {owner}`, or give the store to uid {uid}; "
            "keep its modes 0700/0600)"
        )

    def has_platform(self) -> bool:
        return self.exists(PLATFORM)

    def names(self) -> list[str]:
        if not os.path.isdir(self.directory):
            return []
        try:
            entries = os.listdir(self.directory)
        except PermissionError:
            raise PermissionProblem(self.denied("read")) from None
        # Only names agent-run could have written: a stray `bad name.set` is not a set.
        return sorted(
            e[: -len(SUFFIX)]
            for e in entries
            if e.endswith(SUFFIX) and SET_NAME.fullmatch(e[: -len(SUFFIX)])
        )

    def list_sets(self) -> list[SetInfo]:
        """Every set's summary, read without the key.

        A damaged file is listed with status `damaged` rather than failing the whole listing:
        the operator needs to see which set it is. (Without the key, only the header can be
        checked here; a read with the key detects any other change.)
        """
        infos = []
        for name in self.names():
            try:
                raw = self._read_file(name, missing_ok=True)
                if raw is None:
                    continue  # deleted while we listed
                header = self._parse(name, raw).header
                infos.append(
                    SetInfo(
                        name,
                        int(header["version"]),
                        str(header["status"]),
                        str(header["updated"]),
                        int(header["count"]),
                    )
                )
            except ConfigError:  # `_parse` has checked every field's type
                infos.append(SetInfo(name, 0, DAMAGED, "", 0))
        return infos

    def key_times(self, name: str) -> dict[str, dict[str, str]]:
        """Each key's created/updated time (names only, no key needed)."""
        keys = self._meta(name, self._parse(name, self._read_existing(name)))["keys"]
        return {k: {"created": t["created"], "updated": t["updated"]} for k, t in keys.items()}

    def metadata(self, name: str) -> dict[str, Metadata]:
        """Each key's description and tags (plaintext like the names: no key needed)."""
        return self._metadata(name, self._parse(name, self._read_existing(name)))

    def values_version(self, name: str) -> int | None:
        """The last version that changed values (header only; None if there is no set).

        A change of metadata alone is a new version, but what a worker receives is the
        same, so a running launcher follows this number rather than `current_version()`.
        """
        header = self._header(name)
        if header is None:
            return None
        try:
            return int(header.get("values_version", header["version"]))
        except (KeyError, TypeError, ValueError):
            raise DecryptionFailed(f"set {name!r} is damaged (unreadable header)") from None

    def history(self, name: str) -> list[HistoryEntry]:
        """The current version and the kept earlier ones, newest first (no key needed)."""
        parsed = self._parse(name, self._read_existing(name))
        meta = self._meta(name, parsed)
        try:
            entries = [
                HistoryEntry(
                    int(parsed.header["version"]),
                    str(parsed.header["updated"]),
                    _change(meta["change"]),
                    current=True,
                )
            ]
            for old in self._history(name, parsed):
                entries.append(
                    HistoryEntry(int(old["version"]), str(old["updated"]), _change(old["change"]))
                )
        except (KeyError, TypeError, ValueError):
            raise self._damaged(name) from None
        return entries

    # --- reading with the key ------------------------------------------------------------

    def read(self, name: str, key: MasterKey | Keyring) -> SecretSet:
        """The current version of a set, decrypted; ConfigError if missing or not ready.

        With a keyring, a set sealed under a key it does not hold makes it reload its keys
        and read the file again (keyring.py): how a running launcher follows `key rotate`.
        """
        from launcher.store.model import Secret, SecretSet, SetStatus

        ring = Keyring.of(key)
        parsed = self._parse_current(name, ring)
        assert parsed is not None
        if parsed.header.get("status") != READY:
            raise ConfigError(
                f"secret set {name!r} is not ready (status {parsed.header.get('status')}); "
                f"write it again with `agent-run secrets set {name} ...`"
            )
        values = self._open_values(name, parsed, ring)
        return SecretSet(
            name=name,
            version=int(parsed.header["version"]),
            values={k: Secret(v) for k, v in values.items()},
            status=SetStatus.READY,
        )

    def read_platform(self, key: MasterKey | Keyring) -> dict[str, str]:
        """The stored platform credentials, decrypted; {} when none are stored."""
        return self.read_platform_version(key)[1]

    def read_platform_version(self, key: MasterKey | Keyring) -> tuple[int | None, dict[str, str]]:
        """The stored platform credentials and their version, decrypted; (None, {}) if none."""
        ring = Keyring.of(key)
        parsed = self._parse_current(PLATFORM, ring, missing_ok=True)
        if parsed is None:
            return None, {}
        return int(parsed.header["version"]), self._open_values(PLATFORM, parsed, ring)

    def _parse_current(self, name: str, ring: Keyring, missing_ok: bool = False) -> _Parsed | None:
        """Read and parse a set; once more after a keyring reload if no key matched it."""
        for attempt in (0, 1):
            raw = self._read_file(name, missing_ok=missing_ok)
            if raw is None:
                return None
            parsed = self._parse(name, raw)
            if attempt or ring.find(parsed.header.get("key_id")) is not None:
                return parsed
            if not ring.reload():
                return parsed  # nothing new to try: _master_for says which key is missing
        raise AssertionError("unreachable")

    # --- writing -------------------------------------------------------------------------

    def update(
        self,
        name: str,
        key: MasterKey | Keyring,
        change: Callable[[dict[str, str]], dict[str, str]],
        *,
        must_exist: bool = False,
        describe: Mapping[str, MetadataEdit] | None = None,
    ) -> WriteResult:
        """Read-modify-write under the set's lock; `change` returns the new values.

        `change` runs under the lock and may raise a LauncherError to refuse the change
        (nothing is written then). `describe` edits the metadata of keys the new values
        have. A change that alters nothing writes no new version. The new version is sealed
        with the keyring's newest key (keyring.py).
        """
        if name != PLATFORM:
            check_set_name(name)
        ring = Keyring.of(key)
        with self.keyring_lock(exclusive=False):
            ring.reload()  # a rotation may have finished while we waited for the lock
            with self._locked(name, must_exist=must_exist) as lock:
                raw = self._read_file(name, missing_ok=True)
                if raw is None and must_exist:
                    raise self._not_found(name)
                parsed = self._parse(name, raw) if raw is not None else None
                old = self._open_values(name, parsed, ring) if parsed else {}
                new = change(dict(old))
                check_set_size(name, new)
                old_metadata = self._metadata(name, parsed) if parsed else {}
                metadata = _edit_metadata(name, old_metadata, new, describe or {})
                diff = _diff(old, new, old_metadata, metadata)
                previous = int(parsed.header["version"]) if parsed else None
                if parsed is not None and diff.empty:
                    return WriteResult(name, previous or 0, diff, previous)
                version = max(previous or 0, lock.high_water()) + 1
                self._write(name, ring, parsed, old, new, version, diff, metadata)
                lock.record(version)
                return WriteResult(name, version, diff, previous)

    def rollback(
        self, name: str, key: MasterKey | Keyring, version: int | None = None
    ) -> WriteResult:
        """Restore an earlier version's values as a new version."""
        check_set_name(name)
        ring = Keyring.of(key)
        with self.keyring_lock(exclusive=False):
            ring.reload()
            with self._locked(name, must_exist=True) as lock:
                return self._rollback(name, ring, version, lock)

    def _rollback(
        self, name: str, key: Keyring, version: int | None, lock: _SetLock
    ) -> WriteResult:
        parsed = self._parse(name, self._read_existing(name))
        current = int(parsed.header["version"])
        old = self._open_values(name, parsed, key)  # authenticates lines 1-3 first
        history = self._history(name, parsed)
        if not history:
            raise OperationFailed(f"set {name!r} has no earlier version to roll back to")
        target = version if version is not None else int(history[0]["version"])
        entry = next((e for e in history if int(e["version"]) == target), None)
        if entry is None:
            kept = ", ".join(str(e["version"]) for e in history)
            raise OperationFailed(
                f"set {name!r} has no version {target} to roll back to "
                f"(current v{current}; kept: {kept})"
            )
        data_key = self._data_key(name, parsed, key)
        try:
            restored = _decode_values(
                crypto.open_sealed(
                    data_key,
                    crypto.b64decode_strict(str(entry["sealed"])),
                    _history_context(name, entry),
                )
            )
        except (KeyError, DecryptionFailed, ValueError, UnicodeDecodeError):
            raise DecryptionFailed(
                f"version {target} of set {name!r} is damaged or was altered; nothing was restored"
            ) from None
        # Values go back; descriptions and tags stay as they are now (for the keys the
        # restored version has): metadata documents a secret, it is not part of a version.
        metadata = {k: m for k, m in self._metadata(name, parsed).items() if k in restored}
        diff = _diff(old, restored)
        new_version = max(current, lock.high_water()) + 1
        self._write(name, key, parsed, old, restored, new_version, diff, metadata)
        lock.record(new_version)
        return WriteResult(name, new_version, diff, current)

    def delete(self, name: str) -> int:
        """Remove a set and its history; the version it had.

        The lock file stays (module docstring): it is what excludes the writers still
        waiting, and it keeps the set's highest version for a set of the same name later.
        """
        check_set_name(name)
        with self._locked(name, must_exist=True) as lock:
            version = int(self._parse(name, self._read_existing(name)).header["version"])
            lock.record(max(version, lock.high_water()), durable=True)
            os.unlink(self._file(name))
            self._fsync_root()
        return version

    def keyring_lock(self, exclusive: bool) -> _SetLock:
        """The store-wide lock of keyring.py: shared by writers, exclusive for `key rotate`."""
        return self._lock_file(os.path.join(self.directory, KEYRING_LOCK), "the store", exclusive)

    def rewrap(self, name: str, keys: Keyring, new: MasterKey) -> bool:
        """Seal a set's data key under a new master key; values and version unchanged.

        Returns False when the set already uses the new key (a resumed rotation). The caller
        (keyring.rotate) holds the keyring lock exclusively.
        """
        with self._locked(name, must_exist=True):
            parsed = self._parse(name, self._read_existing(name))
            if parsed.header["key_id"] == new.id:
                return False
            values = self._open_values(name, parsed, keys)
            data_key = self._data_key(name, parsed, keys)
            header = dict(
                parsed.header,
                key_id=new.id,
                data_key=crypto.b64encode(crypto.seal(new.key, data_key, _data_key_context(name))),
            )
            self._commit(name, header, parsed.meta_line, parsed.history_line, data_key, values, new)
            return True

    def all_files(self) -> list[str]:
        """Every set, plus the platform credentials when stored (for key rotation)."""
        return self.names() + ([PLATFORM] if self.has_platform() else [])

    # --- internals -----------------------------------------------------------------------

    def _not_found(self, name: str) -> ConfigError:
        known = self.names()
        listing = (
            f"known sets: {', '.join(known)}"
            if known
            else f"the store {self.directory} has no sets"
        )
        return ConfigError(
            f"secret set {name!r} not found; {listing} "
            f"(create it with `agent-run secrets set {name} KEY=VALUE`)"
        )

    def _damaged(self, name: str) -> DecryptionFailed:
        return DecryptionFailed(
            f"set {name!r} is damaged or was altered ({self._file(name)}); "
            "it did not decrypt and no value was used; restore it from a backup or write it again"
        )

    def _open(self, name: str, missing_ok: bool = False) -> BinaryIO | None:
        """The set's file, opened for reading: the one way any read reaches a set file.

        Every failure becomes one error with its exit code: not found (78, or None with
        `missing_ok`), permission (77), not a regular file or unreadable (78).
        """
        path = self._file(name)
        try:
            return open_regular(path)
        except FileNotFoundError:
            if missing_ok:
                return None
            if name == PLATFORM:
                raise ConfigError("no platform credentials are stored") from None
            raise self._not_found(name) from None
        except PermissionError:
            raise PermissionProblem(self.denied("read", path)) from None
        except NotRegularFile as error:
            raise ConfigError(
                f"{path} is a {error.kind}, not a set file; remove it or move it out of the store"
            ) from None
        except OSError as error:  # a symlink loop, a name too long for the filesystem, EIO...
            raise ConfigError(f"cannot read set file {path}: {error.strerror}") from None

    def _read_file(self, name: str, missing_ok: bool = False) -> bytes | None:
        stream = self._open(name, missing_ok)
        if stream is None:
            return None
        with stream:
            try:
                return stream.read()
            except OSError as error:
                raise ConfigError(
                    f"cannot read set file {self._file(name)}: {error.strerror}"
                ) from None

    def _read_existing(self, name: str) -> bytes:
        raw = self._read_file(name)
        assert raw is not None
        return raw

    def _parse(self, name: str, raw: bytes) -> _Parsed:
        """Split the four lines and parse the header; the rest stays bytes until needed."""
        first = raw.find(b"\n")
        try:
            header = json.loads(raw[:first]) if first > 0 else None
        except (ValueError, RecursionError):  # RecursionError: `[[[[...` nested too deep
            header = None
        if not isinstance(header, dict):
            raise self._damaged(name)
        if header.get("format") != FORMAT:
            raise ConfigError(
                f"set {name!r} has format {str(header.get('format'))[:20]}, which this agent-run "
                f"(format {FORMAT}) cannot read; use the agent-run version that wrote it, or "
                f"write the set again"
            )
        if header.get("set") != name:
            raise self._damaged(name)  # a file renamed to another set
        try:
            validate.header(header)
        except validate.Malformed:
            raise self._damaged(name) from None
        second = raw.find(b"\n", first + 1)
        third = raw.find(b"\n", second + 1)
        if min(second, third) < 0 or raw.find(b"\n", third + 1) != len(raw) - 1:
            raise self._damaged(name)
        try:
            sealed = crypto.b64decode_strict(raw[third + 1 : -1].decode("ascii"))
        except (UnicodeDecodeError, DecryptionFailed):
            raise self._damaged(name) from None
        return _Parsed(
            header, raw[first + 1 : second], raw[second + 1 : third], raw[:third], sealed
        )

    def _meta(self, name: str, parsed: _Parsed) -> dict[str, Any]:
        try:
            return validate.meta(json.loads(parsed.meta_line))
        except (ValueError, RecursionError):  # not JSON, validate.Malformed, nested too deep
            raise self._damaged(name) from None

    def _metadata(self, name: str, parsed: _Parsed) -> dict[str, Metadata]:
        from launcher.store.metadata import from_stored

        metadata = {}
        try:
            for key, entry in self._meta(name, parsed)["keys"].items():
                if "description" in entry or "tags" in entry:
                    metadata[key] = from_stored(key, entry)
        except (AttributeError, ValueError):
            raise self._damaged(name) from None
        return metadata

    def _history(self, name: str, parsed: _Parsed) -> list[dict[str, Any]]:
        try:
            return validate.history(json.loads(parsed.history_line))
        except (ValueError, RecursionError):  # not JSON, validate.Malformed, nested too deep
            raise self._damaged(name) from None

    def _key_for(self, name: str, parsed: _Parsed, keys: Keyring) -> MasterKey:
        wanted = parsed.header.get("key_id")
        found = keys.find(wanted)
        if found is None and keys.reload():
            found = keys.find(wanted)
        if found is not None:
            return found
        raise DecryptionFailed(
            f"set {name!r} is sealed with master key {wanted}, but {keys.describe()}; "
            "use the matching key (AGENT_RUN_MASTER_KEY, --key-file, ...)"
        )

    def _data_key(self, name: str, parsed: _Parsed, key: Keyring) -> bytes:
        master = self._key_for(name, parsed, key)
        try:
            wrapped = crypto.b64decode_strict(str(parsed.header["data_key"]))
            return crypto.open_sealed(master.key, wrapped, _data_key_context(name))
        except (KeyError, DecryptionFailed):
            raise DecryptionFailed(
                f"set {name!r} did not decrypt with the master key from {master.source}: "
                "the file was altered or the key is wrong"
            ) from None

    def _open_values(self, name: str, parsed: _Parsed | None, key: Keyring) -> dict[str, str]:
        assert parsed is not None
        data_key = self._data_key(name, parsed, key)
        try:
            plain = crypto.open_sealed(data_key, parsed.sealed_values, parsed.associated)
            values = _decode_values(plain)
        except (DecryptionFailed, ValueError, UnicodeDecodeError):
            raise self._damaged(name) from None
        if len(values) != parsed.header.get("count"):
            raise self._damaged(name)
        return values

    def _write(
        self,
        name: str,
        keys: Keyring,
        parsed: _Parsed | None,
        old_values: dict[str, str],
        values: dict[str, str],
        version: int,
        diff: Change,
        metadata: Mapping[str, Metadata],
    ) -> None:
        now = _iso(self._clock())
        key = keys.newest  # always seal with the newest key (keyring.py)
        if parsed is None:
            data_key = crypto.new_key()
            old_times: dict[str, dict[str, str]] = {}
            history: list[dict[str, Any]] = []
            created = now
        else:
            data_key = self._data_key(name, parsed, keys)
            old_meta = self._meta(name, parsed)
            old_times = old_meta["keys"]
            created = old_meta.get("created", now)
            previous: dict[str, Any] = {
                "version": int(parsed.header["version"]),
                "updated": parsed.header["updated"],
                "change": old_meta["change"],
            }
            previous["sealed"] = crypto.b64encode(
                crypto.seal(data_key, _encode_values(old_values), _history_context(name, previous))
            )
            history = [previous, *self._history(name, parsed)][: KEEP_VERSIONS - 1]
        changed = set(diff.added) | set(diff.changed)
        times = {
            k: {
                "created": old_times.get(k, {}).get("created", now),
                "updated": now if k in changed else old_times.get(k, {}).get("updated", now),
                **(metadata[k].stored() if k in metadata else {}),
            }
            for k in sorted(values)
        }
        header = {
            "format": FORMAT,
            "set": name,
            "version": version,
            "status": READY,
            "updated": now,
            "key_id": key.id,
            "count": len(values),
            "values_version": version
            if diff.values_changed or parsed is None
            else (int(parsed.header.get("values_version", parsed.header["version"]))),
            "data_key": crypto.b64encode(crypto.seal(key.key, data_key, _data_key_context(name))),
        }
        meta = _canonical({"created": created, "keys": times, "change": diff.as_dict()})
        self._commit(name, header, meta, _canonical_list(history), data_key, values, key)

    def _commit(
        self,
        name: str,
        header: dict[str, Any],
        meta_line: bytes,
        history_line: bytes,
        data_key: bytes,
        values: dict[str, str],
        key: MasterKey,
    ) -> None:
        associated = _canonical(header) + b"\n" + meta_line + b"\n" + history_line
        sealed = crypto.seal(data_key, _encode_values(values), associated)
        content = associated + b"\n" + crypto.b64encode(sealed).encode() + b"\n"
        target = self._file(name)
        # Temp files of writers that died mid-write: we hold the lock, so none is in use.
        prefix, suffix = f".{name}{SUFFIX}.", ".tmp"
        for entry in os.listdir(self.directory):
            if entry.startswith(prefix) and entry.endswith(suffix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.directory, entry))
        tmp = os.path.join(self.directory, f"{prefix}{os.getpid()}{suffix}")
        owner = owner_of(target)  # kept across a rewrite by root (module docstring)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                give(fd, owner)
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._verify(name, tmp, values, Keyring.of(key))
            os.replace(tmp, target)
        except PermissionError:
            raise PermissionProblem(
                f"cannot write to store {self.directory}: permission denied"
            ) from None
        except OSError as error:
            raise OperationFailed(
                f"cannot write set {name!r} in {self.directory}: {error.strerror}"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        self._fsync_root()

    def _verify(self, name: str, path: str, values: dict[str, str], key: Keyring) -> None:
        """Read the written file back before it replaces the set: status `ready` means this."""
        try:
            with open(path, "rb") as stream:
                parsed = self._parse(name, stream.read())
            ok = self._open_values(name, parsed, key) == values
            ok = ok and sorted(self._meta(name, parsed)["keys"]) == sorted(values)
        except DecryptionFailed:
            ok = False
        if not ok:
            raise OperationFailed(f"set {name!r} did not verify after writing; nothing was changed")

    def _locked(self, name: str, must_exist: bool = False) -> _SetLock:
        """The set's lock; with `must_exist`, a missing set is refused before any lock file
        is made for it (no stray `.nosuch.lock`)."""
        if must_exist and not os.path.exists(self._file(name)):
            raise self._not_found(name)
        return self._lock_file(self._lock_path(name), f"set {name!r}", True)

    def _lock_file(self, path: str, what: str, exclusive: bool) -> _SetLock:
        self._ensure_root()
        try:
            # O_NONBLOCK|O_NOCTTY and the fstat below: a FIFO or device put in the lock
            # file's place is refused, not written to (issue #15).
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
            fd = os.open(path, flags, 0o600)
        except PermissionError:
            raise PermissionProblem(
                f"cannot write to store {self.directory}: permission denied"
            ) from None
        except OSError as error:
            raise OperationFailed(
                f"cannot lock {what} in {self.directory}: {error.strerror}"
            ) from None
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise ConfigError(f"lock file {path} is a {kind_of(mode)}; remove it")
        give(fd, owner_of(self.directory))  # a service's store stays the service's
        return _SetLock(fd, exclusive)

    def _ensure_root(self) -> None:
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
        except PermissionError:
            raise PermissionProblem(
                f"cannot create store {self.directory}: permission denied"
            ) from None
        except FileExistsError:  # a file (or FIFO...) where the store directory should be
            raise ConfigError(f"store {self.directory} is not a directory") from None
        except OSError as error:
            raise ConfigError(f"cannot create store {self.directory}: {error.strerror}") from None

    def _fsync_root(self) -> None:
        fsync_directory(self.directory)


class _SetLock:
    """`with store._locked(name) as lock:` holds an flock on the set's side file.

    A class rather than `contextlib.contextmanager`: contextlib (~0.5 ms) is not otherwise
    imported on the launch path, which reads without locking. The file's content is the
    highest version ever written to the set (module docstring).
    """

    def __init__(self, fd: int, exclusive: bool = True) -> None:
        self._fd = fd
        self._exclusive = exclusive

    def __enter__(self) -> _SetLock:
        import fcntl

        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX if self._exclusive else fcntl.LOCK_SH)
        except BaseException:
            os.close(self._fd)
            raise
        return self

    def high_water(self) -> int:
        """The highest version recorded for this set (0 when none was)."""
        try:
            return int(os.pread(self._fd, 32, 0).strip() or b"0")
        except ValueError:
            return 0  # an old, empty or foreign lock file: the set file's version decides

    def record(self, version: int, durable: bool = False) -> None:
        if version <= self.high_water():
            return
        data = str(version).encode()
        os.pwrite(self._fd, data, 0)
        os.ftruncate(self._fd, len(data))
        if durable:
            os.fsync(self._fd)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        os.close(self._fd)


def _diff(
    old: Mapping[str, str],
    new: Mapping[str, str],
    old_metadata: Mapping[str, Metadata] | None = None,
    metadata: Mapping[str, Metadata] | None = None,
) -> Change:
    kept = new.keys() & old.keys()
    before, after = old_metadata or {}, metadata or {}
    return Change(
        added=tuple(sorted(new.keys() - old.keys())),
        changed=tuple(sorted(k for k in kept if new[k] != old[k])),
        removed=tuple(sorted(old.keys() - new.keys())),
        described=tuple(sorted(k for k in kept if before.get(k) != after.get(k))),
    )


def _edit_metadata(
    name: str,
    old: Mapping[str, Metadata],
    values: Mapping[str, str],
    edits: Mapping[str, MetadataEdit],
) -> dict[str, Metadata]:
    """The metadata after `edits`, for the keys `values` has (a removed key loses its own)."""
    from launcher.store.metadata import Metadata, check_not_a_value

    metadata = {k: m for k, m in old.items() if k in values}
    for key, edit in edits.items():
        if key not in values:
            raise OperationFailed(
                f"set {name!r} has no key {key} to describe; nothing was changed "
                f"(keys: {', '.join(sorted(values)) or 'none'})"
            )
        metadata[key] = edit.apply(key, metadata.get(key, Metadata()))
        check_not_a_value(key, metadata[key], values)
    return {k: m for k, m in metadata.items() if m}


def default_root(environ: Mapping[str, str] = os.environ) -> str:
    if environ.get("AGENT_RUN_HOME"):
        return environ["AGENT_RUN_HOME"]
    data_home = environ.get("XDG_DATA_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "share"
    )
    return os.path.join(data_home, "agent-run")

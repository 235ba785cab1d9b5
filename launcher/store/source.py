"""The secrets source: what every consumer of the store's secrets reads them through.

Launch, rollouts, the session read-after-write check and the platform credentials all see
the store through one `SecretsSource`, so they share one answer to "which version, sealed
with which key, is current" (issue #12). Its interface is small on purpose:

    source = SecretsSource(store, "prod", key_file=None, extras=None, python_target=True)
    snap = source.snapshot()   # Snapshot: fingerprint, layers, masked, version, platform_version
    source.fingerprint()       # cheap (plaintext headers, no key): has the store moved on?
    source.watch_dir           # the directory to watch for changes, or None

`extras(secrets) -> Extras(env_files, masked, files)` is the caller's part of a snapshot: what
its configuration builds from the decrypted values (env files and the toml `[env]` table with
their `${secret:NAME}` references resolved, rendered files), rebuilt on every snapshot.

- `snapshot()` reads the **fingerprint first**, then decrypts. A write landing in between
  makes the decrypted version newer than `snap.fingerprint`, so the consumer that recorded
  `snap.fingerprint` sees `fingerprint() != snap.fingerprint` and loads again: a write is
  never recorded as rolled out before its values were read.
- It returns the environment layers for a worker (environment.py) and the values an output
  masker must hide (the set's values, composed values that hold one, the platform API key
  and secret).
- The fingerprint follows the set's *values* version (`Store.values_version`): a version
  that only changed descriptions or tags gives the workers nothing new.
- It decrypts through a keyring (keyring.py) that reloads when a set names a key it does not
  hold: a running launcher follows `key rotate`, and a platform that delivers a new key file.
- **Versions only move forward**: a snapshot whose set (or platform credentials) version is
  lower than one this source has already returned raises `VersionRegression` — an older file
  put back by hand is refused, and the caller keeps what it runs. `secrets rollback` writes a
  newer version, so it rolls out like any update.
- `check(layers)` is the caller's last word on a snapshot, run on every one before it is
  returned: the run command measures the largest worker's environment against `execve`'s
  limits there (limits.py, issue #15). A snapshot it refuses raises like any other, so a
  launch exits 65 and a reload skips the rollout with the old workers serving, where a
  version that grew the environment past the kernel's limit was found only at spawn.
- Errors are LauncherErrors with messages fit for a log line; no value is ever in them.

Like the rest of the store, it stays off `typing`, `pathlib` and `dataclasses` (launch path).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping
from typing import NamedTuple

from launcher.environment import EnvironmentLayers
from launcher.errors import LauncherError, VersionRegression
from launcher.file_secrets import deliver
from launcher.store.keyring import Keyring
from launcher.store.names import PLATFORM_CREDENTIALS
from launcher.store.sets import PLATFORM, Store
from launcher.store.unchanged import UnchangedFiles

__all__ = ["Extras", "SecretsSource", "Snapshot", "VersionRegression"]

UNREADABLE = "unreadable"  # the fingerprint of a store whose headers cannot be read


class Extras(NamedTuple):
    """What a configuration builds from a snapshot's secrets (see the module docstring)."""

    env_files: dict[str, str]  # plain values, references resolved
    masked: list[str]  # composed values that contain a secret
    files: dict[str, bytes]  # rendered files, by destination


class Snapshot(NamedTuple):
    """One consistent read of the store, for one generation of workers."""

    fingerprint: Hashable  # taken *before* decrypting (module docstring)
    layers: EnvironmentLayers
    masked: list[str]  # values to hide in worker output
    version: int | None  # the bound set's version (None: no set bound)
    platform_version: int | None  # the stored platform credentials' version, if any

    def __repr__(self) -> str:
        return (
            f"Snapshot(version={self.version}, platform_version={self.platform_version}, "
            f"fingerprint={self.fingerprint!r})"
        )


class SecretsSource:
    """The bound set, the platform credentials and env files, read as one snapshot."""

    def __init__(
        self,
        store: Store,
        secret_set: str | None,
        *,
        key_file: str | None = None,
        extras: Callable[[Mapping[str, str]], Extras] | None = None,
        python_target: bool = False,
        environ: Mapping[str, str] = os.environ,
        check: Callable[[EnvironmentLayers], None] | None = None,
    ) -> None:
        self.store = store
        self.secret_set = secret_set
        self._key_file = key_file
        self._extras = extras
        self._python_target = python_target
        self._environ = environ
        self._check = check
        self._keyring: Keyring | None = None  # loaded on first need: no set, no key needed
        self._floor: dict[str, int] = {}  # name -> highest version handed out
        self._unchanged = UnchangedFiles()  # headers, kept while their files are unchanged
        self._paths: tuple[str, str] | None = None  # the set's file and the platform's

    def __repr__(self) -> str:
        return f"SecretsSource(store={self.store.directory!r}, secret_set={self.secret_set!r})"

    @property
    def watch_dir(self) -> str | None:
        """The store directory when there is something in it to follow, else None."""
        if self.secret_set or self.store.has_platform():
            return self.store.directory
        return None

    def fingerprint(self) -> Hashable:
        """The versions of the bound set and of the platform credentials, from plaintext
        headers (no key, a few tens of microseconds); UNREADABLE if a header is damaged.

        Asked before every session start: a header is read again only when its file may
        have changed since it was last read (unchanged.py: every write of the store does).
        """
        store, name = self.store, self.secret_set
        try:
            if self._paths is None:
                self._paths = (store.file(name) if name else "", store.file(PLATFORM))
            set_path, platform_path = self._paths
            return (
                self._unchanged.get(set_path, lambda: store.values_version(name)) if name else None,
                self._unchanged.get(platform_path, lambda: store.current_version(PLATFORM)),
            )
        except LauncherError:
            return UNREADABLE

    def keyring(self) -> Keyring:
        if self._keyring is None:
            self._keyring = Keyring.open(self.store.directory, self._key_file, self._environ)
        return self._keyring

    def snapshot(self) -> Snapshot:
        """Fingerprint, then decrypt; LauncherError (VersionRegression for an older file)."""
        fingerprint = self.fingerprint()
        secrets: dict[str, str] = {}
        version = None
        if self.secret_set:
            secret_set = self.store.read(self.secret_set, self.keyring())
            secrets, version = secret_set.plain(), secret_set.version
        platform_version, platform = (
            self.store.read_platform_version(self.keyring())
            if self.store.has_platform()
            else (None, {})
        )
        self._check_forward(self.secret_set, version)
        self._check_forward(PLATFORM, platform_version)
        extras = self._extras(secrets) if self._extras is not None else Extras({}, [], {})
        # File secrets (`secrets set --file`) leave the environment for private files.
        delivery = deliver(
            secrets,
            self.store.metadata(self.secret_set) if self.secret_set and secrets else {},
            extras.files,
        )
        layers = EnvironmentLayers(
            inherited=dict(self._environ),
            env_files=extras.env_files,
            secrets=delivery.variables,
            platform=platform,
            secrets_version=version,
            python_target=self._python_target,
            files=delivery.files,
            file_variables=delivery.file_variables,
        )
        if self._check is not None:
            self._check(layers)
        # Only a snapshot that passed every check moves the floors.
        for name, seen in ((self.secret_set, version), (PLATFORM, platform_version)):
            if name and seen is not None:
                self._floor[name] = max(seen, self._floor.get(name, 0))
        masked = list(secrets.values()) + extras.masked + delivery.masked
        for name in PLATFORM_CREDENTIALS[1:]:  # the URL is not a secret; key and secret are
            value = platform.get(name) or self._environ.get(name)
            if value:
                masked.append(value)
        return Snapshot(fingerprint, layers, masked, version, platform_version)

    def _check_forward(self, name: str | None, version: int | None) -> None:
        floor = self._floor.get(name or "")
        if name is None or version is None or floor is None or version >= floor:
            return
        what = "the platform credentials" if name == PLATFORM else f"set {name!r}"
        fix = (
            "write them again with `agent-run platform set livekit ...`"
            if name == PLATFORM
            else f"to go back to older values, run `agent-run secrets rollback {name} VERSION`, "
            "which writes them as a newer version"
        )
        raise VersionRegression(
            f"{what} went back from v{floor} to v{version} (an older file was put back: git, "
            f"a backup, an old ConfigMap?); refused, v{floor} stays in service; {fix}"
        )

"""The keyring (current and next master key) and `key rotate`: one protocol, in one place.

Why one module: a rotation is only safe if the writers, the readers and the rotation agree
on which key seals and which keys open. Issue #12 found a writer that opened a re-sealed set
through `<key>.next` and sealed it back with the old key, which the rotation then deleted.

The protocol:

- A **keyring** holds the current master key and, while a rotation is in progress, the next
  one (`<key file>.next`). Reading a set picks the key whose id the set names; when none
  matches, the keyring reloads its files (a rotation may have finished, or a platform may
  have delivered a new key) and the caller reads the set again (it may have been re-sealed
  meanwhile). A running launcher therefore follows a rotation without a restart.
- A **writer** (`secrets set/unset/rollback`, `platform set`) holds the store's keyring lock
  *shared* while it writes, reloads the keyring once it holds it, and always seals with the
  newest key it has: the next key if a rotation was interrupted, else the current one.
- **`key rotate`** holds the keyring lock *exclusively*: no writer is between loading its keys
  and sealing while it runs. It writes `<key file>.next` (or uses `--new-key-file`),
  re-seals every set's data key under it (each under the set's own lock; values and versions
  unchanged), and then renames the next key over the current one. Interrupted, it leaves
  the next key in place: writers seal with it, readers open with either, and running the
  command again finishes the job.

Keyring loads read `<key>.next` *before* the current key: the rename that ends a rotation
can then never make a load see neither the old key nor the new one.

The lock is `<store>/._keyring.lock` (set names cannot start with `_`, so it never collides
with a set's lock). It is never deleted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from launcher.errors import ConfigError, OperationFailed, UsageError
from launcher.store.keys import (
    NEXT_SUFFIX,
    MasterKey,
    load_master_key,
    read_key_file,
    write_key_file,
)

if TYPE_CHECKING:
    from launcher.store.keys import StrPath
    from launcher.store.sets import Store

KEYRING_LOCK = "._keyring.lock"


class Keyring:
    """The master keys that may seal this store now: the current one, and the next one."""

    __slots__ = ("_create", "_environ", "_key_file", "_root", "current", "next")

    def __init__(
        self,
        current: MasterKey,
        next: MasterKey | None = None,
        *,
        root: str | None = None,
        key_file: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.current = current
        self.next = next
        self._root = root  # None: a fixed keyring (tests, rotation), never reloaded
        self._key_file = key_file
        self._environ = environ if environ is not None else os.environ
        self._create = False

    @classmethod
    def open(
        cls,
        store_root: StrPath,
        key_file: StrPath | None = None,
        environ: Mapping[str, str] = os.environ,
        create: bool = False,
    ) -> Keyring:
        """Load the keys from their sources (keys.py's order); `create` as load_master_key."""
        current = load_master_key(store_root, key_file, environ, create=create)
        following = _read_next(current.path, environ)
        ring = cls(
            current,
            following if following is None or following.id != current.id else None,
            root=os.fspath(store_root),
            key_file=None if key_file is None else os.fspath(key_file),
            environ=environ,
        )
        return ring

    @classmethod
    def of(cls, key: MasterKey | Keyring) -> Keyring:
        """A keyring for a key given directly (tests, tools): fixed, never reloaded."""
        return key if isinstance(key, Keyring) else cls(key)

    def __repr__(self) -> str:
        following = f", next={self.next.id!r}" if self.next is not None else ""
        return f"Keyring(current={self.current.id!r}{following})"

    @property
    def newest(self) -> MasterKey:
        """The key every write seals with."""
        return self.next if self.next is not None else self.current

    @property
    def created(self) -> bool:
        return self.current.created

    def find(self, key_id: object) -> MasterKey | None:
        for key in (self.current, self.next):
            if key is not None and key.id == key_id:
                return key
        return None

    def reload(self) -> bool:
        """Read the key sources again; True when the keys changed."""
        if self._root is None:
            return False
        before = (self.current.id, self.next.id if self.next else None)
        path = self.current.path
        # `.next` first (module docstring): the rotation's final rename cannot fall between.
        following = _read_next(path, self._environ)
        current = load_master_key(self._root, self._key_file, self._environ)
        if current.path != path:  # the key now comes from another source
            following = _read_next(current.path, self._environ)
        if following is not None and following.id == current.id:
            following = None  # the rotation finished between the two reads
        self.current, self.next = current, following
        return before != (self.current.id, self.next.id if self.next else None)

    def describe(self) -> str:
        """Which keys this is, for error messages (ids only)."""
        text = f"the key from {self.current.source} is {self.current.id}"
        if self.next is not None:
            text += f" (next key {self.next.id} from {self.next.source})"
        return text


def _read_next(path: str | None, environ: Mapping[str, str]) -> MasterKey | None:
    """The next key beside the key file at `path`, if a rotation is in progress."""
    if path is None:
        return None
    pending = path + NEXT_SUFFIX
    if not os.path.exists(pending):
        return None
    try:
        return read_key_file(pending, environ)
    except ConfigError:
        return None  # renamed over the current key between the check and the read


class RotationResult(NamedTuple):
    old_id: str
    new_id: str
    resealed: int
    where: str  # the file that now holds the new key


def _check_all_open(store: Store, old: MasterKey, pending: str, keyring: Keyring) -> None:
    """Every set opens (with the old key, or the pending one of a resumed rotation).

    Checked before any set is re-sealed: a damaged set found half-way used to leave the
    store sealed under two keys (issue #15: no partial state).
    """
    from launcher.store.sets import PLATFORM

    resumed = read_key_file(pending, keyring._environ) if os.path.exists(pending) else None
    check = Keyring(old, resumed if resumed is not None and resumed.id != old.id else None)
    for name in store.all_files():
        if name == PLATFORM:
            store.read_platform(check)
        else:
            store.read(name, check)


def rotate(store: Store, keyring: Keyring, new_key_file: StrPath | None = None) -> RotationResult:
    """`agent-run key rotate`: re-seal every set under a new master key (module docstring).

    A key from a file is replaced in place; a key from the environment or from a place
    agent-run cannot write needs `new_key_file`, and the operator then points the source at it.
    """
    from launcher.store import crypto
    from launcher.store.files import fsync_directory

    with store.keyring_lock(exclusive=True):
        keyring.reload()
        old = keyring.current
        final: str | None
        if new_key_file is not None:
            pending, final = os.fspath(new_key_file), None
        elif old.path is not None:
            final = old.path
            pending = final + NEXT_SUFFIX
        else:
            raise UsageError(
                f"the master key comes from {old.source}, which agent-run cannot replace; "
                "give --new-key-file FILE for the new key, then point that source at it"
            )
        _check_all_open(store, old, pending, keyring)
        if not os.path.exists(pending):
            try:
                write_key_file(pending, crypto.new_key())  # resumed rotations reuse it
            except OSError as error:
                raise OperationFailed(
                    f"cannot write the new key {pending}: {error.strerror}; give "
                    "--new-key-file FILE somewhere writable, then point the key source at it"
                ) from None
        new = read_key_file(pending, keyring._environ)
        # Sets already re-sealed by an interrupted run open with the new key.
        both = Keyring(old, new if new.id != old.id else None)
        resealed = sum(1 for name in store.all_files() if store.rewrap(name, both, new))
        if final is not None:
            os.replace(pending, final)
            fsync_directory(os.path.dirname(final) or ".")
        return RotationResult(old.id, new.id, resealed, final or pending)

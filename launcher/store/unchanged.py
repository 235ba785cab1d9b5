"""An answer read from a file, kept while the file provably has not changed.

Session mode reads the store's fingerprint (the bound set's version, from its header) before
every session start: read-after-write (SPEC §5). Opening, reading and parsing that header for
every request was a few percent of the launcher's CPU per session (#18). `UnchangedFiles`
keeps the answer with the file it came from, and gives it again only while:

- the path still names that very file: the file is held open, so its inode cannot be given
  to another file, and the store writes by rename (a new file, a new inode): every write of
  the store changes what the path names, and is read, whatever the clock says;
- the file was not changed in place (a hand edit): its ctime, size and mtime are as they
  were. An answer is only kept for a file whose ctime is older than the read by AGE_S, so a
  change after the read, which sets the ctime to that moment or later, cannot leave the same
  ctime behind (unless the system clock is set back by more than AGE_S in between). A file
  written in the last AGE_S, the usual case right after `secrets set`, is read every time.

Anything else (a stat that fails, another file, a young file) reads as before, and a read
that raises keeps nothing.
"""

from __future__ import annotations

import _thread
import os
import stat
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["AGE_S", "UnchangedFiles"]

AGE_S = 3.0  # a filesystem with 1 or 2 s timestamps (FAT) still moves the ctime past this
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

T = TypeVar("T")
_Key = tuple[int, int, int, int, int]


def _key(status: os.stat_result) -> _Key:
    return (status.st_dev, status.st_ino, status.st_ctime_ns, status.st_mtime_ns, status.st_size)


class UnchangedFiles:
    """Answers read from files, each kept with its file held open (see the module)."""

    def __init__(self, age: float = AGE_S) -> None:
        self._age_ns = int(age * 1e9)
        self._kept: dict[str, tuple[int, _Key, object]] = {}  # path -> (fd, key, answer)
        self._lock = _thread.allocate_lock()

    def get(self, path: str, read: Callable[[], T]) -> T:
        """`read()`'s answer about `path`: the kept one while the file is unchanged (one
        kind of answer per path: the answer kept is given whatever `read` is asked)."""
        with self._lock:
            kept = self._kept.get(path)
            if kept is not None:
                try:
                    current = _key(os.stat(path))
                except OSError:
                    current = None
                if current == kept[1]:
                    return kept[2]  # type: ignore[return-value]
                self._forget(path)
            return self._read(path, read)

    def close(self) -> None:
        with self._lock:
            for path in list(self._kept):
                self._forget(path)

    def __del__(self) -> None:
        for fd, _, _ in self._kept.values():
            os.close(fd)
        self._kept.clear()

    def _forget(self, path: str) -> None:
        fd, _, _ = self._kept.pop(path)
        os.close(fd)

    def _read(self, path: str, read: Callable[[], T]) -> T:
        started = time.time_ns()
        try:
            fd = os.open(path, _FLAGS)
        except OSError:
            return read()  # no file (or no access): the reader says what that means
        kept = False
        try:
            held = os.fstat(fd)
            answer = read()
            try:
                now = _key(os.stat(path))
            except OSError:
                return answer
            # Still the file held, unchanged since before the read (so the answer is its
            # content), and old enough that any later change shows in its ctime.
            if (
                stat.S_ISREG(held.st_mode)
                and now == _key(held)
                and held.st_ctime_ns < started - self._age_ns
            ):
                self._kept[path] = (fd, now, answer)
                kept = True
            return answer
        finally:
            if not kept:
                os.close(fd)

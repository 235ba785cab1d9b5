"""Small file-system rules shared by the store's files: durability, ownership, and opening.

Ownership (issue #12): a service's store belongs to the service's user, but operators often
run `sudo agent-run secrets set ...`. A file that root rewrote as root-owned 0600 would lock
the service out of its own secrets. So, when root writes, a rewritten file keeps the owner
and group of the file it replaces, and a new file (a set, a lock, a key) takes the owner and
group of the store directory it is created in. Other users cannot give files away; for them
these are no-ops, which is what they need anyway (they create files as themselves).

Opening (issue #15): a name in the store directory is not necessarily a file. A FIFO named
`f.set` made a plain `open()` wait for a writer forever (every `secrets list` hung), a
directory named `d.set` raised IsADirectoryError from every command, and a device would be
read from. So a set or key file is opened non-blocking (which makes opening a FIFO or a
device return at once), then `fstat` on the open descriptor decides: only a regular file is
read. Checking the descriptor rather than the path first leaves no window in which the name
could be swapped for something else between the check and the open.
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from typing import BinaryIO

# O_NOCTTY: a terminal device must never become our controlling terminal by being opened.
_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def fsync_directory(directory: str) -> None:
    """Make a rename or a new file in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def owner_of(path: str) -> tuple[int, int] | None:
    """The (uid, gid) to give a file written at `path` by root, or None to leave it alone.

    The file's own owner if it exists (a rewrite), else its directory's owner.
    """
    if os.geteuid() != 0:
        return None
    for candidate in (path, os.path.dirname(path) or "."):
        try:
            info = os.stat(candidate)
        except OSError:
            continue
        return (info.st_uid, info.st_gid)
    return None


def give(fd: int, owner: tuple[int, int] | None) -> None:
    """chown an open file to `owner` (from `owner_of`); no-op for None or root:root."""
    if owner is None or owner == (0, 0):
        return
    import contextlib

    # A file system without owners (vfat, some FUSE mounts) has nothing to keep.
    with contextlib.suppress(OSError):
        os.fchown(fd, owner[0], owner[1])


class NotRegularFile(OSError):
    """The name exists but is a directory, FIFO, socket or device; `kind` says which."""

    def __init__(self, path: str, kind: str) -> None:
        super().__init__(f"{path} is a {kind}, not a regular file")
        self.path = path
        self.kind = kind


def kind_of(mode: int) -> str:
    """What a file's mode says it is, in words for an error message."""
    for test, word in (
        (stat.S_ISDIR, "directory"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
    ):
        if test(mode):
            return word
    return "regular file" if stat.S_ISREG(mode) else "special file"


def open_regular(path: str) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file; NotRegularFile otherwise.

    Other failures are the OSError of `open(2)` (FileNotFoundError, PermissionError, ELOOP
    for a symlink loop, ENAMETOOLONG, ...), for the caller to put into words. The returned
    stream reads normally: O_NONBLOCK has no effect on regular files.
    """
    fd = os.open(path, _FLAGS)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise NotRegularFile(path, kind_of(mode))
        return open(fd, "rb")
    except BaseException:
        os.close(fd)
        raise

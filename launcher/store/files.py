"""Small file-system rules shared by the store's files: durability and ownership.

Ownership (issue #12): a service's store belongs to the service's user, but operators often
run `sudo agent-run secrets set ...`. A file that root rewrote as root-owned 0600 would lock
the service out of its own secrets. So, when root writes, a rewritten file keeps the owner
and group of the file it replaces, and a new file (a set, a lock, a key) takes the owner and
group of the store directory it is created in. Other users cannot give files away; for them
these are no-ops, which is what they need anyway (they create files as themselves).
"""

from __future__ import annotations

import os


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

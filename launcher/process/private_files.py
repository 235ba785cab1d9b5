"""Private files of a process: a directory per worker that only its user can read, on tmpfs
where the host has one, gone when the process ends.

Some agents take a secret only as a file (a rendered config, a service-account JSON). Each
process then gets its own directory, named in its environment by `AGENT_RUN_FILES`:

    <base>/<launcher pid>/<n>/FILE      base: $XDG_RUNTIME_DIR/agent-run-files, else
                                              /dev/shm/agent-run-<uid>, else $TMPDIR/...

Directories are 0700 and files 0600, owned by the worker's user. A directory is removed when
its process is reaped (the pool calls `remove()`), a launcher's whole tree when it exits, and
the trees of launchers that died without cleaning up (SIGKILL, power loss on a disk-backed
base) at the next launcher's start (`sweep_stale()`).

How a dead launcher is told from a live one: each launcher holds an exclusive `flock` on
`<base>/<pid>/.lock` for its lifetime. The kernel drops the lock when the process dies
however it dies, so a lock that can be taken means the tree is stale — which, unlike
"is there a process with this pid", cannot be fooled by pid reuse.

Decision: bytes are written by us, not by the agent's own tooling, and never through a
shell: the content holds secret values, and argv is visible to every user of the host.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from launcher.errors import OperationFailed, PermissionProblem

VARIABLE = "AGENT_RUN_FILES"
LOCK = ".lock"
MAX_FILE_BYTES = 1024 * 1024  # a config file, not a data set: tmpfs is memory
_FILE_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")

Owner = tuple[int, int]  # uid, gid


def file_name_problem(name: str) -> str | None:
    """Why `name` cannot be a private file's name (it must stay inside the directory)."""
    if not name or len(name) > 128:
        return f"file name {name!r} must be 1-128 characters"
    if name[0] == "." or not set(name) <= _FILE_NAME_CHARS:
        return (
            f"file name {name!r} may only contain letters, digits, '_', '.', '-' and cannot "
            "start with '.' (a plain name: the file goes in the process's private directory)"
        )
    return None


def base_directory(environ: Mapping[str, str] = os.environ) -> str:
    """Where launchers keep private files: tmpfs first ($XDG_RUNTIME_DIR, /dev/shm)."""
    runtime = environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, "agent-run-files")
    if os.path.isdir("/dev/shm"):
        return f"/dev/shm/agent-run-{os.geteuid()}"
    temp = environ.get("TMPDIR") or "/tmp"
    return os.path.join(temp, f"agent-run-{os.geteuid()}")


def _private_directory(path: str) -> None:
    """Create `path` 0700, or accept it only if it is ours, a real directory, not group/other
    writable or readable (in /dev/shm or /tmp anyone could have made it first)."""
    try:
        os.mkdir(path, 0o700)
        return
    except FileExistsError:
        pass
    info = os.lstat(path)
    import stat

    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid() or info.st_mode & 0o066:
        raise PermissionProblem(
            f"{path} exists but is not a private directory of this user (a symlink, another "
            "owner, or readable by others); remove it, or set XDG_RUNTIME_DIR to a private one"
        )


def _remove_tree(path: str) -> None:
    import shutil

    if os.geteuid() == 0:
        try:
            fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            pass
        else:
            try:
                _reclaim(fd)
            finally:
                os.close(fd)
    shutil.rmtree(path, ignore_errors=True)


def _reclaim(fd: int) -> None:
    """As root, make a worker's directory and every directory under it ours again.

    They belong to the worker's user (0700): root lists and empties them only with
    CAP_DAC_OVERRIDE, which a launcher given just the capabilities it needs does not have
    (README: SETUID, SETGID, KILL, CHOWN); with CAP_CHOWN, owning them is enough. Each is
    opened O_PATH|O_NOFOLLOW|O_DIRECTORY and changed through its descriptor (/proc/self/fd),
    so a directory the worker swapped for a symlink is never followed.
    """
    uid, gid = os.geteuid(), os.getegid()
    here = f"/proc/self/fd/{fd}"
    try:
        if os.fstat(fd).st_uid != uid:
            os.chown(here, uid, gid)
        listing = os.open(here, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return  # rmtree does what it can
    try:
        for name in os.listdir(listing):
            try:
                child = os.open(
                    name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=listing
                )
            except OSError:
                continue  # a file or a symlink: unlinked as it is
            try:
                _reclaim(child)
            finally:
                os.close(child)
    finally:
        os.close(listing)


class PrivateFiles:
    """The private-file tree of this launcher: one directory per process."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.root = os.path.join(base, str(os.getpid()))
        self._lock_fd: int | None = None
        self._count = 0

    def prepare(self) -> None:
        """Create this launcher's tree and hold its lock (first use only).

        Called at launch when files will be needed, so a base directory that cannot be used
        is reported there, clearly (PermissionProblem, OperationFailed), not at a spawn.
        """
        if self._lock_fd is not None:
            return
        import fcntl

        try:
            _private_directory(self.base)
            if os.path.lexists(self.root):  # a dead launcher that had our pid
                _remove_tree(self.root)
            os.mkdir(self.root, 0o700)
            fd = os.open(
                os.path.join(self.root, LOCK), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
            )
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except PermissionProblem:
            raise
        except OSError as error:
            raise OperationFailed(
                f"cannot create private files under {self.base}: {error.strerror}"
            ) from None
        self._lock_fd = fd
        import atexit

        atexit.register(self.close)

    def create(self, files: Mapping[str, bytes], owner: Owner | None = None) -> str:
        """A new private directory holding `files`; returns its path.

        OSError as a spawn raises it (ENOSPC on a full tmpfs...); nothing is left behind.
        """
        self.prepare()
        self._count += 1
        path = os.path.join(self.root, str(self._count))
        try:
            os.mkdir(path, 0o700)
            if owner is not None:
                # The worker's user must pass through the launcher's directories to reach
                # its own: search permission only, no listing.
                os.chmod(self.base, 0o711)
                os.chmod(self.root, 0o711)
            for name, content in files.items():
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                fd = os.open(os.path.join(path, name), flags, 0o600)
                try:
                    if owner is not None:
                        os.fchown(fd, *owner)
                    view = memoryview(content)
                    while view:
                        view = view[os.write(fd, view) :]
                finally:
                    os.close(fd)
            if owner is not None:
                # Last: once the directory is theirs, writing into it would need
                # CAP_DAC_OVERRIDE, which a launcher with only the capabilities it needs lacks.
                os.chown(path, *owner)
        except OSError:
            _remove_tree(path)
            raise
        return path

    def close(self) -> None:
        """Remove this launcher's whole tree and release its lock (at exit)."""
        if self._lock_fd is None:
            return
        _remove_tree(self.root)
        os.close(self._lock_fd)
        self._lock_fd = None


def remove(path: str | None) -> None:
    """Remove one process's private directory (it has been reaped); None: nothing to do."""
    if path is not None:
        _remove_tree(path)


def sweep_stale(base: str | None = None) -> list[str]:
    """Remove the trees of launchers that are gone; returns what was removed.

    Cheap when there is nothing to do (one failed listdir), so every launcher calls it.
    """
    import fcntl

    base = base_directory() if base is None else base
    try:
        entries = os.listdir(base)
    except OSError:
        return []
    removed = []
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        tree = os.path.join(base, entry)
        try:
            fd = os.open(os.path.join(tree, LOCK), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            if _alive(int(entry)):
                continue  # still creating its tree, or a reused pid: the next sweep decides
            _remove_tree(tree)
            removed.append(tree)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # held: its launcher is alive
        _remove_tree(tree)
        os.close(fd)
        removed.append(tree)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_launcher: PrivateFiles | None = None


def for_this_launcher() -> PrivateFiles:
    """The tree of the running launcher, created on first use."""
    global _launcher
    if _launcher is None or _launcher.root != os.path.join(_launcher.base, str(os.getpid())):
        _launcher = PrivateFiles(base_directory())
    return _launcher

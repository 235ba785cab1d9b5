"""Where control sockets live: a directory private to the launcher's user, short paths.

Decisions (issue #15):
- The directory must belong to the launcher's user and be writable by nobody else. In a
  shared directory (README's Docker example once used /tmp) another user could bind
  `NAME.sock` first: the launcher ran without its control socket, and `agent-run status`
  printed the squatter's answer. A private directory leaves no one else a way to create a
  name in it, so the launcher refuses (exit 77) to use one that is not; it creates its own
  with mode 0700. (The client does not rely on this alone: it checks who serves the socket,
  see `control.py`.)
- A directory the operator names (AGENT_RUN_RUNTIME_DIR) is used as named, never swapped
  for another: `status`, `reload` and `sessions` — root's included — find the launcher
  only because they read the same variable. So one left by another user (a second uid in
  the same container, a host where two users copied the image's `/tmp/agent-run`) is
  refused, one line and 77, and the line suggests a per-user name (`<dir>-<uid>`, as tmux
  uses `/tmp/tmux-UID`). The default, `<store>/run`, is per store and so per user already.
- A launcher's name follows the set-name rule (letters, digits, `_.-`, at most 64): it
  becomes a file name, and must not climb out of the directory.
- Linux keeps a Unix socket's path in `sun_path`, 108 bytes with the terminating NUL, so a
  longer path can be neither bound nor connected to. It is refused up front, naming the
  limit, instead of failing deep inside bind or connect.

Light on purpose: the launcher checks all this before its first worker is spawned, so this
module imports neither `socket` nor `pathlib`.
"""

from __future__ import annotations

import contextlib
import os
import stat

from launcher.errors import ConfigError, InvalidInput, PermissionProblem
from launcher.store.names import SET_NAME

SUFFIX = ".sock"
MAX_SOCKET_PATH = 107  # bytes: sizeof(sun_path) on Linux, less the terminating NUL


def check_name(name: str) -> None:
    """A launcher name (`--name`) is a set name: it becomes `NAME.sock`."""
    if not SET_NAME.fullmatch(name):
        shown = name if len(name) <= 70 else name[:64] + "..."
        raise InvalidInput(
            f"launcher name {shown!r} is invalid ({len(name)} characters): 1-64 characters, "
            "letters, digits, '_', '.', '-', starting with a letter or digit"
        )


def socket_file(run_dir: str, name: str) -> str:
    """The control socket's path for launcher `name`; refused if AF_UNIX cannot hold it."""
    check_name(name)
    path = os.path.join(run_dir, name + SUFFIX)
    size = len(os.fsencode(path))
    if size > MAX_SOCKET_PATH:
        raise ConfigError(
            f"control socket path {path} is {size} bytes, more than the {MAX_SOCKET_PATH} a Unix "
            "socket path may have; choose a shorter --name, or set AGENT_RUN_RUNTIME_DIR to a "
            "shorter directory"
        )
    return path


def check_private(run_dir: str) -> os.stat_result:
    """Refuse (exit 77) a directory that another user owns or may write into."""
    info = os.stat(run_dir)
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"runtime directory {run_dir} is not a directory")
    uid = os.geteuid()
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != uid:
        raise PermissionProblem(
            f"runtime directory {run_dir} belongs to uid {info.st_uid}, not to this launcher's "
            f"user (uid {uid}); control sockets need a directory of your own: set "
            f"AGENT_RUN_RUNTIME_DIR to one, e.g. {run_dir.rstrip('/')}-{uid} (agent-run "
            "creates it with mode 0700)"
        )
    if mode & 0o022:
        raise PermissionProblem(
            f"runtime directory {run_dir} is writable by other users (mode {mode:04o}), who "
            "could take a control socket's name; use a private one: `chmod 700 "
            f"{run_dir}`, or set AGENT_RUN_RUNTIME_DIR to another directory"
        )
    return info


def make_private(run_dir: str) -> None:
    """Create the directory (0700) if needed, then `check_private` it.

    OSError when it cannot be created (a read-only store mount, say): the launcher then runs
    without a control socket and says so, as it always did.
    """
    # FileExistsError: it exists but is not a directory; check_private says so.
    with contextlib.suppress(FileExistsError):
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
    check_private(run_dir)

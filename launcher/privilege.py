"""Least privilege: the supervisor holds the master key, its workers do not get at it.

An agent runs code it did not write (tool calls, plugins), so a worker is treated as
untrusted. Two layers, as ssh-agent and sshd do:

- `protect_launcher()`, first thing in `agent-run run`: the launcher becomes non-dumpable
  (prctl PR_SET_DUMPABLE 0), so a process of the same uid can no longer read its
  `/proc/<pid>/environ` or `/proc/<pid>/mem`, nor ptrace it; and AGENT_RUN_MASTER_KEY leaves
  its environment: out of `os.environ` (nothing spawned later inherits it) and overwritten
  in the copy the kernel shows as `/proc/<pid>/environ` (root can read that file even of a
  non-dumpable process).
- `--user USER[:GROUP]` (`set_worker_user`): a launcher that runs as root starts every
  worker as that user, its supplementary groups cleared, so the store, the key file and
  the control socket (0700/0600, the launcher's) are out of its reach (nginx, sshd and
  postgres split their privileged parent from their workers the same way).

Both are cheap (one prctl, and a /proc read only when the key is in the environment), and
ctypes is already loaded on the launch path for the parent-death signal.
"""

from __future__ import annotations

import contextlib
import os

from launcher.errors import PermissionProblem, UsageError

KEY_VARIABLE = "AGENT_RUN_MASTER_KEY"
# All a root launcher needs of root with --user (measured: tests/test_deploy_recipes.py runs
# it with only these): start workers as the user (SETUID, SETGID), signal them (KILL), and
# give them their terminal, notify socket and private files (CHOWN). The image, the unit
# and the manifest grant exactly these.
CAPABILITIES = ("CHOWN", "KILL", "SETGID", "SETUID")
PR_SET_DUMPABLE = 4

_held: dict[str, str] = {}


def protect_launcher() -> None:
    """Non-dumpable, and the master key out of the environment (kept for `key_environ`)."""
    from launcher.process.worker import libc_prctl

    with contextlib.suppress(OSError, AttributeError):  # not Linux: nothing to protect
        libc_prctl()(PR_SET_DUMPABLE, 0, 0, 0, 0)
    value = os.environ.pop(KEY_VARIABLE, None)
    if value is None:
        return
    _held[KEY_VARIABLE] = value
    try:  # os.environ's source: the key must not stay in this process's mapping either
        import posix

        posix.environ.pop(KEY_VARIABLE.encode(), None)
    except (ImportError, AttributeError):
        pass
    _scrub_initial_environment(KEY_VARIABLE)


def key_environ() -> dict[str, str]:
    """The environment the master key is looked up in: ours, plus the key we removed."""
    return {**os.environ, **_held}


def worker_identity() -> dict[str, str]:
    """HOME, USER and LOGNAME of the `--user` workers run as, from the user database; empty
    without --user, or for a bare uid the database does not know.

    login, su and systemd's User= set them the same way: a worker must not inherit the
    launcher's home (/root in the image), which it can neither write nor should use.
    Env files and secrets still override them (later layers win).
    """
    import pwd

    from launcher.process.worker import worker_user

    user = worker_user()
    if user is None:
        return {}
    try:
        entry = pwd.getpwuid(user[0])
    except KeyError:
        return {}
    return {"HOME": entry.pw_dir, "USER": entry.pw_name, "LOGNAME": entry.pw_name}


def _scrub_initial_environment(name: str) -> None:
    """Overwrite NAME's value in the strings the kernel shows as /proc/self/environ.

    That file reads the process's initial environment block (env_start..env_end, fields
    50-51 of /proc/self/stat), not libc's current `environ`: unsetenv alone leaves it there.
    """
    try:
        with open("/proc/self/stat", "rb") as stream:
            fields = stream.read().rpartition(b")")[2].split()
        start, end = int(fields[47]), int(fields[48])  # fields 50, 51 (field 3 at index 0)
        with open("/proc/self/environ", "rb") as stream:
            block = stream.read()
    except (OSError, IndexError, ValueError):
        return
    prefix = name.encode() + b"="
    offset = 0
    import ctypes

    for entry in block.split(b"\0"):
        if entry.startswith(prefix) and offset + len(entry) <= end - start:
            ctypes.memset(start + offset + len(prefix), ord("x"), len(entry) - len(prefix))
        offset += len(entry) + 1


def parse_user(spec: str, source: str = "--user") -> tuple[int, int] | None:
    """`USER[:GROUP]` (names or numbers) -> (uid, gid); the group defaults to the user's.

    None when the launcher already runs as that user (and group, when one is named): there
    is nothing to drop, and the image's AGENT_RUN_USER=agent must not stop a container that
    `docker run --user 10001` or a pod's runAsUser started as `agent` already.
    """
    import grp
    import pwd

    user, _, group = spec.partition(":")
    try:
        entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        uid, gid = entry.pw_uid, entry.pw_gid
    except KeyError:
        if not user.isdigit():
            raise UsageError(f"{source}: no user named {user!r} on this host") from None
        uid, gid = int(user), int(user)  # a bare number without a passwd entry: containers
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise UsageError(f"{source}: no group named {group!r} on this host") from None
    if os.geteuid() == uid != 0 and (not group or os.getegid() == gid):
        return None
    if os.geteuid() != 0:
        raise PermissionProblem(
            f"{source} {spec}: only a launcher running as root can start workers as another "
            f"user (this one runs as uid {os.geteuid()}); run agent-run as root, or run "
            "workers as yourself: drop --user, or set AGENT_RUN_USER= (empty) to unset it"
        )
    return uid, gid

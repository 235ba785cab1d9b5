"""Containment that outlives the launcher: when it dies by any means, every descendant goes too.

A worker dies with the launcher by its parent-death signal, but that signal is per process:
after a `kill -9`, an OOM kill or a crash of the launcher, the workers' own children,
grandchildren and double-forked daemons kept running (#11, item 7). Something that does not
die with the launcher has to end them. The strongest means the host allows, in this order:

1. `pid1`: the launcher is PID 1 of its PID namespace (a container's init). When it dies the
   kernel SIGKILLs every process of the namespace. Nothing to set up.
2. `cgroup`: a writable cgroup v2 directory (root; a systemd unit with `Delegate=yes`; the
   delegated subtree of a desktop session). The launcher moves itself and its descendants
   into a fresh child cgroup `agent-run-<pid>`, so everything it ever starts is born there,
   and a guardian writes `1` to that cgroup's `cgroup.kill` once the launcher is gone: the
   kernel kills every member at once. A daemon cannot leave a cgroup without write access to
   another one, so it holds for everything short of a privileged escape.
3. `guardian`: otherwise (an unprivileged container, a CI runner's user), the guardian alone:
   it SIGKILLs the process group of every worker, and every process whose environment carries
   this launcher's mark (`AGENT_RUN_INSTANCE`, set by `fork_exec`), until a scan of /proc
   finds none. Best effort: a descendant that leaves its worker's process group *and* clears
   its environment before exec escapes it.

`AGENT_RUN_CONTAINMENT=auto|cgroup|guardian|off` overrides the choice (`auto` by default).

The guardian is a fork of the launcher (no exec: no interpreter start-up beside the agent's)
in its own session, so a terminal's Ctrl-C or a signal to the launcher's group never reaches
it. It blocks reading a pipe whose write end only the launcher holds (close-on-exec, so no
worker inherits it): end of file means the launcher's process has ended, whatever killed it,
normal exit included; either way, whatever is left of its descendants is killed. The pipe is
never closed by hand: in `cgroup` mode the launcher is itself a member until its very end
(the kernel closes the pipe after the exit status is fixed, so the kill cannot change it).
The launcher also sends the guardian each new worker's pid (its process group is killed too).

Decided against: a PID namespace of our own (unshare(CLONE_NEWPID), root or a user
namespace). Every process in it would see other pids than the launcher reports (`status`,
`sessions`, logs), `/proc/<own pid>` would name another process unless /proc were remounted
in a mount namespace too (psutil-based memory watchdogs, as in livekit-agents, would read the
wrong process), and orphans would go to the namespace's init instead of our reaper. Measured
here (kernel 6.18): moving the launcher into a cgroup costs 9-27 ms (the first migration
waits for an RCU grace period), so it happens *after* the first workers are spawned, off the
launch critical path; their early descendants are swept in after it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import struct
import time
import warnings
from collections.abc import Callable, Iterable

from launcher.process import reaper
from launcher.process import worker as process

_PID = struct.Struct("=i")
CGROUP_ROOT_HINT = "/sys/fs/cgroup"
MODES = ("auto", "cgroup", "guardian", "off")
SCAN_ROUNDS = 50  # a scan finds nothing new long before this, unless something forks madly


class Containment:
    """The containment in force: its mode, and the pipe to its guardian (if any)."""

    def __init__(self, mode: str, detail: str = "", pipe: int | None = None) -> None:
        self.mode = mode
        self.detail = detail
        self.guardian_pid: int | None = None
        self._pipe = pipe

    def __repr__(self) -> str:
        return f"Containment(mode={self.mode!r})"

    def track(self, pid: int) -> None:
        """A new worker: its process group is killed with the launcher's descendants."""
        self._tell(pid)

    def forget(self, pid: int) -> None:
        """A worker has been reaped (and its group killed): its pid may now be reused by an
        unrelated process, whose group the guardian must never kill."""
        self._tell(-pid)

    def _tell(self, message: int) -> None:
        if self._pipe is None:
            return
        try:
            os.write(self._pipe, _PID.pack(message))
        except OSError:  # the guardian is gone: nothing more we can do from here
            self._pipe = None


_current = Containment("off", "not set up")


def current() -> Containment:
    return _current


def contain(mode: str | None = None) -> Containment:
    """Set up the strongest containment this host allows (see the module docstring).

    Call it on the main thread once the first workers are spawned (they and their
    descendants are swept in), before any other is. Never raises: without any means it
    returns mode "off" with the reason in `detail`.
    """
    global _current
    wanted = mode or os.environ.get("AGENT_RUN_CONTAINMENT", "auto") or "auto"
    if wanted not in MODES:
        wanted = "auto"
    if wanted == "off":
        _current = Containment("off", "AGENT_RUN_CONTAINMENT=off")
    elif wanted == "auto" and os.getpid() == 1:
        _current = Containment("pid1", "the launcher is its PID namespace's init")
    else:
        cgroup = _new_cgroup() if wanted in ("auto", "cgroup") else None
        if isinstance(cgroup, str) or wanted == "guardian":
            _current = _start_guardian(cgroup if isinstance(cgroup, str) else None)
        else:
            reason = cgroup[1] if cgroup is not None else ""
            _current = _start_guardian(None, reason)
    return _current


# --- cgroup v2 -----------------------------------------------------------------------------


def cgroup2_mount() -> str | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or .../unified on hybrid)."""
    try:
        with open("/proc/self/mountinfo") as mounts:
            for line in mounts:
                fields = line.split()
                dash = fields.index("-")
                if fields[dash + 1] == "cgroup2":
                    return fields[4]
    except (OSError, ValueError, IndexError):
        pass
    return None


def _own_cgroup() -> str | None:
    try:
        with open("/proc/self/cgroup") as groups:
            for line in groups:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


def _new_cgroup() -> str | tuple[None, str]:
    """A fresh child cgroup of ours with `cgroup.kill`, or (None, why not)."""
    mount, own = cgroup2_mount(), _own_cgroup()
    if mount is None or own is None:
        return None, "no cgroup v2 hierarchy"
    parent = os.path.join(mount, own.lstrip("/"))
    if not os.access(os.path.join(parent, "cgroup.procs"), os.W_OK):
        return None, f"cgroup {own} is not writable (not delegated)"
    path = os.path.join(parent, f"agent-run-{os.getpid()}")
    try:
        os.mkdir(path)
    except FileExistsError:  # a launcher with our pid died before its guardian removed it
        pass
    except OSError as error:
        return None, f"cannot create a cgroup under {own}: {error.strerror}"
    if not os.path.exists(os.path.join(path, "cgroup.kill")):  # Linux < 5.14
        _remove_cgroup(path)
        return None, "the kernel has no cgroup.kill (Linux < 5.14)"
    return path


def _move(cgroup: str, pids: Iterable[int]) -> None:
    try:
        procs = os.open(os.path.join(cgroup, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        for pid in pids:
            with contextlib.suppress(OSError):  # exited meanwhile: nothing to move
                os.write(procs, str(pid).encode())
    finally:
        os.close(procs)


def _sweep_into(cgroup: str, exclude: int) -> None:
    """Move the launcher, then every descendant spawned before it moved, into `cgroup`.

    Whatever forks after its parent moved is born inside; a pass that finds no process it
    has not moved yet ends the sweep."""
    me = os.getpid()
    _move(cgroup, [me])
    moved = {me}
    for _ in range(SCAN_ROUNDS):
        found = [pid for pid in descendants(me) if pid not in moved and pid != exclude]
        if not found:
            return
        _move(cgroup, found)
        moved.update(found)


def _remove_cgroup(path: str) -> None:
    with contextlib.suppress(OSError):
        os.rmdir(path)


# --- /proc ---------------------------------------------------------------------------------


def process_stat(pid: str) -> tuple[int, int, int] | None:
    """(ppid, pgid, sid) of a running process; None if it is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        if fields[0] in (b"Z", b"X"):
            return None
        return int(fields[1]), int(fields[2]), int(fields[3])
    except (OSError, IndexError, ValueError):
        return None


def _processes() -> dict[int, tuple[int, int, int]]:
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (stat := process_stat(name)) is not None:
            found[int(name)] = stat
    return found


def _children(pid: int) -> list[int]:
    """Children of `pid`, from /proc/PID/task/*/children (empty if it is gone)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as listing:
                found.extend(int(child) for child in listing.read().split())
        except OSError:
            pass
    return found


def descendants(root: int) -> list[int]:
    """Every descendant of `root`: walked down from it (a few small files), or, on a kernel
    without CONFIG_PROC_CHILDREN, from a full scan of /proc (tens of ms on a busy host)."""
    children_of: Callable[[int], list[int]] = _children
    if not os.path.exists(f"/proc/{root}/task/{root}/children"):
        table: dict[int, list[int]] = {}
        for pid, (ppid, _pgid, _sid) in _processes().items():
            table.setdefault(ppid, []).append(pid)

        def children_of(pid: int) -> list[int]:
            return table.get(pid, [])

    result, todo = [], [root]
    while todo:
        for child in children_of(todo.pop()):
            result.append(child)
            todo.append(child)
    return result


def _marked(pid: int, mark: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as environ:
            return mark in environ.read()
    except OSError:  # gone, or another user's process we may not read
        return False


# --- the guardian --------------------------------------------------------------------------


def _start_guardian(cgroup: str | None, reason: str = "") -> Containment:
    # Workers spawned before us (registered with the reaper, so a `forget` follows their
    # exit); other descendants are found by the cgroup or the mark, never by a bare pid.
    workers = [pid for pid in _children(os.getpid()) if reaper.registered(pid)]
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        with warnings.catch_warnings():
            # Python >= 3.12 warns about fork() with threads (the relay threads): the
            # guardian touches no lock they could hold (no logging, no relay, no masker).
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
    except OSError as error:
        os.close(read_end)
        os.close(write_end)
        if cgroup is not None:
            _remove_cgroup(cgroup)
        return Containment("off", f"cannot start the guardian: {error.strerror}")
    if pid == 0:
        try:
            os.close(write_end)
            _guard(read_end, cgroup, workers, process.instance_mark().encode())
        finally:
            os._exit(0)
    os.close(read_end)
    if cgroup is not None:
        _sweep_into(cgroup, exclude=pid)
        containment = Containment("cgroup", cgroup, write_end)
    else:
        containment = Containment("guardian", reason, write_end)
    containment.guardian_pid = pid
    reaper.outlives_us(pid)
    process.spawn_hooks.append(containment.track)
    reaper.exit_hooks.append(containment.forget)
    return containment


def _guard(pipe: int, cgroup: str | None, workers: list[int], mark: bytes) -> None:
    """The guardian's life: wait for the launcher to go, then kill what it leaves behind."""
    os.setsid()  # no terminal signals, not in the launcher's process group
    with contextlib.suppress(ValueError):
        signal.set_wakeup_fd(-1)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    for sig in (signal.SIGUSR1, signal.SIGUSR2, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)  # hold none of the launcher's pipes or terminals open
    os.closerange(3, pipe)
    os.closerange(pipe + 1, 65536)
    try:  # the OOM killer should take anything but the process that cleans up after it
        with open("/proc/self/oom_score_adj", "w") as adjust:
            adjust.write("-1000")
    except OSError:
        pass
    groups = set(workers)
    buffer = b""
    while True:
        try:
            data = os.read(pipe, 4096)
        except InterruptedError:
            continue
        except OSError:
            data = b""
        if not data:
            break
        buffer += data
        count = len(buffer) // _PID.size
        for (pid,) in _PID.iter_unpack(buffer[: count * _PID.size]):
            if pid > 0:
                groups.add(pid)
            else:  # reaped: from now on the number may belong to someone else
                groups.discard(-pid)
        buffer = buffer[count * _PID.size :]
    _kill_all(cgroup, groups, mark)


def _kill_all(cgroup: str | None, groups: set[int], mark: bytes) -> None:
    """SIGKILL every descendant of the launcher that is left; remove our cgroup."""
    me = os.getpid()
    if cgroup is not None:
        try:
            with open(os.path.join(cgroup, "cgroup.kill"), "w") as kill:
                kill.write("1")
        except OSError:
            pass
    for _ in range(SCAN_ROUNDS if cgroup is None else 0):  # cgroup.kill reached every member
        # Only groups of workers not yet reaped: their numbers cannot have been reused
        # (a pid stays taken while it names a live process's group).
        for group in groups:
            with contextlib.suppress(OSError):
                os.killpg(group, signal.SIGKILL)
        victims = 0
        for pid, (_ppid, pgid, _sid) in _processes().items():
            if pid != me and (pgid in groups or _marked(pid, mark)):
                try:
                    os.kill(pid, signal.SIGKILL)
                    victims += 1
                except OSError:
                    pass
        if not victims:
            break
        time.sleep(0.01)  # let the killed go, then look again for what they forked
    if cgroup is not None:
        for _ in range(500):  # rmdir fails while killed members are still exiting
            try:
                os.rmdir(cgroup)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)

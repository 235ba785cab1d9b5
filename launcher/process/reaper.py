"""The one reaper: the launcher's only `waitpid(-1)`, and the registry of whose pid is whose.

Worker mode and session mode alike register every process they spawn here, and call
`reap()` when SIGCHLD arrives; each exit status goes to the callback registered for that
pid, exactly once. Anything else that exits is an orphan re-parented to us (we are a
subreaper, or PID 1): it is collected so no zombie stays, and nobody else is told.

Why one registry and not a `waitpid(pid)` per child: a `waitpid(-1)` anywhere else would
take statuses that belong to a worker, and a per-child wait cannot collect orphans. Why
registration happens in the spawning code, on the main thread, right after the fork:
`reap()` also runs on the main thread (from the event loop), so no exit can be collected
between a fork and its registration, and no status is ever dropped as an orphan's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

OnExit = Callable[[int], None]  # receives the raw wait status (see `exit_code`)

_owners: dict[int, OnExit] = {}

# Told the pid of every registered process once its owner has handled its exit (the
# containment guardian then forgets its process group: the pid may be reused from now on).
exit_hooks: list[Callable[[int], None]] = []


def register(pid: int, on_exit: OnExit) -> None:
    """`on_exit(status)` is called once, from `reap()`, when `pid` exits.

    Registering a pid again replaces its callback (a pool adopting a process spawned before
    its event loop existed)."""
    _owners[pid] = on_exit


def forget(pid: int) -> None:
    """Stop telling anyone about `pid` (its exit is still collected, as an orphan's)."""
    _owners.pop(pid, None)


def registered(pid: int) -> bool:
    return pid in _owners


def exited_children() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of every child that has exited, without blocking.

    The only `waitpid(-1)` of the launcher. Callers other than `reap()` (a stand-alone
    spawner in the tests) must not mix it with `reap()` in one process."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def reap() -> int:
    """Collect every exited child and dispatch each status to its owner; returns how many
    registered processes exited. Call it on SIGCHLD (and once when the loop starts)."""
    owned = 0
    for pid, status in exited_children():
        on_exit = _owners.pop(pid, None)
        if on_exit is not None:
            owned += 1
            on_exit(status)
            for hook in exit_hooks:
                hook(pid)
    return owned


def reap_remaining(timeout: float) -> None:
    """At exit: collect the last orphans (a killed worker's group) for up to `timeout` s.

    Without this the launcher could exit while its killed descendants are still zombies
    re-parented to it; they would then outlive it for a moment as init's children.
    """
    import time

    deadline = time.monotonic() + timeout
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return  # no child left at all
        if pid:
            on_exit = _owners.pop(pid, None)
            if on_exit is not None:
                on_exit(status)
                for hook in exit_hooks:
                    hook(pid)
        elif time.monotonic() >= deadline:
            return  # something still runs that is not ours to wait for
        elif _only_lifelong_children_left():
            return  # the containment guardian outlives us by design
        else:
            time.sleep(0.005)


_lifelong: set[int] = set()


def outlives_us(pid: int) -> None:
    """`pid` is a child that ends only after the launcher (the containment guardian):
    `reap_remaining` does not wait for it."""
    _lifelong.add(pid)


def _only_lifelong_children_left() -> bool:
    me = os.getpid()
    children: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{me}/task"):
            with open(f"/proc/{me}/task/{task}/children") as listing:
                children.update(int(pid) for pid in listing.read().split())
    except OSError:  # no /proc, or a kernel without CONFIG_PROC_CHILDREN: wait it out
        return False
    return children <= _lifelong


def exit_code(status: int) -> int:
    """A waitpid status as a shell would report it: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 1

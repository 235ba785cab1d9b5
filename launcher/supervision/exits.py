"""Why a process ended: one classification for logs, status, metrics and rollout results.

"Exited with code 137" says nothing an operator can act on. The reasons, first match wins:

- `drain-deadline`, `watchdog`, `forced`: we SIGKILLed it (the drain ran out, its watchdog went
  silent, a second TERM);
- `readiness-timeout`: it missed `--ready-timeout` and was stopped;
- `oom-killed`: the kernel's OOM killer ended it. Evidence, in this order: the `oom_kill`
  counter of its memory cgroup went up since we last looked (cgroup v2 `memory.events`, v1
  `memory.oom_control`), else the kernel's own record of the kill (`/dev/kmsg`, "Killed
  process PID") when we may read it. A SIGKILL with neither is reported as a `signal`;
- `failed-before-ready`: it exited (or died of a signal) before it was ever ready and before
  we asked it to stop: an import error, a bad argument; its last lines (masked) go with it;
- `clean`: code 0, or death by the stop signal we sent it;
- `signal` (any other signal, named) and `crash` (any other code).

`ExitLedger` is the engine's memory of the facts that only it knows (ready once, stopped by
us, killed why) until the reaper reports the status; `classify` is the pure rule above.
"""

from __future__ import annotations

import enum
import os
import signal
import time
from collections import Counter
from typing import NamedTuple

from launcher.ops.status import ExitRecord

RECENT = 20  # exits kept for `status`
CGROUP1_MEMORY = "/sys/fs/cgroup/memory"  # the v1 memory controller (hybrid hosts)


class ExitKind(enum.Enum):
    CLEAN = "clean"
    CRASH = "crash"
    SIGNAL = "signal"
    OOM_KILLED = "oom-killed"
    FAILED_BEFORE_READY = "failed-before-ready"
    READINESS_TIMEOUT = "readiness-timeout"
    DRAIN_DEADLINE = "drain-deadline"
    WATCHDOG = "watchdog"
    FORCED = "forced"


class ExitReason(NamedTuple):
    kind: ExitKind
    code: int | None = None  # the exit code, when it exited
    signal: str | None = None  # the signal's name, when it died of one
    evidence: str | None = None  # for oom-killed: where we saw it

    @property
    def text(self) -> str:
        """One short phrase: `crash (code 3)`, `signal SIGSEGV`, `oom-killed (cgroup)`."""
        kind = self.kind.value
        if self.kind is ExitKind.OOM_KILLED:
            return f"{kind} ({self.evidence})" if self.evidence else kind
        if self.kind is ExitKind.SIGNAL:
            return f"signal {self.signal}"
        if self.kind in (ExitKind.CRASH, ExitKind.FAILED_BEFORE_READY, ExitKind.CLEAN):
            how = f"code {self.code}" if self.code is not None else self.signal
            return kind if how in (None, "code 0") else f"{kind} ({how})"
        return kind


_KILLED_FOR = {
    "drain deadline": ExitKind.DRAIN_DEADLINE,
    "watchdog": ExitKind.WATCHDOG,
    "forced": ExitKind.FORCED,
}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify(
    status: int,
    *,
    ready: bool,
    stop_sent: bool,
    stop_signal: int,
    killed_for: str | None = None,
    not_ready: bool = False,
    oom: str | None = None,
) -> ExitReason:
    """The reason for a waitpid `status`, given what the engine knew of the process."""
    signalled = os.WIFSIGNALED(status)
    number = os.WTERMSIG(status) if signalled else None
    code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
    name = _signal_name(number) if number is not None else None
    if killed_for in _KILLED_FOR:
        return ExitReason(_KILLED_FOR[killed_for], code, name)
    if not_ready:
        return ExitReason(ExitKind.READINESS_TIMEOUT, code, name)
    if number == signal.SIGKILL and oom is not None:
        return ExitReason(ExitKind.OOM_KILLED, None, name, oom)
    if not ready and not stop_sent and (number is not None or code != 0):
        return ExitReason(ExitKind.FAILED_BEFORE_READY, code, name)
    if number is not None:
        if stop_sent and number == stop_signal:
            return ExitReason(ExitKind.CLEAN, None, name)
        return ExitReason(ExitKind.SIGNAL, None, name)
    if code == 0:
        return ExitReason(ExitKind.CLEAN, 0)
    return ExitReason(ExitKind.CRASH, code)


# --- OOM evidence -----------------------------------------------------------------------------


# Asked at every spawn (the child's cgroup and ours), so what cannot change is kept: the
# counter files a cgroup membership names (the cgroup v2 mount point does not move under a
# running launcher), and the files seen to exist (a missing one is looked for again; one
# removed since is read as "no count", as a file that vanished after the check always was).
_CANDIDATES: dict[bytes, tuple[str, ...]] = {}
_EXISTING: set[str] = set()
_MOUNT: list[str | None] = []  # [the cgroup v2 mount point], once read


def oom_counters(pid: int | str) -> list[str]:
    """The files holding the `oom_kill` count of the memory cgroup(s) `pid` is in."""
    try:
        membership = _read_small(f"/proc/{pid}/cgroup")
    except OSError:
        return []
    candidates = _CANDIDATES.get(membership)
    if candidates is None:
        if len(_CANDIDATES) >= 64:  # processes that moved themselves: keep the memo small
            _CANDIDATES.clear()
        candidates = _CANDIDATES[membership] = _candidates(membership)
    return [path for path in candidates if path in _EXISTING or _exists(path)]


def _read_small(path: str) -> bytes:
    """A small file's bytes, with plain syscalls (no text-stream objects: once per spawn)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 4096):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _exists(path: str) -> bool:
    if os.path.exists(path):
        _EXISTING.add(path)
        return True
    return False


def _candidates(membership: bytes) -> tuple[str, ...]:
    """The counter files of the memory cgroup(s) in a /proc/PID/cgroup text."""
    found = []
    for line in os.fsdecode(membership).splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            if not _MOUNT:
                from launcher.process.containment import cgroup2_mount

                _MOUNT.append(cgroup2_mount())
            mount = _MOUNT[0]
            if mount is not None:
                found.append(os.path.join(mount, path.lstrip("/"), "memory.events"))
        elif "memory" in controllers.split(","):
            found.append(os.path.join(CGROUP1_MEMORY, path.lstrip("/"), "memory.oom_control"))
    return tuple(found)


def _oom_kills(path: str) -> int | None:
    try:
        with open(path) as stream:
            for line in stream:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def kernel_recorded_oom(pid: int, since: float) -> bool:
    """The kernel log says it killed `pid` for memory after `since` (CLOCK_MONOTONIC)."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    wanted = f"Killed process {pid} ".encode()
    try:
        while True:
            try:
                record = os.read(fd, 8192)
            except BlockingIOError:
                return False
            except OSError:  # EPIPE: the ring buffer moved under us; read on
                continue
            if not record:
                return False
            if wanted in record and b"out of memory" in record.lower():
                prefix = record.split(b";", 1)[0].split(b",")
                try:
                    at = int(prefix[2]) / 1e6
                except (IndexError, ValueError):
                    at = since
                if at >= since - 1.0:
                    return True
    finally:
        os.close(fd)


class ExitLedger:
    """What the engine knows about each live process's ending, and the tally of exits."""

    def __init__(self, stop_signal: int) -> None:
        self.stop_signal = stop_signal
        self._ready: set[int] = set()
        self._killed_for: dict[int, str] = {}
        self._not_ready: set[int] = set()
        self._counters: dict[int, list[str]] = {}
        self._seen: dict[str, int] = {}  # oom_kill count per counter file, as last read
        self.counts: Counter[str] = Counter()
        self.recent: list[ExitRecord] = []
        self.by_pid: dict[int, ExitReason] = {}  # kept for the last RECENT pids
        self._own = oom_counters("self")  # the launcher's own: its workers are born there
        for path in self._own:
            self._note(path)

    def _note(self, path: str) -> None:
        if path not in self._seen:
            count = _oom_kills(path)
            if count is not None:
                self._seen[path] = count

    def spawned(self, pid: int) -> None:
        """A new process: remember its memory cgroup's OOM count now (the baseline)."""
        # Its own cgroup (read now: a reaped process has no /proc entry), and ours, which
        # may have changed since (containment moves us after the first spawn).
        counters = [*oom_counters(pid), *self._own, *oom_counters("self")]
        self._counters[pid] = list(dict.fromkeys(counters))
        for path in self._counters[pid]:
            self._note(path)

    def ready(self, pid: int) -> None:
        self._ready.add(pid)

    def killed(self, pid: int, reason: str) -> None:
        self._killed_for.setdefault(pid, reason)

    def missed_readiness(self, pid: int) -> None:
        self._not_ready.add(pid)

    def provisional(self, pid: int) -> ExitKind | None:
        """What is already certain before the exit (a readiness miss, a kill)."""
        if pid in self._killed_for:
            return _KILLED_FOR.get(self._killed_for[pid])
        return ExitKind.READINESS_TIMEOUT if pid in self._not_ready else None

    def _oom_evidence(self, pid: int, started: float) -> str | None:
        grew = False
        for path in self._counters.get(pid, []):
            count = _oom_kills(path)
            if count is None:
                continue
            if count > self._seen.get(path, count):
                grew = True
            self._seen[path] = count
        if grew:
            return "cgroup"
        return "kernel log" if kernel_recorded_oom(pid, started) else None

    def exited(
        self,
        pid: int,
        status: int,
        *,
        stop_sent: bool,
        started: float,
        slot: int,
        version: int | None,
        last_lines: tuple[str, ...] = (),
    ) -> ExitRecord:
        """Classify the exit of `pid`, count it and forget what was kept for it."""
        killed_for = self._killed_for.pop(pid, None)
        oom = None
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and not killed_for:
            oom = self._oom_evidence(pid, started)
        reason = classify(
            status,
            ready=pid in self._ready,
            stop_sent=stop_sent,
            stop_signal=self.stop_signal,
            killed_for=killed_for,
            not_ready=pid in self._not_ready,
            oom=oom,
        )
        self._ready.discard(pid)
        self._not_ready.discard(pid)
        self._counters.pop(pid, None)
        lines = last_lines if reason.kind is ExitKind.FAILED_BEFORE_READY else ()
        record = ExitRecord(pid, slot, version, reason.kind.value, reason.text, time.time(), lines)
        self.counts[reason.kind.value] += 1
        self.recent = [*self.recent[-(RECENT - 1) :], record]
        self.by_pid[pid] = reason
        if len(self.by_pid) > RECENT:
            self.by_pid.pop(next(iter(self.by_pid)))
        return record

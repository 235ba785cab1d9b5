"""The status object: what the pool and the rollout report, as plain frozen data.

The supervisor publishes a new `PoolStatus` on every change; the control socket
(`agent-run status`), the health endpoints, metrics and systemd STATUS= lines only read it.
Nothing here holds a secret value.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import NamedTuple


class WorkerState(enum.Enum):
    STARTING = "starting"  # spawned, not ready yet
    READY = "ready"  # serving
    DRAINING = "draining"  # stop signal sent, waiting for it to exit
    BACKOFF = "backoff"  # exited, waiting to be restarted
    EXITED = "exited"  # exited, will not be restarted (policy or shutdown)
    GAVE_UP = "gave-up"  # crashed too often within --restart-window


class RolloutState(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"


# NamedTuples, not dataclasses: process.py imports this module on the launch critical path.
class WorkerStatus(NamedTuple):
    slot: int
    pid: int | None
    state: WorkerState
    version: int | None  # secrets version in this worker's environment
    started_at: float | None = None  # wall-clock seconds since the epoch
    restarts: int = 0
    last_exit: int | None = None  # exit code, or 128+N for a signal
    port: int | None = None  # AGENT_RUN_PORT of this process (--port-base)
    status_text: str | None = None  # the worker's own STATUS= line (sd_notify)
    exit_reason: str | None = None  # why its last process ended (supervision/exits.py)
    recycling: str | None = None  # over a recycling limit: "age", "memory" or "calls"
    memory: int | None = None  # bytes of its process group, last sampled (--max-worker-memory)


class RolloutStatus(NamedTuple):
    state: RolloutState = RolloutState.IDLE
    from_version: int | None = None
    to_version: int | None = None
    done: int = 0  # slots replaced so far
    total: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    reason: str | None = None  # why it aborted; never a value
    refused: int = 0  # store versions refused as older than one already served (#12)
    last_lines: tuple[str, ...] = ()  # what the failed replacement printed last, masked
    exit_reason: str | None = None  # why the failed replacement ended (supervision/exits.py)


class CensusEntry(NamedTuple):
    """How many processes hold one secrets version in one state (ops/census.py)."""

    version: int | None  # None: no secret set bound
    state: str  # starting, ready, draining, pending; warming, warm, retiring, session
    processes: int


class ExitRecord(NamedTuple):
    """One process's exit, as `status` lists it (supervision/exits.py classifies)."""

    pid: int
    slot: int  # -1: a session's process
    version: int | None
    reason: str  # the kind: clean, crash, signal, oom-killed, failed-before-ready, ...
    text: str  # the kind with its detail: "crash (code 3)", "signal SIGSEGV"
    at: float  # wall-clock seconds
    last_lines: tuple[str, ...] = ()  # failed-before-ready only: its last output, masked


class PoolStatus(NamedTuple):
    name: str  # --name, default the bound set
    pid: int  # the launcher's pid
    secret_set: str | None
    version: int | None  # the version new workers get
    workers: tuple[WorkerStatus, ...] = ()
    rollout: RolloutStatus = RolloutStatus()
    draining: tuple[WorkerStatus, ...] = ()  # retired workers still finishing their work
    exit_counts: tuple[tuple[str, int], ...] = ()  # exits since start, by reason
    recent_exits: tuple[ExitRecord, ...] = ()  # the last few, oldest first
    census: tuple[CensusEntry, ...] = ()  # processes by secrets version and state

    @property
    def ready_on_current(self) -> int:
        return sum(
            1 for w in self.workers if w.state is WorkerState.READY and w.version == self.version
        )


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "_fields"):
        return {name: _plain(getattr(value, name)) for name in value._fields}
    if isinstance(value, tuple):
        return [_plain(item) for item in value]
    return value


def as_dict(status: PoolStatus) -> dict[str, object]:
    """The status as JSON-ready data (enums as their values), for the control socket."""
    data = _plain(status)
    assert isinstance(data, dict)
    data["ready_on_current"] = status.ready_on_current
    data["exit_counts"] = dict(status.exit_counts)
    return data


Subscriber = Callable[[PoolStatus | None, PoolStatus], None]


class StatusBoard:
    """The latest `PoolStatus`, and who wants to hear when it changes.

    The supervisor publishes; metrics, systemd notifications and the control socket read.
    Subscribers run synchronously in the publisher's task, so they must be quick and never
    raise (a broken observer must not break supervision: errors are swallowed and counted).
    """

    def __init__(self, initial: PoolStatus | None = None) -> None:
        self._current = initial
        self._subscribers: list[Subscriber] = []
        self.observer_errors = 0

    @property
    def current(self) -> PoolStatus | None:
        return self._current

    def subscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.append(subscriber)

    def publish(self, status: PoolStatus) -> None:
        previous, self._current = self._current, status
        for subscriber in self._subscribers:
            try:
                subscriber(previous, status)
            except Exception:  # an observer must never stop the pool
                self.observer_errors += 1

"""What the launcher tells systemd about itself, when it runs as a `Type=notify` service.

It follows the published `PoolStatus`: `READY=1` once every slot first has a ready worker,
`RELOADING=1` (with `MONOTONIC_USEC`, as `Type=notify-reload` wants) when a rollout starts and
`READY=1` when it ends, a `STATUS=` line whenever the summary changes, `STOPPING=1` at
shutdown, and `WATCHDOG=1` at half of `WATCHDOG_USEC` while the event loop is healthy (a hung
loop stops the pings, and systemd restarts the service). Outside systemd every message is a
no-op, and sending never raises (sd_notify.notify).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping

from launcher.ops.status import PoolStatus, RolloutState, WorkerState

Send = Callable[[str], bool]


def _default_send(message: str) -> bool:
    from launcher.sd_notify import notify

    return notify(message)


def summary_line(status: PoolStatus) -> str:
    """The one-line STATUS= text: pool size, readiness, version, rollout."""
    ready = sum(1 for w in status.workers if w.state is WorkerState.READY)
    line = f"{ready}/{len(status.workers)} workers ready"
    if status.version is not None:
        line += f", secrets v{status.version}"
    rollout = status.rollout
    if rollout.state is RolloutState.RUNNING:
        line += f", rolling out v{rollout.to_version} ({rollout.done}/{rollout.total})"
    elif rollout.state is RolloutState.ABORTED:
        line += f", rollout to v{rollout.to_version} aborted: {rollout.reason}"
    elif rollout.reason:  # the last update was not even started (e.g. an older file, #12)
        line += f", update skipped: {rollout.reason}"
    if status.draining:
        line += f", {len(status.draining)} draining"
    return line


class SystemdNotifier:
    """A `StatusBoard` subscriber that speaks sd_notify for the launcher itself."""

    def __init__(self, send: Send = _default_send) -> None:
        self._send = send
        self._ready_sent = False
        self._last_line: str | None = None

    def observe(self, previous: PoolStatus | None, status: PoolStatus) -> None:
        messages: list[str] = []
        was = previous.rollout.state if previous else RolloutState.IDLE
        now = status.rollout.state
        all_ready = bool(status.workers) and all(
            w.state is WorkerState.READY for w in status.workers
        )
        if not self._ready_sent and all_ready:
            self._ready_sent = True
            messages.append("READY=1")
        if self._ready_sent and now is RolloutState.RUNNING and was is not RolloutState.RUNNING:
            messages.append("RELOADING=1")
            messages.append(f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        elif self._ready_sent and was is RolloutState.RUNNING and now is not RolloutState.RUNNING:
            messages.append("READY=1")
        line = summary_line(status)
        if line != self._last_line:
            self._last_line = line
            messages.append(f"STATUS={line}")
        if messages:
            self._send("\n".join(messages))

    def stopping(self) -> None:
        self._send("STOPPING=1\nSTATUS=draining workers")


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process
    return int(usec) / 2_000_000


async def ping_watchdog(interval: float, send: Send = _default_send) -> None:
    """Ping systemd's watchdog every `interval` seconds until cancelled."""
    import anyio

    while True:
        send("WATCHDOG=1")
        await anyio.sleep(interval)

"""The only module that installs signal handlers.

Handlers only record or enqueue; the supervisor's loop dispatches (gunicorn's rule). Two
phases:
- before the event loop exists (workers are spawned first, for start-up speed), plain
  handlers record TERM/INT/HUP/USR1/USR2 so that none is lost or kills us with its default
  action;
- inside the loop, anyio's signal receiver takes over, and the recorded ones are replayed.
SIGCHLD wakes the reaper.
"""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from types import FrameType

HANDLED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCHLD,
)

_early: list[int] = []


def _record(signum: int, frame: FrameType | None) -> None:
    _early.append(signum)


def install_early() -> None:
    """Record signals that arrive before the event loop runs."""
    for sig in HANDLED:
        if sig is not signal.SIGCHLD:
            signal.signal(sig, _record)


async def receive() -> AsyncIterator[int]:
    """Every handled signal, starting with those recorded before the loop started."""
    import anyio

    with anyio.open_signal_receiver(*HANDLED) as incoming:
        while _early:
            yield _early.pop(0)
        yield signal.SIGCHLD  # children may have exited before the receiver existed
        async for signum in incoming:
            yield int(signum)

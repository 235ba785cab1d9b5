"""Restart decisions as pure functions: backoff with jitter, crash loops, giving up.

No clock and no randomness are read here: callers pass `now` and a random number, so the
rules are tested exactly and the supervisor stays deterministic under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from launcher.config import RestartPolicy


@dataclass(frozen=True)
class Backoff:
    first: float = 0.1  # the first retry is fast: most crashes are one-offs
    factor: float = 2.0
    cap: float = 30.0
    jitter: float = 0.2  # +-20 %, so a pool that crashed together does not restart in step
    stable_after: float = 10.0  # a worker up this long resets the backoff


def restart_delay(
    consecutive_failures: int, random_unit: float, backoff: Backoff = Backoff()
) -> float:
    """Seconds to wait before restart number `consecutive_failures` (1-based)."""
    base = min(backoff.cap, backoff.first * backoff.factor ** max(0, consecutive_failures - 1))
    return max(0.0, base * (1 + backoff.jitter * (2 * random_unit - 1)))


def should_restart(policy: RestartPolicy, code: int) -> bool:
    if policy is RestartPolicy.ALWAYS:
        return True
    if policy is RestartPolicy.ON_FAILURE:
        return code != 0
    return False


def gives_up(
    restart_times: Sequence[float], now: float, max_restarts: int | None, window: float
) -> bool:
    """True when `max_restarts` restarts already happened within the last `window` seconds."""
    if max_restarts is None:
        return False
    recent = [t for t in restart_times if now - t <= window]
    return len(recent) >= max_restarts


def consecutive_after_exit(previous: int, uptime: float, backoff: Backoff = Backoff()) -> int:
    """Failure count after an exit: reset when the worker had stayed up long enough."""
    return 1 if uptime >= backoff.stable_after else previous + 1

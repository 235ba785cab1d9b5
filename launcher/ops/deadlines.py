"""Outer stop deadlines: is whoever stops agent-run patient enough for its drain?

agent-run gives a stopped worker `--drain-timeout` seconds (by default LiveKit's 3600 s drain
and its shutdown) before SIGKILLing it. Whatever stops agent-run has a deadline of its own,
after which it kills agent-run *and* its workers: Kubernetes' terminationGracePeriodSeconds
(30 s unless set), systemd's TimeoutStopSec (90 s unless set), `docker stop -t` (10 s unless
set). When that deadline is shorter, calls still in progress are cut at it. agent-run cannot
lengthen it, but says so at start-up, once, when it can see it:

- systemd: the unit's TimeoutStopUSec, read with `systemctl show` when agent-run runs as a
  service (INVOCATION_ID is set and /proc/self/cgroup names the unit);
- anything else: `--grace-period S` / AGENT_RUN_GRACE_PERIOD, given in the deployment next to
  the value it mirrors (Kubernetes has no way to tell a container its grace period).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from typing import NamedTuple

# agent-run itself needs a moment after the workers' SIGKILL: reaping, the last log lines.
EXIT_MARGIN_S = 10.0


class Deadline(NamedTuple):
    source: str  # where it was seen, as the user would set it
    seconds: float


def systemd_unit(environ: Mapping[str, str], cgroup_file: str = "/proc/self/cgroup") -> str | None:
    """The systemd service agent-run runs as, or None."""
    if not environ.get("INVOCATION_ID"):
        return None
    try:
        with open(cgroup_file) as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    for line in lines:
        for part in reversed(line.rsplit(":", 1)[-1].split("/")):
            if part.endswith(".service"):
                return part
    return None


def parse_usec(text: str) -> float | None:
    """systemctl's TimeoutStopUSec ("1min 30s", "10min", "infinity", "500ms") in seconds."""
    text = text.strip()
    if not text or text == "infinity":
        return None
    units = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
    total = 0.0
    for word in text.split():
        number = word.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = word[len(number) :] or "s"
        if not number or unit not in units:
            return None
        total += float(number) * units[unit]
    return total


async def systemd_deadline(environ: Mapping[str, str]) -> Deadline | None:
    unit = systemd_unit(environ)
    systemctl = shutil.which("systemctl")
    if unit is None or systemctl is None:
        return None
    import anyio

    try:
        with anyio.fail_after(5):
            result = await anyio.run_process(
                [systemctl, "show", "--property=TimeoutStopUSec", "--value", unit], check=False
            )
    except (OSError, TimeoutError):
        return None
    seconds = parse_usec(result.stdout.decode(errors="replace"))
    if result.returncode != 0 or seconds is None:
        return None
    return Deadline(f"systemd TimeoutStopSec of {unit}", seconds)


def too_short(deadline: Deadline, drain_timeout: float) -> str | None:
    """The warning for an outer deadline shorter than the drain plus our exit, else None."""
    needed = drain_timeout + EXIT_MARGIN_S
    if deadline.seconds >= needed:
        return None
    return (
        f"{deadline.source} is {deadline.seconds:g}s, shorter than --drain-timeout "
        f"{drain_timeout:g}s + {EXIT_MARGIN_S:g}s: calls still running then are killed with "
        f"agent-run; set it to at least {needed:g}s, or lower --drain-timeout"
    )


async def warn_if_too_short(
    grace_period: float | None,
    drain_timeout: float,
    log: Callable[..., None],
    environ: Mapping[str, str] = os.environ,
) -> None:
    """At start-up: one warning per outer deadline that would cut the drain."""
    deadlines = []
    if grace_period is not None:
        deadlines.append(Deadline("--grace-period", grace_period))
    found = await systemd_deadline(environ)
    if found is not None:
        deadlines.append(found)
    for deadline in deadlines:
        message = too_short(deadline, drain_timeout)
        if message is not None:
            log(
                "outer_deadline_too_short",
                source=deadline.source,
                seconds=deadline.seconds,
                drain_timeout=drain_timeout,
                message=message,
                level="warning",
            )

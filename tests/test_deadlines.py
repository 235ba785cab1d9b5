"""Outer stop deadlines shorter than the drain are reported at start-up (launcher/ops/deadlines.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from launcher.config import DRAIN_TIMEOUT
from launcher.ops.deadlines import Deadline, parse_usec, systemd_unit, too_short

from .conftest import CLI, PROBE, Launcher


def test_default_drain_leaves_livekit_its_drain_and_shutdown() -> None:
    """The default --drain-timeout covers LiveKit's 3600 s drain plus its 10 s process shutdown, with room to spare."""
    assert DRAIN_TIMEOUT >= 3600 + 10 + 10


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1min 30s", 90.0),
        ("10min", 600.0),
        ("1h 1min", 3660.0),
        ("500ms", 0.5),
        ("infinity", None),
        ("", None),
    ],
)
def test_systemctl_durations(text: str, seconds: float | None) -> None:
    """TimeoutStopUSec as `systemctl show --value` prints it, in seconds (infinity: no deadline)."""
    assert parse_usec(text) == seconds


def test_systemd_unit_from_the_cgroup(tmp_path: Path) -> None:
    """Under systemd (INVOCATION_ID set) the unit is the .service named in /proc/self/cgroup."""
    cgroup = tmp_path / "cgroup"
    cgroup.write_text("0::/system.slice/voice-agent.service\n")
    assert systemd_unit({"INVOCATION_ID": "abc"}, str(cgroup)) == "voice-agent.service"
    assert systemd_unit({}, str(cgroup)) is None


def test_too_short_names_the_source_and_the_fix() -> None:
    """A deadline below drain + margin is reported with its source and the value to set; a long one is not."""
    message = too_short(Deadline("systemd TimeoutStopSec of a.service", 90), DRAIN_TIMEOUT)
    assert message is not None
    assert (
        "systemd TimeoutStopSec of a.service is 90s" in message
        and f"{DRAIN_TIMEOUT + 10:g}s" in message
    )
    assert too_short(Deadline("--grace-period", DRAIN_TIMEOUT + 10), DRAIN_TIMEOUT) is None


def test_grace_period_shorter_than_drain_warns_at_start(
    cli: CLI, launch: Callable[..., Launcher]
) -> None:
    """`--grace-period 30` (Kubernetes' default) with the default drain: one warning at start-up, the pool still runs."""
    launcher = launch(
        "--grace-period", "30", "--ready", "notify", str(PROBE), env={"PROBE_NOTIFY": "1"}
    )
    warning = launcher.wait_event("outer_deadline_too_short", timeout=60)
    assert warning["source"] == "--grace-period" and warning["seconds"] == 30.0
    assert warning["level"] == "warning"
    launcher.wait_event("worker_ready", timeout=60)

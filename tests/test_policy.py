"""Restart policy: backoff with jitter, crash-loop counting, giving up (pure functions)."""

from __future__ import annotations

import pytest

from launcher.config import RestartPolicy
from launcher.supervision import policy


@pytest.mark.parametrize(
    ("policy_name", "code", "restart"),
    [
        (RestartPolicy.ALWAYS, 0, True),
        (RestartPolicy.ALWAYS, 1, True),
        (RestartPolicy.ALWAYS, 137, True),
        (RestartPolicy.ON_FAILURE, 0, False),
        (RestartPolicy.ON_FAILURE, 3, True),
        (RestartPolicy.ON_FAILURE, 143, True),
        (RestartPolicy.NEVER, 0, False),
        (RestartPolicy.NEVER, 1, False),
    ],
)
def test_should_restart_table(policy_name: RestartPolicy, code: int, restart: bool) -> None:
    """always restarts every exit, on-failure only non-zero ones, never none."""
    assert policy.should_restart(policy_name, code) is restart


def test_first_retry_is_fast_and_delays_double_up_to_the_cap() -> None:
    """Without jitter (random 0.5) the delays are 0.1, 0.2, 0.4 ... capped at 30 s."""
    delays = [policy.restart_delay(n, 0.5) for n in range(1, 12)]
    assert delays[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert delays == sorted(delays)
    assert max(delays) == pytest.approx(30.0)


@pytest.mark.parametrize("failures", [1, 2, 5, 20])
def test_jitter_stays_within_twenty_percent(failures: int) -> None:
    """The random unit moves a delay by at most +-20 %, never below zero."""
    middle = policy.restart_delay(failures, 0.5)
    low, high = policy.restart_delay(failures, 0.0), policy.restart_delay(failures, 1.0)
    assert low == pytest.approx(middle * 0.8)
    assert high == pytest.approx(middle * 1.2)
    assert 0 <= low < middle < high


def test_custom_backoff_is_honoured() -> None:
    """A Backoff with other parameters changes first delay, factor and cap."""
    backoff = policy.Backoff(first=1.0, factor=3.0, cap=5.0, jitter=0.0)
    assert [policy.restart_delay(n, 0.9, backoff) for n in (1, 2, 3)] == [1.0, 3.0, 5.0]


def test_failures_reset_after_a_stable_run() -> None:
    """A worker that stayed up `stable_after` seconds starts the count again at 1."""
    assert policy.consecutive_after_exit(4, uptime=0.5) == 5
    assert policy.consecutive_after_exit(4, uptime=10.0) == 1
    assert policy.consecutive_after_exit(0, uptime=0.0) == 1


def test_gives_up_only_after_max_restarts_within_the_window() -> None:
    """N restarts inside the window give up; older restarts fall out of it."""
    assert not policy.gives_up([1.0, 2.0], now=3.0, max_restarts=3, window=60)
    assert policy.gives_up([1.0, 2.0, 3.0], now=4.0, max_restarts=3, window=60)
    assert not policy.gives_up([1.0, 2.0, 3.0], now=62.5, max_restarts=3, window=60)
    assert not policy.gives_up([1.0] * 100, now=2.0, max_restarts=None, window=60)

"""Prometheus metrics for `/metrics`, derived from the published `PoolStatus`.

Gauges (workers by state, secrets version, sessions active) are read from the latest status
at scrape time, so they can never drift from what `agent-run status` shows. Counters and
histograms (restarts, rollouts by result and duration, session start latency) are fed by
status transitions and by session mode. prometheus-client is imported only when --health is
given; the registry is our own, not the process-global one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from launcher.ops.status import PoolStatus, RolloutState, WorkerState

ROLLOUT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
SESSION_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """The launcher's metrics registry."""

    def __init__(
        self,
        current: Callable[[], PoolStatus | None],
        sessions_active: Callable[[], int] | None = None,
    ) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram

        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "agent_run_worker_restarts",
            "Workers restarted after they exited, by slot.",
            ["slot"],
            registry=self.registry,
        )
        self.rollouts = Counter(
            "agent_run_rollouts",
            "Rolling restarts finished, by result (succeeded, aborted).",
            ["result"],
            registry=self.registry,
        )
        self.rollout_duration = Histogram(
            "agent_run_rollout_duration_seconds",
            "Time from the start of a rollout to its result.",
            ["result"],
            buckets=ROLLOUT_BUCKETS,
            registry=self.registry,
        )
        # Session metrics exist only in session mode: a worker pool has no sessions.
        self.session_start: Histogram | None = None
        self.sessions: Counter | None = None
        if sessions_active is not None:
            self.session_start = Histogram(
                "agent_run_session_start_seconds",
                "Time from a session request to its entrypoint running.",
                buckets=SESSION_BUCKETS,
                registry=self.registry,
            )
            self.sessions = Counter(
                "agent_run_sessions",
                "Sessions started.",
                registry=self.registry,
            )
        for result in (RolloutState.SUCCEEDED, RolloutState.ABORTED):
            self.rollouts.labels(result.value)  # export zeros, so alerts can use rate()
        self.registry.register(_StatusCollector(current, sessions_active))

    def observe(self, previous: PoolStatus | None, status: PoolStatus) -> None:
        """A `StatusBoard` subscriber: turn transitions into counter increments."""
        before = {w.slot: w.restarts for w in previous.workers} if previous else {}
        for worker in status.workers:
            grown = worker.restarts - before.get(worker.slot, 0)
            if grown > 0:
                self.restarts.labels(str(worker.slot)).inc(grown)
        rollout = status.rollout
        finished = rollout.state in (RolloutState.SUCCEEDED, RolloutState.ABORTED)
        if finished and (previous is None or previous.rollout != rollout):
            self.rollouts.labels(rollout.state.value).inc()
            if rollout.started_at is not None and rollout.finished_at is not None:
                self.rollout_duration.labels(rollout.state.value).observe(
                    max(0.0, rollout.finished_at - rollout.started_at)
                )

    def session_started(self, latency_seconds: float) -> None:
        if self.sessions is not None and self.session_start is not None:
            self.sessions.inc()
            self.session_start.observe(latency_seconds)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _StatusCollector:
    """Gauges read from the latest status at scrape time."""

    def __init__(
        self,
        current: Callable[[], PoolStatus | None],
        sessions_active: Callable[[], int] | None,
    ) -> None:
        self._current = current
        self._sessions_active = sessions_active

    def describe(self) -> list[Any]:
        return []  # unchecked collector: families are known only at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        status = self._current()
        workers = GaugeMetricFamily(
            "agent_run_workers",
            "Workers by state (draining: retired, finishing).",
            labels=["state"],
        )
        counts = dict.fromkeys((state.value for state in WorkerState), 0)
        if status is not None:
            for worker in status.workers:
                counts[worker.state.value] += 1
            counts[WorkerState.DRAINING.value] += len(status.draining)
        for state, count in counts.items():
            workers.add_metric([state], count)
        yield workers
        version = GaugeMetricFamily(
            "agent_run_secrets_version", "Version of the bound secret set that new workers get."
        )
        version.add_metric([], float(status.version or 0) if status else 0.0)
        yield version
        ready = GaugeMetricFamily(
            "agent_run_workers_ready_current", "Ready workers on the current secrets version."
        )
        ready.add_metric([], status.ready_on_current if status else 0)
        yield ready
        rollout = GaugeMetricFamily(
            "agent_run_rollout_in_progress", "1 while a rolling restart is running."
        )
        running = status is not None and status.rollout.state is RolloutState.RUNNING
        rollout.add_metric([], 1.0 if running else 0.0)
        yield rollout
        refused = CounterMetricFamily(
            "agent_run_secrets_versions_refused",
            "Store versions refused because they were older than one already served "
            "(an older set file put back).",
        )
        refused.add_metric([], status.rollout.refused if status else 0)
        yield refused
        exits = CounterMetricFamily(
            "agent_run_exits",
            "Processes that ended, by reason (clean, crash, signal, oom-killed, "
            "failed-before-ready, readiness-timeout, drain-deadline, watchdog, forced).",
            labels=["reason"],
        )
        from launcher.supervision.exits import ExitKind

        counted = dict(status.exit_counts) if status else {}
        for kind in ExitKind:  # zeros too, so alerts can use rate()
            exits.add_metric([kind.value], counted.get(kind.value, 0))
        yield exits
        processes = GaugeMetricFamily(
            "agent_run_processes",
            "Processes (and slots waiting to restart: state pending) by the secrets version "
            "they hold and their state.",
            labels=["secrets_version", "state"],
        )
        for entry in status.census if status else ():
            label = str(entry.version) if entry.version is not None else "none"
            processes.add_metric([label, entry.state], entry.processes)
        yield processes
        oldest = GaugeMetricFamily(
            "agent_run_secrets_version_oldest",
            "The oldest secrets version any process of this launcher (or a slot waiting to "
            "restart) holds: an older key is retired here once this is above its version.",
            labels=["set"],
        )
        held = [e.version for e in status.census if e.version is not None] if status else []
        if status is not None and status.secret_set is not None and held:
            oldest.add_metric([status.secret_set], min(held))
        yield oldest
        if self._sessions_active is not None:
            active = GaugeMetricFamily("agent_run_sessions_active", "Sessions running now.")
            active.add_metric([], self._sessions_active())
            yield active

"""The planner, as a model: random interleavings of every pool event, invariants after each.

No processes here: the planner is a pure function, so hypothesis drives it through worker
ready, readiness failure, crash, exit during drain, new version, SIGHUP, TERM, second TERM
and drain deadlines in any order — and, in session mode, sessions taken, started for a
waiting request, ended and stopped — and checks the promises of SPEC §3-§5 at every step.
The real-process tests of the same promises are in test_engine.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from launcher.config import RestartPolicy
from launcher.supervision import planner
from launcher.supervision.planner import Phase, SlotFate, Verdict

READY_TIMEOUT = 5.0
DRAIN = 20.0
AGE = 30.0  # recycling limits, when the example recycles
MEMORY = 1000
CALLS = 3


class PoolModel(RuleBasedStateMachine):
    """A pool whose processes do whatever hypothesis says; the planner must keep its promises."""

    ALWAYS_RECYCLE = False

    @initialize(
        size=st.integers(1, 3),
        surge=st.integers(0, 2),
        restart=st.sampled_from(list(RestartPolicy)),
        max_restarts=st.sampled_from([None, 2]),
        sessions=st.booleans(),
        recycle=st.booleans(),
    )
    def start(
        self,
        size: int,
        surge: int,
        restart: RestartPolicy,
        max_restarts: int | None,
        sessions: bool,
        recycle: bool,
    ) -> None:
        self.session_mode = sessions
        recycle = recycle or self.ALWAYS_RECYCLE
        self.worn_stopped_alone: list[int] = []  # worn workers stopped with no ready sibling
        self.end_requested: set[int] = set()
        self.stopped_sessions: list[tuple[int, bool]] = []  # (pid, allowed)
        if sessions:  # session mode: the slots are warm processes, replaced all at once
            size, restart, max_restarts = size - 1, RestartPolicy.ALWAYS, None
            surge = max(size, 1)
        self.settings = planner.Settings(
            size=size,
            surge=surge,
            restart=restart,
            max_restarts=max_restarts,
            restart_window=60.0,
            ready_timeout=READY_TIMEOUT,
            drain_timeout=DRAIN,
            failed_grace=2.0,
            max_age=AGE if recycle else None,
            max_memory=MEMORY if recycle else None,
            max_calls=CALLS if recycle else None,
        )
        self.now = 0.0
        self.state = planner.initial(self.settings, 1)
        self.generation = 1
        self.next_pid = 100
        self.stops: dict[int, int] = {}
        self.started_after_shutdown = False
        self.finished: list[int] = []
        self.shutdown_began = False
        self.bursting: set[int] = set()
        self.reconcile()

    # --- the world: apply the planner's actions as real processes would ---------------

    def reconcile(self) -> None:
        """Plan until nothing is left to do, as the engine does after every event."""
        for _ in range(50):
            before = self.state
            result = planner.plan(self.state, self.now)
            self.state = result.state
            if not result.actions:
                return
            for action in result.actions:
                if isinstance(action, planner.Stop):
                    proc = before.proc(action.pid)
                    if proc is not None and proc.slot < 0:
                        timed_out = (
                            proc.phase is Phase.STARTING
                            and self.now >= proc.started + READY_TIMEOUT
                        )
                        allowed = (
                            self.shutdown_began or action.pid in self.end_requested or timed_out
                        )
                        self.stopped_sessions.append((action.pid, allowed))
                    self.check_ready_first(proc)
                self.apply(action)
        raise AssertionError("the planner never settles")

    def check_ready_first(self, proc: planner.Proc | None) -> None:
        """A worn worker is stopped only once another process of its slot is ready."""
        if proc is None or proc.worn is None or proc.phase is not Phase.READY:
            return
        if proc.slot < 0:
            return  # a session's process, stopped because its session ended: not recycling
        slot = self.state.slots[proc.slot]
        if not self.state.accepting or slot.fate is not SlotFate.ACTIVE:
            return
        if self.settings.surge <= 0:
            return  # singleton: stop-first by design
        if not any(
            p.slot == proc.slot and p.pid != proc.pid and p.phase is Phase.READY
            for p in self.state.procs
        ):
            self.worn_stopped_alone.append(proc.pid)

    def apply(self, action: planner.Action) -> None:
        if isinstance(action, planner.Start):
            if self.shutdown_began:
                self.started_after_shutdown = True
            pid = self.next_pid
            self.next_pid += 1
            if action.slot < 0:
                self.bursting.add(pid)
            event = planner.Started(pid, action.slot, action.lane, action.generation, self.now)
            self.state, _ = planner.observe(self.state, event)
        elif isinstance(action, planner.Stop):
            self.stops[action.pid] = self.stops.get(action.pid, 0) + 1
        elif isinstance(action, planner.Kill):
            # SIGKILL is not negotiable: the process is gone at once.
            self.observe(planner.Exited(action.pid, 137, self.now, 0.5))
        elif isinstance(action, planner.Finish):
            self.finished.append(action.code)

    def observe(self, event: planner.Event) -> None:
        self.state, _ = planner.observe(self.state, event)

    def ready_capacity(self) -> int:
        return sum(1 for p in self.state.procs if p.phase is Phase.READY)

    def step(self, event: planner.Event, *, may_lose_capacity: bool) -> None:
        before = self.ready_capacity()
        self.observe(event)
        self.reconcile()
        if (
            not may_lose_capacity
            and self.state.accepting
            and self.settings.surge > 0
            and all(s.fate is SlotFate.ACTIVE for s in self.state.slots)
        ):
            # Ready-first: capacity never drops below the pool size because of a rollout.
            assert self.ready_capacity() >= min(before, self.settings.size)

    # --- events ------------------------------------------------------------------------

    def procs(self, phase: Phase | None = None) -> list[planner.Proc]:
        return [p for p in self.state.procs if phase is None or p.phase is phase]

    @precondition(lambda self: any(p.phase is Phase.STARTING for p in self.state.procs))
    @rule(data=st.data())
    def becomes_ready(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.procs(Phase.STARTING)))
        self.step(planner.Ready(proc.pid, self.now), may_lose_capacity=False)

    @rule(pid=st.integers(0, 99))
    def ready_from_a_stranger(self, pid: int) -> None:
        """A readiness result for a process that is not (or no longer) ours changes nothing."""
        before = self.state
        self.observe(planner.Ready(pid, self.now))
        assert self.state == before

    @precondition(lambda self: any(p.phase is Phase.STOPPING for p in self.state.procs))
    @rule(data=st.data())
    def ready_while_draining(self, data: st.DataObject) -> None:
        """A stopping process that answers a probe late is not counted as ready."""
        proc = data.draw(st.sampled_from(self.procs(Phase.STOPPING)))
        self.observe(planner.Ready(proc.pid, self.now))
        assert self.state.proc(proc.pid).phase is Phase.STOPPING  # type: ignore[union-attr]

    @precondition(lambda self: any(p.phase is not Phase.STOPPING for p in self.state.procs))
    @rule(data=st.data(), code=st.sampled_from([0, 1, 139]))
    def crashes(self, data: st.DataObject, code: int) -> None:
        proc = data.draw(
            st.sampled_from([p for p in self.state.procs if p.phase is not Phase.STOPPING])
        )
        lost = proc.phase is Phase.READY
        self.step(
            planner.Exited(proc.pid, code, self.now, data.draw(st.floats(0, 0.999))),
            may_lose_capacity=lost,
        )

    @precondition(lambda self: any(p.phase is Phase.STOPPING for p in self.state.procs))
    @rule(data=st.data())
    def exits_during_drain(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.procs(Phase.STOPPING)))
        self.step(planner.Exited(proc.pid, 0, self.now, 0.5), may_lose_capacity=False)

    @precondition(lambda self: any(p.phase is Phase.READY for p in self.state.procs))
    @rule(data=st.data())
    def stops_on_its_own(self, data: st.DataObject) -> None:
        """STOPPING=1 from a worker: it drains; its slot is refilled."""
        proc = data.draw(st.sampled_from(self.procs(Phase.READY)))
        self.step(planner.Stopping(proc.pid, self.now), may_lose_capacity=True)

    @rule()
    def new_version(self) -> None:
        """A new secrets version, a SIGHUP or a reload: one more generation to roll out."""
        self.generation += 1
        self.step(planner.NewTarget(self.generation, self.now), may_lose_capacity=False)

    @rule(seconds=st.sampled_from([0.05, 1.0, READY_TIMEOUT, DRAIN, AGE, 61.0]))
    def time_passes(self, seconds: float) -> None:
        """Backoffs end, readiness timeouts and drain deadlines pass."""
        self.now += seconds
        self.step(planner.Ready(-1, self.now), may_lose_capacity=False)

    @precondition(lambda self: any(p.phase is Phase.READY for p in self.state.procs))
    @rule(data=st.data(), memory=st.sampled_from([10, MEMORY + 1]))
    def memory_is_sampled(self, data: st.DataObject, memory: int) -> None:
        """The engine's periodic measure of a worker's process group."""
        proc = data.draw(st.sampled_from(self.procs(Phase.READY)))
        self.step(planner.Sample(proc.pid, memory, self.now), may_lose_capacity=False)

    @precondition(lambda self: any(p.phase is Phase.READY for p in self.state.procs))
    @rule(data=st.data())
    def a_call_is_done(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.procs(Phase.READY)))
        self.step(planner.WorkDone(proc.pid, self.now), may_lose_capacity=False)

    @rule()
    def term(self) -> None:
        self.shutdown_began = True
        self.step(planner.Shutdown(self.now), may_lose_capacity=True)

    @precondition(lambda self: self.shutdown_began)
    @rule()
    def second_term(self) -> None:
        self.step(planner.Force(self.now), may_lose_capacity=True)

    # --- session mode --------------------------------------------------------------------

    @precondition(
        lambda self: self.session_mode and any(p.phase is Phase.READY for p in self.state.procs)
    )
    @rule(data=st.data())
    def a_session_takes_a_warm_process(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.procs(Phase.READY)))
        self.step(planner.Taken(proc.pid, self.now), may_lose_capacity=True)
        assert self.state.proc(proc.pid).slot == -1  # type: ignore[union-attr]

    @precondition(lambda self: self.session_mode)
    @rule()
    def a_session_waits_for_a_process(self) -> None:
        before = {p.pid for p in self.state.sessions}
        self.step(planner.Burst(self.now), may_lose_capacity=False)
        started = [p for p in self.state.sessions if p.pid not in before]
        assert len(started) == (1 if self.state.accepting else 0)

    @precondition(lambda self: bool(self.state.sessions))
    @rule(data=st.data())
    def a_session_is_stopped(self, data: st.DataObject) -> None:
        proc = data.draw(st.sampled_from(self.state.sessions))
        self.end_requested.add(proc.pid)
        self.step(planner.EndSession(proc.pid, self.now), may_lose_capacity=False)

    @precondition(lambda self: bool(self.state.sessions))
    @rule(data=st.data(), code=st.sampled_from([0, 1]))
    def a_session_ends(self, data: st.DataObject, code: int) -> None:
        proc = data.draw(st.sampled_from(self.state.sessions))
        self.step(planner.Exited(proc.pid, code, self.now, 0.5), may_lose_capacity=False)

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def a_running_session_is_stopped_only_when_asked_or_at_shutdown(self) -> None:
        assert all(allowed for _, allowed in self.stopped_sessions), self.stopped_sessions

    @invariant()
    def an_empty_slot_is_refilled_at_once(self) -> None:
        if not self.state.accepting:
            return
        for slot in self.state.slots:
            if slot.fate is SlotFate.ACTIVE and slot.restart_at is None and not slot.handover:
                assert any(
                    p.slot == slot.index and p.phase is not Phase.STOPPING for p in self.state.procs
                ), slot

    @invariant()
    def nothing_starts_after_shutdown(self) -> None:
        assert not self.started_after_shutdown

    @invariant()
    def one_stop_signal_per_process(self) -> None:
        """At most one stop signal per process (the second would make LiveKit drop calls)."""
        assert all(count == 1 for count in self.stops.values()), self.stops

    @invariant()
    def no_process_outlives_its_drain_deadline(self) -> None:
        for proc in self.state.every_proc():
            if proc.stop_deadline is not None:
                assert self.now < proc.stop_deadline

    @invariant()
    def a_replacement_never_shares_a_port_lane(self) -> None:
        for slot in self.state.slots:
            lanes = [p.lane for p in self.state.procs if p.slot == slot.index]
            assert len(lanes) == len(set(lanes))

    @invariant()
    def one_worker_and_at_most_one_candidate_per_slot(self) -> None:
        for slot in self.state.slots:
            live = [
                p
                for p in self.state.procs
                if p.slot == slot.index and p.phase is not Phase.STOPPING
            ]
            committed = [p for p in live if p.generation == slot.generation]
            fresh = [p for p in committed if p.worn is None]  # a worn one awaits its successor
            assert len(fresh) <= 1
            assert len(live) - len(committed) <= 1

    @invariant()
    def a_worn_worker_drains_only_after_its_successor_is_ready(self) -> None:
        assert self.worn_stopped_alone == []

    @invariant()
    def recycling_goes_surge_slots_at_a_time(self) -> None:
        recycling = 0
        for slot in self.state.slots:
            live = [
                p
                for p in self.state.procs
                if p.slot == slot.index and p.phase is not Phase.STOPPING
            ]
            fresh = [
                p
                for p in live
                if p.phase is Phase.STARTING and p.generation == slot.generation and not p.worn
            ]
            if any(p.worn for p in live) and fresh:
                recycling += 1
        assert recycling <= max(1, self.settings.surge)

    @invariant()
    def the_newest_target_wins(self) -> None:
        for proc in self.state.procs:
            if proc.phase is not Phase.STOPPING:
                slot = self.state.slots[proc.slot]
                assert proc.generation in (slot.generation, self.state.target)

    @invariant()
    def a_rollout_is_done_only_when_every_slot_is_on_the_target(self) -> None:
        if self.state.rollout.verdict is Verdict.SUCCEEDED and self.state.accepting:
            active = [s for s in self.state.slots if s.fate is SlotFate.ACTIVE]
            if self.state.rollout.to_generation == self.state.target:
                assert all(s.generation == self.state.target for s in active)

    @invariant()
    def shutdown_ends_once_the_last_process_is_gone(self) -> None:
        if self.shutdown_began:
            assert bool(self.finished) == (not self.state.every_proc())
        assert len(self.finished) <= 1
        if self.finished:
            assert not self.state.every_proc()

    @invariant()
    def a_plan_is_stable(self) -> None:
        """Planning twice at the same moment asks for nothing more (no duplicate actions)."""
        assert planner.plan(self.state, self.now).actions == ()


PoolModel.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pool_model = PoolModel.TestCase


class RecyclingModel(PoolModel):
    """The same model with recycling limits always set: worn workers, fresh ones, drains."""

    ALWAYS_RECYCLE = True


RecyclingModel.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_recycling_model = RecyclingModel.TestCase


def _ready_pool(size: int, surge: int = 1) -> tuple[planner.PoolState, list[int]]:
    state = planner.initial(planner.Settings(size=size, surge=surge), 1)
    pids = []
    result = planner.plan(state, 0.0)
    state = result.state
    for pid, action in enumerate(result.actions, start=10):
        assert isinstance(action, planner.Start)
        state, _ = planner.observe(state, planner.Started(pid, action.slot, action.lane, 1, 0.0))
        state, _ = planner.observe(state, planner.Ready(pid, 0.0))
        pids.append(pid)
    return planner.plan(state, 0.0).state, pids


def _recycling_pool(size: int, surge: int = 1) -> tuple[planner.PoolState, list[int]]:
    settings = planner.Settings(size=size, surge=surge, max_memory=MEMORY, max_age=AGE)
    state = planner.initial(settings, 1)
    pids = []
    result = planner.plan(state, 0.0)
    state = result.state
    for pid, action in enumerate(result.actions, start=10):
        assert isinstance(action, planner.Start)
        state, _ = planner.observe(state, planner.Started(pid, action.slot, action.lane, 1, 0.0))
        state, _ = planner.observe(state, planner.Ready(pid, 0.0))
        pids.append(pid)
    return planner.plan(state, 0.0).state, pids


def test_a_worker_over_its_memory_limit_is_replaced_ready_first_then_drained() -> None:
    """Over --max-worker-memory: a fresh worker of the same version starts; the worn one gets its stop signal only once it is ready."""
    state, (old,) = _recycling_pool(1)
    state, _ = planner.observe(state, planner.Sample(old, MEMORY + 1, 1.0))
    result = planner.plan(state, 1.0)
    assert result.actions == (planner.Start(0, 1, 1),)  # same generation, another lane
    assert result.notes.recycling == ((0, old, "memory"),)
    state, _ = planner.observe(result.state, planner.Started(20, 0, 1, 1, 1.0))
    assert planner.plan(state, 2.0).actions == ()  # the worn worker serves meanwhile
    state, _ = planner.observe(state, planner.Ready(20, 2.0))
    result = planner.plan(state, 2.0)
    assert result.actions == (planner.Stop(old),)
    assert result.state.proc(old).stop_deadline == 2.0 + planner.Settings(1).drain_timeout  # type: ignore[union-attr]
    state, _ = planner.observe(result.state, planner.Exited(old, 0, 3.0, 0.5))
    result = planner.plan(state, 3.0)
    assert result.actions == () and result.state.slots[0].restarts == 0


def test_a_pool_recycles_by_age_one_slot_at_a_time_spread_by_jitter() -> None:
    """Workers started together come due at different times, and only `surge` are replaced at once."""
    state, pids = _recycling_pool(3)
    dues = {pid: planner._age_limit(state, state.proc(pid)) for pid in pids}  # type: ignore[arg-type]
    assert len(set(dues.values())) == 3 and all(AGE * 0.9 <= d <= AGE for d in dues.values())  # type: ignore[operator]
    result = planner.plan(state, AGE)
    assert [type(a) for a in result.actions] == [planner.Start]
    assert result.wake_at is None or result.wake_at > AGE


def test_a_fresh_worker_that_fails_leaves_the_worn_one_serving_with_a_backoff() -> None:
    """The replacement of a worn worker crashes: no slot crash, the worn one keeps serving, retried after a backoff."""
    state, (old,) = _recycling_pool(1)
    state, _ = planner.observe(state, planner.Sample(old, MEMORY + 1, 1.0))
    state = planner.plan(state, 1.0).state
    state, _ = planner.observe(state, planner.Started(20, 0, 1, 1, 1.0))
    state, _ = planner.observe(state, planner.Exited(20, 1, 1.5, 0.0))
    result = planner.plan(state, 1.5)
    assert result.actions == ()
    assert result.state.slots[0].recycle_at is not None and result.state.slots[0].restarts == 0
    assert result.state.proc(old).phase is Phase.READY  # type: ignore[union-attr]
    assert planner.plan(state, result.state.slots[0].recycle_at).actions == (  # type: ignore[arg-type]
        planner.Start(0, 1, 1),
    )


def test_a_crash_during_a_rollout_waits_for_the_candidate() -> None:
    """The old worker crashing while its replacement starts: no second start; the candidate takes over."""
    state, (old,) = _ready_pool(1)
    state, _ = planner.observe(state, planner.NewTarget(2, 1.0))
    result = planner.plan(state, 1.0)
    (start,) = result.actions
    assert start == planner.Start(0, 1, 2)  # another lane: another port
    state, _ = planner.observe(result.state, planner.Started(20, 0, 1, 2, 1.0))
    state, _ = planner.observe(state, planner.Exited(old, 1, 1.1, 0.5))
    assert (
        planner.plan(state, 5.0).actions == ()
    )  # backoff would restart v1: the candidate is there
    state, _ = planner.observe(state, planner.Ready(20, 5.0))
    result = planner.plan(state, 5.0)
    assert result.state.slots[0].generation == 2
    assert result.state.slots[0].restart_at is None
    assert result.actions == ()


def test_a_failed_candidate_aborts_and_keeps_the_old_worker() -> None:
    """A replacement that exits before it is ready aborts the rollout; the old worker is untouched."""
    state, (old,) = _ready_pool(1)
    state, _ = planner.observe(state, planner.NewTarget(2, 1.0))
    state = planner.plan(state, 1.0).state
    state, _ = planner.observe(state, planner.Started(20, 0, 1, 2, 1.0))
    state, _ = planner.observe(state, planner.Exited(20, 1, 1.2, 0.5))
    result = planner.plan(state, 1.2)
    assert result.actions == ()
    assert result.state.rollout.verdict is Verdict.ABORTED
    assert "exited with code 1" in (result.state.rollout.reason or "")
    assert result.state.proc(old).phase is Phase.READY  # type: ignore[union-attr]
    # The next version is tried again.
    state, _ = planner.observe(result.state, planner.NewTarget(3, 2.0))
    assert planner.plan(state, 2.0).actions == (planner.Start(0, 1, 3),)


def test_term_during_a_rollout_stops_the_candidate_and_starts_nothing() -> None:
    """TERM mid-rollout: every process gets one stop signal, no replacement starts afterwards."""
    state, pids = _ready_pool(3)
    state, _ = planner.observe(state, planner.NewTarget(2, 1.0))
    result = planner.plan(state, 1.0)
    assert result.actions == (planner.Start(0, 1, 2),)
    state, _ = planner.observe(result.state, planner.Started(20, 0, 1, 2, 1.0))
    state, _ = planner.observe(state, planner.Shutdown(1.5))
    result = planner.plan(state, 1.5)
    assert sorted(a.pid for a in result.actions if isinstance(a, planner.Stop)) == [*pids, 20]
    assert not any(isinstance(a, planner.Start) for a in result.actions)
    state, _ = planner.observe(result.state, planner.Ready(20, 1.6))  # too late: not counted
    for pid in [*pids, 20]:
        state, _ = planner.observe(state, planner.Exited(pid, 0, 2.0, 0.5))
    assert planner.plan(state, 2.0).actions == (planner.Finish(0),)


@pytest.mark.parametrize("ready", [True, False])
def test_drain_deadline_kills_once_and_shutdown_ends(ready: bool) -> None:
    """A worker still draining at its deadline is killed once; the pool then finishes."""
    state, (pid,) = _ready_pool(1)
    state, _ = planner.observe(state, planner.Shutdown(1.0))
    result = planner.plan(state, 1.0)
    assert result.actions == (planner.Stop(pid),)
    assert result.wake_at == 1.0 + planner.Settings(size=1).drain_timeout
    result = planner.plan(result.state, result.wake_at)
    assert result.actions == (planner.Kill(pid, "drain deadline"),)
    state = replace(result.state)
    state, _ = planner.observe(state, planner.Exited(pid, 137, 4000.0, 0.5))
    assert planner.plan(state, 4000.0).actions == (planner.Finish(0),)


def test_restart_history_stays_bounded_without_a_limit() -> None:
    """With no --max-restarts, a crash-looping slot keeps only the restarts inside the window."""
    settings = planner.Settings(size=1, max_restarts=None, restart_window=60.0)
    state = planner.initial(settings, 1)
    now, pid = 0.0, 10
    for _ in range(500):
        result = planner.plan(state, now)
        state = result.state
        for action in result.actions:
            assert isinstance(action, planner.Start)
            state, _ = planner.observe(state, planner.Started(pid, 0, action.lane, 1, now))
            state, _ = planner.observe(state, planner.Exited(pid, 1, now + 0.01, 0.5))
            pid += 1
        now = result.wake_at if result.wake_at is not None else now + 1.0
    assert state.slots[0].restarts > 20
    assert len(state.slots[0].restart_times) <= 61

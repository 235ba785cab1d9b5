"""The pool's decisions as one pure function: desired state + observed processes -> actions.

Everything that can happen to a pool — a worker ready, a readiness failure, a crash, an exit
during drain, a new secrets version, SIGHUP, TERM, a second TERM, a drain deadline — is an
*event* that `observe()` records in a `PoolState`; `plan()` then compares what is wanted with
what runs and returns the actions that close the gap (start, stop, kill, finish). The engine
(engine.py) applies them to real processes and feeds back what happened. Nothing here reads a
clock, draws a random number or touches a process: `now` and the jitter come in with the
events, so every interleaving can be replayed exactly (tests/test_planner.py does, with
hypothesis), and "what happens when a worker crashes during a rollout" is read in `plan()`.

Vocabulary:
- a *generation* is one environment (a secrets version, or the same version after a SIGHUP);
  the engine maps generations to environments, the planner only compares numbers;
- each slot has a *committed* generation: the one its worker runs and crash restarts use;
- the *target* is the newest generation asked for; a rollout moves every slot's commitment
  to it, `surge` slots at a time, ready-first (or stop-first when surge is 0);
- a *candidate* is a process of the target started for a slot that is not committed to it;
- a *lane* picks the process's port: a candidate never takes a lane (so never a port or a
  readiness target) that another live process of its slot holds;
- in session mode the slots are the warm (idle) processes; a process *taken* for a session
  leaves its slot (which is refilled at once) and joins `sessions`, where rollouts never
  touch it: it ends when its session does, or is stopped by a request or by shutdown. A
  *burst* start is a process started for a waiting session when no warm one is ready.
- a *worn* worker is over a recycling limit (`--max-worker-age`, `--max-worker-memory`,
  `--max-worker-calls`): its slot gets a *fresh* process of the same generation, ready-first
  like a rollout's candidate (stop-first when surge is 0), `surge` slots at a time; the worn
  worker then drains like a retired one. Memory and calls are facts the engine reports
  (`Sample`, `WorkDone`); the age limit is spread by up to RECYCLE_SPREAD per process, so
  workers started together do not all come due at once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from launcher.config import RestartPolicy
from launcher.supervision import policy

RECYCLE_SPREAD = 0.1  # an age limit is lowered by up to this fraction, per process


class Phase(enum.Enum):
    STARTING = "starting"  # spawned, not ready yet
    READY = "ready"
    STOPPING = "stopping"  # the stop signal was sent (once); draining


class SlotFate(enum.Enum):
    ACTIVE = "active"  # kept filled
    EXITED = "exited"  # ended by the restart policy
    GAVE_UP = "gave-up"  # crashed --max-restarts times within --restart-window


class Verdict(enum.Enum):
    IDLE = "idle"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    ABORTED = "aborted"


@dataclass(frozen=True)
class Settings:
    size: int
    surge: int = 1  # 0: singleton handover
    restart: RestartPolicy = RestartPolicy.ALWAYS
    max_restarts: int | None = None
    restart_window: float = 60.0
    ready_timeout: float = 60.0
    drain_timeout: float = 3600.0
    failed_grace: float = 10.0  # drain allowed to a process that never became ready
    watchdog: float | None = None  # seconds between WATCHDOG=1 pings, for ready processes
    exec_like: bool = False  # --workers 1 --restart never: the child's code is ours
    # Session mode, at shutdown: a running session may finish within the drain; then it gets
    # the stop signal (which cancels its entrypoint) and this long before SIGKILL.
    session_grace: float = 5.0
    # Recycling (None: no limit): seconds since start, bytes of the process group, calls.
    max_age: float | None = None
    max_memory: int | None = None
    max_calls: int | None = None


@dataclass(frozen=True)
class Proc:
    pid: int
    slot: int
    lane: int
    generation: int
    phase: Phase
    started: float
    last_ping: float
    stop_deadline: float | None = None  # SIGKILL of the group when this passes
    killed: bool = False
    stop_wanted: bool = False  # a session asked to end (DELETE /sessions/{id})
    stop_at: float | None = None  # shutdown: a running session gets the stop signal then
    worn: str | None = None  # over a recycling limit: "age", "memory", "calls"
    calls: int = 0  # work done (X_AGENT_RUN_CALL_DONE=1 messages)


@dataclass(frozen=True)
class Slot:
    index: int
    generation: int  # committed: the environment its worker runs and restarts use
    fate: SlotFate = SlotFate.ACTIVE
    failures: int = 0  # consecutive crashes, for the backoff
    restart_times: tuple[float, ...] = ()  # within --restart-window only
    restarts: int = 0
    restart_at: float | None = None  # backoff: start again at this time
    last_exit: int | None = None
    handover: bool = False  # surge 0: the old worker is being stopped before the new starts
    recycle_failures: int = 0  # fresh processes in a row that failed to replace a worn one
    recycle_at: float | None = None  # backoff: try a fresh process again at this time


@dataclass(frozen=True)
class Rollout:
    verdict: Verdict = Verdict.IDLE
    from_generation: int | None = None
    to_generation: int | None = None
    started: float | None = None
    finished: float | None = None
    reason: str | None = None


@dataclass(frozen=True)
class PoolState:
    settings: Settings
    slots: tuple[Slot, ...]
    target: int  # newest generation asked for
    procs: tuple[Proc, ...] = ()
    failed: int | None = None  # a target whose rollout aborted: not retried until a newer one
    accepting: bool = True  # False once shutdown began
    forced: bool = False  # a second TERM: kill everything now
    rollout: Rollout = Rollout()
    exit_code: int | None = None  # set once the pool is finished
    killed_in_shutdown: bool = False
    sessions: tuple[Proc, ...] = ()  # taken for a session: out of the slots for good
    bursts: int = 0  # burst starts asked for and not started yet

    def proc(self, pid: int) -> Proc | None:
        found = next((p for p in self.procs if p.pid == pid), None)
        return found or next((p for p in self.sessions if p.pid == pid), None)

    def every_proc(self) -> tuple[Proc, ...]:
        return (*self.procs, *self.sessions)


def initial(settings: Settings, generation: int) -> PoolState:
    slots = tuple(Slot(i, generation) for i in range(settings.size))
    return PoolState(settings=settings, slots=slots, target=generation)


# --- events -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    pid: int
    slot: int
    lane: int
    generation: int
    now: float


@dataclass(frozen=True)
class StartFailed:
    """The spawn itself failed (the command vanished): counted as a crash of the slot."""

    slot: int
    generation: int
    now: float
    jitter: float


@dataclass(frozen=True)
class Ready:
    pid: int
    now: float


@dataclass(frozen=True)
class Ping:
    pid: int  # WATCHDOG=1
    now: float


@dataclass(frozen=True)
class Stopping:
    pid: int  # STOPPING=1: the worker began to stop on its own; it drains like a retired one
    now: float


@dataclass(frozen=True)
class Exited:
    pid: int
    code: int
    now: float
    jitter: float  # a random number in [0, 1) for the restart backoff


@dataclass(frozen=True)
class Sample:
    pid: int  # the memory of its process group (RSS or PSS), in bytes
    memory: int
    now: float


@dataclass(frozen=True)
class WorkDone:
    pid: int  # one call (or job) finished: X_AGENT_RUN_CALL_DONE=1
    now: float


@dataclass(frozen=True)
class Taken:
    pid: int  # a ready warm process was handed a session
    now: float


@dataclass(frozen=True)
class Burst:
    now: float  # a session waits and no warm process is ready: start one for it


@dataclass(frozen=True)
class EndSession:
    pid: int  # stop this session's process (the stop signal once, then the drain deadline)
    now: float


@dataclass(frozen=True)
class NewTarget:
    generation: int  # a new version (or a SIGHUP) to roll out
    now: float


@dataclass(frozen=True)
class Shutdown:
    now: float


@dataclass(frozen=True)
class Force:
    now: float  # a second TERM/INT


Event = (
    Started
    | StartFailed
    | Ready
    | Ping
    | Stopping
    | Exited
    | Sample
    | WorkDone
    | Taken
    | Burst
    | EndSession
    | NewTarget
    | Shutdown
    | Force
)

# --- actions ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Start:
    slot: int
    lane: int
    generation: int


@dataclass(frozen=True)
class Stop:
    pid: int  # the stop signal, to the main process, once


@dataclass(frozen=True)
class Kill:
    pid: int  # SIGKILL of the process group
    reason: str  # "drain deadline", "readiness", "watchdog", "forced"


@dataclass(frozen=True)
class Finish:
    code: int


Action = Start | Stop | Kill | Finish


@dataclass(frozen=True)
class Notes:
    """What happened in a step, for logs and status (the engine reports, never decides)."""

    rollout_started: bool = False
    rollout_finished: bool = False
    not_ready: tuple[int, ...] = ()  # pids that missed --ready-timeout
    gave_up: tuple[int, ...] = ()  # slots
    crash_loop: tuple[tuple[int, int, float], ...] = ()  # (slot, failures, delay)
    committed: tuple[int, ...] = ()  # slots now on the target
    recycling: tuple[tuple[int, int, str], ...] = ()  # (slot, worn pid, why): fresh one asked


@dataclass(frozen=True)
class Plan:
    state: PoolState
    actions: tuple[Action, ...] = ()
    notes: Notes = field(default_factory=Notes)
    wake_at: float | None = None  # call plan() again at this time (a timer is due)


# --- observe: record a fact ---------------------------------------------------------------


def observe(state: PoolState, event: Event) -> tuple[PoolState, Notes]:
    """The state after `event`; never starts or stops anything (plan() does)."""
    notes = Notes()
    if isinstance(event, Started) and event.slot < 0:
        burst = Proc(event.pid, -1, 0, event.generation, Phase.STARTING, event.now, event.now)
        bursts = max(0, state.bursts - 1)
        return replace(state, sessions=(*state.sessions, burst), bursts=bursts), notes
    if isinstance(event, Taken):
        taken = next((p for p in state.procs if p.pid == event.pid), None)
        if taken is None or taken.phase is not Phase.READY:
            return state, notes
        # It leaves its slot, which is refilled at once (no crash, no backoff).
        procs = tuple(p for p in state.procs if p.pid != event.pid)
        taken = replace(taken, slot=-1)
        return replace(state, procs=procs, sessions=(*state.sessions, taken)), notes
    if isinstance(event, Burst):
        if not state.accepting:
            return state, notes
        return replace(state, bursts=state.bursts + 1), notes
    if isinstance(event, EndSession):
        found = next((p for p in state.sessions if p.pid == event.pid), None)
        if found is None:
            return state, notes
        return _with_proc(state, replace(found, stop_wanted=True)), notes
    if isinstance(event, Started):
        proc = Proc(
            pid=event.pid,
            slot=event.slot,
            lane=event.lane,
            generation=event.generation,
            phase=Phase.STARTING,
            started=event.now,
            last_ping=event.now,
        )
        return replace(state, procs=(*state.procs, proc)), notes
    if isinstance(event, Ready):
        found = state.proc(event.pid)
        if found is None or found.phase is not Phase.STARTING:
            return state, notes  # measured on a process that is gone or stopping: not ours
        return _with_proc(state, replace(found, phase=Phase.READY, last_ping=event.now)), notes
    if isinstance(event, Ping):
        found = state.proc(event.pid)
        if found is None:
            return state, notes
        return _with_proc(state, replace(found, last_ping=event.now)), notes
    if isinstance(event, Stopping):
        found = state.proc(event.pid)
        if found is None or found.phase is Phase.STOPPING:
            return state, notes
        # No stop signal from us (it is stopping already). Its slot is refilled while it
        # drains, paced like a crash restart: an agent that says STOPPING=1 as soon as it
        # starts must not multiply processes.
        deadline = event.now + state.settings.drain_timeout
        state = _with_proc(state, replace(found, phase=Phase.STOPPING, stop_deadline=deadline))
        if found.slot < 0:
            return state, notes  # a session's process: nothing to refill
        slot = state.slots[found.slot]
        if (
            found.generation != slot.generation
            or not state.accepting
            or slot.fate is not SlotFate.ACTIVE
            or state.settings.restart is RestartPolicy.NEVER
        ):
            return state, notes
        uptime = event.now - found.started
        failures = policy.consecutive_after_exit(slot.failures, uptime)
        delay = policy.restart_delay(failures, _jitter(found.pid))
        slot = replace(slot, failures=failures, restart_at=event.now + delay)
        return _with_slot(state, slot), notes
    if isinstance(event, Exited):
        return _exited(state, event)
    if isinstance(event, Sample | WorkDone):
        return _worn_by(state, event), notes
    if isinstance(event, StartFailed) and event.slot < 0:
        return replace(state, bursts=max(0, state.bursts - 1)), notes
    if isinstance(event, StartFailed):
        slot = state.slots[event.slot]
        if event.generation != slot.generation:
            reason = "a replacement worker did not become ready: it could not be started"
            return _abort(state, event.now, reason), Notes(rollout_finished=True)
        return _crashed(state, slot, 127, 0.0, event.now, event.jitter)
    if isinstance(event, NewTarget):
        if event.generation <= state.target or not state.accepting:
            return state, notes
        return replace(state, target=event.generation), notes
    if isinstance(event, Shutdown):
        return replace(state, accepting=False, bursts=0), notes
    if isinstance(event, Force):
        return replace(state, accepting=False, forced=True, bursts=0), notes
    raise TypeError(f"unknown event {event!r}")


def _with_proc(state: PoolState, proc: Proc) -> PoolState:
    return replace(
        state,
        procs=tuple(proc if p.pid == proc.pid else p for p in state.procs),
        sessions=tuple(proc if p.pid == proc.pid else p for p in state.sessions),
    )


def _with_slot(state: PoolState, slot: Slot) -> PoolState:
    return replace(state, slots=tuple(slot if s.index == slot.index else s for s in state.slots))


def _worn_by(state: PoolState, event: Sample | WorkDone) -> PoolState:
    """A memory sample or a finished call: the worker may now be over its limit."""
    settings = state.settings
    proc = next((p for p in state.procs if p.pid == event.pid), None)
    if proc is None or proc.phase is not Phase.READY:
        return state  # only a serving worker is recycled (never a session's process)
    if isinstance(event, WorkDone):
        proc = replace(proc, calls=proc.calls + 1)
        if proc.worn is None and settings.max_calls and proc.calls >= settings.max_calls:
            proc = replace(proc, worn="calls")
    elif proc.worn is None and settings.max_memory and event.memory > settings.max_memory:
        proc = replace(proc, worn="memory")
    return _with_proc(state, proc)


def _worn_sibling(state: PoolState, proc: Proc) -> bool:
    """`proc` is a fresh process started to replace a worn worker of its slot."""
    return proc.worn is None and any(
        p.slot == proc.slot
        and p.pid != proc.pid
        and p.worn is not None
        and p.phase is not Phase.STOPPING
        and p.generation == proc.generation
        for p in state.procs
    )


def _recycle_failed(state: PoolState, slot: Slot, now: float, jitter: float) -> PoolState:
    """A fresh process died or missed readiness: the worn one keeps serving; retry later."""
    failures = slot.recycle_failures + 1
    delay = policy.restart_delay(failures, jitter)
    return _with_slot(state, replace(slot, recycle_failures=failures, recycle_at=now + delay))


def _exited(state: PoolState, event: Exited) -> tuple[PoolState, Notes]:
    if any(p.pid == event.pid for p in state.sessions):
        # A session's process: its session ended (or it failed to start). Nothing to refill.
        sessions = tuple(p for p in state.sessions if p.pid != event.pid)
        return replace(state, sessions=sessions), Notes()
    proc = state.proc(event.pid)
    if proc is None:
        return state, Notes()  # an orphan, or a process already accounted for
    original = state
    state = replace(state, procs=tuple(p for p in state.procs if p.pid != event.pid))
    slot = state.slots[proc.slot]
    committed = proc.generation == slot.generation
    if committed and proc.phase is not Phase.STOPPING:
        slot = replace(slot, last_exit=event.code)
        state = _with_slot(state, slot)
    if not state.accepting or slot.fate is not SlotFate.ACTIVE:
        return state, Notes()
    if proc.phase is Phase.STOPPING:
        # Drained, replaced, or stopped after a readiness miss (counted as a crash then).
        return state, Notes()
    if committed and proc.phase is Phase.STARTING and _worn_sibling(original, proc):
        return _recycle_failed(state, slot, event.now, event.jitter), Notes()
    if not committed:
        if proc.generation == state.target:
            # A candidate died before it was ready: the update is bad; old workers stay.
            reason = f"a replacement worker did not become ready: it exited with code {event.code}"
            return _abort(state, event.now, reason), Notes(rollout_finished=True)
        return state, Notes()  # a superseded candidate
    if any(
        p.slot == slot.index and p.generation == slot.generation and p.phase is not Phase.STOPPING
        for p in state.procs
    ):
        return state, Notes()
    uptime = event.now - proc.started if proc.phase is Phase.READY else 0.0
    return _crashed(state, slot, event.code, uptime, event.now, event.jitter)


def _crashed(
    state: PoolState, slot: Slot, code: int, uptime: float, now: float, jitter: float
) -> tuple[PoolState, Notes]:
    """A slot lost its worker: restart by policy, with backoff, or give up."""
    settings = state.settings
    slot = replace(slot, last_exit=code)
    if not policy.should_restart(settings.restart, code):
        return _with_slot(state, replace(slot, fate=SlotFate.EXITED)), Notes()
    window = tuple(t for t in slot.restart_times if now - t <= settings.restart_window)
    if policy.gives_up(window, now, settings.max_restarts, settings.restart_window):
        slot = replace(slot, fate=SlotFate.GAVE_UP, restart_times=window)
        return _with_slot(state, slot), Notes(gave_up=(slot.index,))
    failures = policy.consecutive_after_exit(slot.failures, uptime)
    delay = policy.restart_delay(failures, jitter)
    slot = replace(slot, failures=failures, restart_at=now + delay, restart_times=window)
    notes = Notes(crash_loop=((slot.index, failures, delay),)) if failures > 1 else Notes()
    return _with_slot(state, slot), notes


def _abort(state: PoolState, now: float, reason: str) -> PoolState:
    if state.rollout.verdict is not Verdict.RUNNING:
        return replace(state, failed=state.target)
    rollout = replace(state.rollout, verdict=Verdict.ABORTED, finished=now, reason=reason)
    return replace(state, failed=state.target, rollout=rollout)


# --- plan: close the gap ------------------------------------------------------------------


def plan(state: PoolState, now: float) -> Plan:
    """The actions that move the observed pool toward the desired one, at time `now`."""
    actions: list[Action] = []
    notes = Notes()
    settings = state.settings

    # 1. Deadlines, whatever else happens: a process past its drain deadline, a forced
    #    shutdown, a starting process past --ready-timeout, a silent watchdog.
    for proc in state.every_proc():
        if proc.killed:
            continue
        if state.forced:
            actions.append(Kill(proc.pid, "forced"))
        elif proc.stop_deadline is not None and now >= proc.stop_deadline:
            actions.append(Kill(proc.pid, "drain deadline"))
        elif (
            proc.phase is Phase.READY
            and settings.watchdog
            and now >= proc.last_ping + settings.watchdog
        ):
            actions.append(Kill(proc.pid, "watchdog"))
        else:
            continue
        state = _with_proc(state, replace(proc, killed=True))
        if state.forced:
            state = replace(state, killed_in_shutdown=True)
    for proc in state.every_proc():
        if proc.phase is Phase.STARTING and now >= proc.started + settings.ready_timeout:
            # Never ready in time: stop it (a short drain: it took no work). A candidate's
            # miss aborts the rollout; a slot's own worker is restarted when it has exited.
            state, stops = _stop(state, proc, now, settings.failed_grace)
            actions.extend(stops)
            notes = replace(notes, not_ready=(*notes.not_ready, proc.pid))
            if proc.slot < 0:
                continue  # a burst start: its waiting session is told by its exit
            slot = state.slots[proc.slot]
            if proc.generation != slot.generation:
                if proc.generation == state.target:
                    reason = (
                        "a replacement worker did not become ready within --ready-timeout "
                        f"{settings.ready_timeout:g}s"
                    )
                    state = _abort(state, now, reason)
                    notes = replace(notes, rollout_finished=True)
            elif state.accepting and slot.fate is SlotFate.ACTIVE:
                if _worn_sibling(state, replace(proc, phase=Phase.STARTING)):
                    state = _recycle_failed(state, slot, now, _jitter(proc.pid))
                    continue
                state, more = _crashed(state, slot, 1, 0.0, now, _jitter(proc.pid))
                notes = _merge(notes, more)

    # 2. Sessions asked to end get the stop signal once and their drain deadline; at
    #    shutdown, a running session gets it when the drain is over.
    for proc in state.sessions:
        if proc.stop_wanted:
            state, stops = _stop(state, proc, now, settings.drain_timeout)
            actions.extend(stops)
        elif proc.stop_at is not None and now >= proc.stop_at:
            state, stops = _stop(state, proc, now, settings.session_grace)
            actions.extend(stops)

    # 3. Shutdown: every live process gets the stop signal once (a running session: after
    #    the drain, above); nothing new starts.
    if not state.accepting:
        for proc in state.every_proc():
            if proc.phase is Phase.STOPPING:
                continue
            if proc.slot < 0 and proc.phase is Phase.READY:
                if proc.stop_at is None:
                    stop_at = now + settings.drain_timeout
                    state = _with_proc(state, replace(proc, stop_at=stop_at))
                continue
            state, stops = _stop(state, proc, now, settings.drain_timeout)
            actions.extend(stops)
        if not state.every_proc() and state.exit_code is None:
            code = _shutdown_code(state)
            state = replace(state, exit_code=code)
            actions.append(Finish(code))
        return Plan(state, tuple(actions), notes, _next_deadline(state))

    # 4. Candidates of a superseded target go (the newest target wins).
    for proc in state.procs:
        slot = state.slots[proc.slot]
        candidate = proc.generation != slot.generation
        if (
            proc.phase is not Phase.STOPPING
            and candidate
            and (
                proc.generation != state.target
                or state.failed == state.target
                or slot.fate is not SlotFate.ACTIVE
            )
        ):
            state, stops = _stop(state, proc, now, settings.failed_grace)
            actions.extend(stops)

    # 5. A ready candidate is committed: its slot moves to the target, the old worker drains.
    for proc in state.procs:
        slot = state.slots[proc.slot]
        if proc.phase is Phase.READY and proc.generation == state.target != slot.generation:
            slot = replace(
                slot, generation=state.target, handover=False, failures=0, restart_at=None
            )
            state = _with_slot(state, slot)
            notes = replace(notes, committed=(*notes.committed, slot.index))
            for old in state.procs:
                if (
                    old.slot == slot.index
                    and old.pid != proc.pid
                    and old.phase is not Phase.STOPPING
                ):
                    state, stops = _stop(state, old, now, settings.drain_timeout)
                    actions.extend(stops)

    # 6. Rollout bookkeeping: begun when some slot is behind the target, done when none is.
    state, started, finished = _rollout_progress(state, now)
    if started or finished:  # (a `replace` per plan costs more than the rest of a quiet one)
        notes = replace(
            notes, rollout_started=started, rollout_finished=notes.rollout_finished or finished
        )

    # 7. Empty slots are filled: at once after a commit or handover, after the backoff
    #    after a crash.
    live = {p.slot for p in state.procs if p.phase is not Phase.STOPPING}  # (no proc changes)
    for slot in state.slots:
        if slot.fate is not SlotFate.ACTIVE:
            continue
        if slot.index in live:
            continue
        if slot.handover:
            if any(p.slot == slot.index for p in state.procs):
                continue  # the old worker has not exited yet: never two at once
            generation = state.target if state.failed != state.target else slot.generation
            if generation != slot.generation:
                actions.append(Start(slot.index, _free_lane(state, slot.index), generation))
                continue
            slot = replace(slot, handover=False)
            state = _with_slot(state, slot)
        if slot.restart_at is not None and now < slot.restart_at:
            continue
        if slot.restart_at is not None:
            times = (*slot.restart_times, now)
            slot = replace(slot, restart_at=None, restarts=slot.restarts + 1, restart_times=times)
            state = _with_slot(state, slot)
        actions.append(Start(slot.index, _free_lane(state, slot.index), slot.generation))

    # 8. A session that waits for a process gets one started for it, on the newest good
    #    generation (read-after-write), unless that generation was refused.
    good = state.target if state.failed != state.target else _newest_committed(state)
    actions.extend(Start(-1, 0, good) for _ in range(state.bursts))

    # 9. The rollout advances: `surge` slots at a time, in slot order.
    if state.target != state.failed:
        state, advancing = _advance(state, now, actions)
        actions.extend(advancing)

    # 10. Worn workers are replaced: ready-first, `surge` slots at a time, then drained.
    state, recycling, recycled = _recycle(state, now, actions)
    actions.extend(recycling)
    if recycled:
        notes = replace(notes, recycling=recycled)

    # 11. Every slot ended (policy or give-up) and nothing runs: the pool is finished.
    if (
        state.slots
        and all(s.fate is not SlotFate.ACTIVE for s in state.slots)
        and state.exit_code is None
    ):
        # Workers still draining are stopped like a shutdown, then the pool ends.
        for proc in state.procs:
            if proc.phase is not Phase.STOPPING:
                state, stops = _stop(state, proc, now, settings.drain_timeout)
                actions.extend(stops)
        if not state.procs:
            code = _finished_code(state)
            state = replace(state, exit_code=code)
            actions.append(Finish(code))
    return Plan(state, tuple(actions), notes, _next_deadline(state))


def _newest_committed(state: PoolState) -> int:
    active = [s.generation for s in state.slots if s.fate is SlotFate.ACTIVE]
    return max(active) if active else state.target


def _stop(state: PoolState, proc: Proc, now: float, grace: float) -> tuple[PoolState, list[Action]]:
    """The stop signal, once; a process already SIGKILLed gets none."""
    current = state.proc(proc.pid)
    if current is None or current.phase is Phase.STOPPING:
        return state, []
    stopped = replace(current, phase=Phase.STOPPING, stop_deadline=now + grace)
    return _with_proc(state, stopped), [] if current.killed else [Stop(proc.pid)]


def _jitter(pid: int) -> float:
    """A deterministic spread in [0, 1) for restarts the planner decides on its own."""
    return (pid * 2654435761 % 2**32) / 2**32


def _merge(notes: Notes, more: Notes) -> Notes:
    return replace(
        notes,
        gave_up=(*notes.gave_up, *more.gave_up),
        crash_loop=(*notes.crash_loop, *more.crash_loop),
    )


def _free_lane(state: PoolState, slot: int) -> int:
    """The lowest lane no live process of the slot holds (0 at rest, 1 during a rollout)."""
    taken = {p.lane for p in state.procs if p.slot == slot}
    lane = 0
    while lane in taken:
        lane += 1
    return lane


def _rollout_progress(state: PoolState, now: float) -> tuple[PoolState, bool, bool]:
    active = [s for s in state.slots if s.fate is SlotFate.ACTIVE]
    behind = [s for s in active if s.generation != state.target]
    rollout = state.rollout
    if rollout.verdict is Verdict.RUNNING and rollout.to_generation != state.target:
        # Superseded: the running rollout now aims at the newest target.
        rollout = replace(rollout, to_generation=state.target)
        state = replace(state, rollout=rollout)
    if behind and state.failed != state.target and rollout.verdict is not Verdict.RUNNING:
        if rollout.to_generation == state.target and rollout.verdict is Verdict.ABORTED:
            return state, False, False
        froms = sorted({s.generation for s in behind})
        rollout = Rollout(Verdict.RUNNING, froms[0], state.target, started=now)
        return replace(state, rollout=rollout), True, False
    if not behind and rollout.verdict is Verdict.RUNNING:
        rollout = replace(rollout, verdict=Verdict.SUCCEEDED, finished=now)
        return replace(state, rollout=rollout), False, True
    return state, False, False


def _advance(state: PoolState, now: float, planned: list[Action]) -> tuple[PoolState, list[Action]]:
    settings = state.settings
    actions: list[Action] = []
    starting = {a.slot for a in planned if isinstance(a, Start)}

    def upgrading(slot: Slot) -> bool:
        return slot.handover or any(
            p.slot == slot.index and p.generation == state.target and p.phase is not Phase.STOPPING
            for p in state.procs
        )

    behind = [
        s
        for s in state.slots
        if s.fate is SlotFate.ACTIVE and s.generation != state.target and s.index not in starting
    ]
    busy = sum(1 for s in behind if upgrading(s))
    budget = max(1, settings.surge) - busy
    for slot in behind:
        if budget <= 0:
            break
        if upgrading(slot):
            continue
        live = [p for p in state.procs if p.slot == slot.index and p.phase is not Phase.STOPPING]
        if settings.surge <= 0:
            # Singleton handover: stop the old worker first; the new one starts once it is gone.
            state = _with_slot(state, replace(slot, handover=True))
            for proc in live:
                state, stops = _stop(state, proc, now, settings.drain_timeout)
                actions.extend(stops)
            if not any(p.slot == slot.index for p in state.procs):
                actions.append(Start(slot.index, _free_lane(state, slot.index), state.target))
        else:
            # Also for a slot backing off after a crash: the new version may be its fix, and
            # its backoff restart waits while the candidate lives (step 6).
            actions.append(Start(slot.index, _free_lane(state, slot.index), state.target))
        budget -= 1
    return state, actions


def _age_limit(state: PoolState, proc: Proc) -> float | None:
    """When `proc` comes due for recycling by age (spread per process), or None."""
    max_age = state.settings.max_age
    if not max_age or proc.slot < 0:
        return None
    return proc.started + max_age * (1.0 - RECYCLE_SPREAD * _jitter(proc.pid))


def _recycle(
    state: PoolState, now: float, planned: list[Action]
) -> tuple[PoolState, list[Action], tuple[tuple[int, int, str], ...]]:
    settings = state.settings
    if not (settings.max_age or settings.max_memory or settings.max_calls):
        return state, [], ()
    actions: list[Action] = []
    recycled: list[tuple[int, int, str]] = []
    for proc in state.procs:  # age is a fact of the clock: recorded here
        due = _age_limit(state, proc)
        if proc.phase is Phase.READY and proc.worn is None and due is not None and now >= due:
            state = _with_proc(state, replace(proc, worn="age"))

    def live(slot: Slot) -> list[Proc]:
        return [
            p
            for p in state.procs
            if p.slot == slot.index
            and p.phase is not Phase.STOPPING
            and p.generation == slot.generation
        ]

    # A fresh process is ready: the worn one drains (the stop signal once, never a kill).
    for slot in state.slots:
        procs = live(slot)
        if any(p.worn is None and p.phase is Phase.READY for p in procs):
            for old in [p for p in procs if p.worn is not None]:
                state, stops = _stop(state, old, now, settings.drain_timeout)
                actions.extend(stops)
                state = _with_slot(
                    state, replace(state.slots[slot.index], recycle_failures=0, recycle_at=None)
                )
    starting = {a.slot for a in [*planned, *actions] if isinstance(a, Start)}
    busy = sum(
        1
        for s in state.slots
        if s.handover
        or (
            any(p.worn is None and p.phase is Phase.STARTING for p in live(s))
            and any(p.worn is not None for p in live(s))
        )
    )
    budget = max(1, settings.surge) - busy
    for slot in state.slots:
        procs = live(slot)
        worn = [p for p in procs if p.worn is not None and p.phase is Phase.READY]
        if (
            budget <= 0
            or not worn
            or slot.fate is not SlotFate.ACTIVE
            or slot.handover
            or slot.index in starting
            or any(p.worn is None for p in procs)  # a fresh one is on its way
            or (slot.generation != state.target and state.failed != state.target)  # rolling
            or any(
                p.slot == slot.index and p.generation != slot.generation
                for p in state.procs
                if p.phase is not Phase.STOPPING
            )
            or (slot.recycle_at is not None and now < slot.recycle_at)
        ):
            continue
        if settings.surge <= 0:
            # Singleton: the worn worker drains first; the fresh one starts once it is gone.
            state = _with_slot(state, replace(slot, handover=True))
            for proc in worn:
                state, stops = _stop(state, proc, now, settings.drain_timeout)
                actions.extend(stops)
        else:
            actions.append(Start(slot.index, _free_lane(state, slot.index), slot.generation))
        recycled.append((slot.index, worn[0].pid, worn[0].worn or ""))
        budget -= 1
    return state, actions, tuple(recycled)


def _next_deadline(state: PoolState) -> float | None:
    times: list[float] = []
    for proc in state.every_proc():
        if proc.killed:
            continue
        if proc.stop_deadline is not None:
            times.append(proc.stop_deadline)
        elif proc.stop_at is not None:
            times.append(proc.stop_at)
        elif proc.phase is Phase.STARTING:
            times.append(proc.started + state.settings.ready_timeout)
        elif proc.phase is Phase.READY and state.settings.watchdog:
            times.append(proc.last_ping + state.settings.watchdog)
        due = _age_limit(state, proc)
        if proc.phase is Phase.READY and proc.worn is None and due is not None:
            times.append(due)
    if state.accepting:
        times.extend(s.restart_at for s in state.slots if s.restart_at is not None)
        times.extend(s.recycle_at for s in state.slots if s.recycle_at is not None)
    return min(times) if times else None


def _shutdown_code(state: PoolState) -> int:
    if state.settings.exec_like:
        code = state.slots[0].last_exit
        return code if code is not None else 0
    return 1 if state.killed_in_shutdown else 0


def _finished_code(state: PoolState) -> int:
    if all(s.fate is SlotFate.GAVE_UP for s in state.slots):
        return 1
    codes = [s.last_exit or 0 for s in state.slots]
    if state.settings.exec_like:
        return codes[0]
    return next((c for c in codes if c != 0), 0)

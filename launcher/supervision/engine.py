"""The executor: applies the planner's actions to real processes and feeds back what happened.

One task owns the pool. Everything else — the reaper, readiness probes, the notify socket,
log matches from relay threads, signals, reload requests — only *posts* an event; the event
is recorded at once (`planner.observe`) and the owner task wakes, asks `planner.plan` what to
do and does it. No other code starts or stops a process, so no two decisions can race: a
crash backoff cannot overwrite a rollout's swap, a rollout cannot start a worker after
shutdown began, and every stop signal is sent once (the planner marks it before we send it).
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, Protocol

import anyio
import anyio.abc

from launcher.config import RestartPolicy, RunConfig
from launcher.environment import EnvironmentLayers
from launcher.errors import LauncherError, VersionRegression
from launcher.ops.status import (
    CensusEntry,
    PoolStatus,
    RolloutState,
    RolloutStatus,
    WorkerState,
    WorkerStatus,
)
from launcher.process import reaper
from launcher.process.readiness import ReadySpec, probe_until_ready
from launcher.process.template import Template
from launcher.process.worker import Worker, WorkerFactory
from launcher.supervision import planner
from launcher.supervision.exits import ExitLedger
from launcher.supervision.planner import Phase, SlotFate, Verdict

Log = Callable[..., None]
Clock = Callable[[], float]


class ProcessFactory(Protocol):
    """Starts one process of the pool (a worker, or a session-mode process)."""

    def spawn(self, index: int, layers: EnvironmentLayers, port: int | None = None) -> Worker:
        """Raises OSError when the process cannot be started."""


_VERDICT_STATE = {
    Verdict.IDLE: RolloutState.IDLE,
    Verdict.RUNNING: RolloutState.RUNNING,
    Verdict.SUCCEEDED: RolloutState.SUCCEEDED,
    Verdict.ABORTED: RolloutState.ABORTED,
}


ABORT_LINES = 10  # of a failed replacement's output, in the abort report


def settings_from(config: RunConfig, spec: ReadySpec) -> planner.Settings:
    return planner.Settings(
        size=config.workers,
        surge=config.max_surge,
        restart=config.restart,
        max_restarts=config.max_restarts,
        restart_window=config.restart_window,
        ready_timeout=config.ready_timeout,
        drain_timeout=config.drain_timeout,
        failed_grace=min(config.drain_timeout, 10.0),
        watchdog=config.watchdog if spec.kind == "notify" else None,
        exec_like=config.workers == 1 and config.restart is RestartPolicy.NEVER,
        max_age=config.max_worker_age,
        max_memory=config.max_worker_memory,
        max_calls=config.max_worker_calls,
    )


class Engine:
    """One pool of processes, driven by the planner: the workers of worker mode, or the warm
    and session processes of session mode (which sets the hooks below)."""

    def __init__(
        self,
        config: RunConfig,
        layers: EnvironmentLayers,
        spec: ReadySpec,
        factory: ProcessFactory,
        log: Log,
        *,
        settings: planner.Settings | None = None,
        clock: Clock = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.config = config
        self.spec = spec
        self.factory = factory
        self.log = log
        self.clock = clock
        self.rng = rng
        self.state = planner.initial(settings or settings_from(config, spec), 1)
        self.generations: dict[int, EnvironmentLayers] = {1: layers}
        self.workers: dict[int, Worker] = {}  # pid -> live worker of this pool
        self.on_change: Callable[[], None] = lambda: None
        self.exit_code: int | None = None
        self._wake = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._loop: Any = None
        self._waiters: list[tuple[int, anyio.Event, list[dict[str, object]]]] = []
        self._reload_reasons: list[str] = []
        self._reload_wake = anyio.Event()
        self._rollout_started_at: float | None = None
        self._bursts: list[tuple[anyio.Event, list[Worker | OSError]]] = []
        self._deferring = 0  # session starts being answered: refills may wait (see defer)
        # Hooks for session mode; worker mode keeps the defaults.
        self.on_spawned: Callable[[Worker], None] = lambda worker: None
        self.on_exited: Callable[[Worker], None] = lambda worker: None
        self.stop_process: Callable[[Worker, bool], None] = lambda worker, session: worker.stop(
            self.config.stop_signal
        )
        # What the failed replacement of the last aborted rollout printed last (masked).
        self._abort_lines: tuple[str, ...] = ()
        # The last few workers that exited, kept for the abort report (their output).
        self._exited: list[Worker] = []
        # Collisions reported before the loop runs (a warm worker fails to bind quickly) wait
        # for it: who holds the port is only known once the workers are adopted.
        self._early_collisions: list[tuple[Worker, int]] = []
        self.exits = ExitLedger(config.stop_signal)  # why processes ended (exits.py)
        self._slot_exit: dict[int, str] = {}  # slot -> why its own worker last ended
        self.memory: dict[int, int] = {}  # pid -> bytes of its process group, last sampled
        if isinstance(factory, WorkerFactory):  # session mode's factory reports nothing
            self._early_collisions += factory.early_collisions
            factory.on_port_collision = self._port_collision

    # --- events in ---------------------------------------------------------------------

    def post(self, event: planner.Event) -> None:
        """Record a fact and wake the owner task (event-loop thread only)."""
        before = self.state.proc(event.pid) if isinstance(event, planner.Ready) else None
        self.state, notes = planner.observe(self.state, event)
        self._report(notes)
        if before is not None and before.phase is Phase.STARTING:
            self.exits.ready(before.pid)
            worker = self.workers.get(before.pid)
            self.log(
                "worker_ready",
                slot=before.slot,
                pid=before.pid,
                version=self._version(before.generation),
                seconds=round(worker.uptime(), 3) if worker is not None else None,
            )
        self._wake.set()

    def adopt(self, worker: Worker, slot: int) -> None:
        """A worker spawned before the event loop existed (the launch critical path)."""
        self._track(worker, slot, 0, 1)

    def reap(self) -> None:
        """Collect every exited child (orphans too); our workers' exits come to `_reaped`."""
        reaper.reap()

    def _reaped(self, worker: Worker, status: int) -> None:
        pid = worker.pid
        self.workers.pop(pid, None)
        self.memory.pop(pid, None)
        self._exited = [*self._exited[-(2 * self.config.workers + 2) :], worker]
        worker.reaped(status)
        if worker.interrupted:  # the terminal's Ctrl-C reached our foreground worker
            self.shutdown()
        worker.kill_group()  # the main process is gone: its group goes with it
        worker.remove_private_files()
        if worker.exited is not None:
            worker.exited.set()
        code = worker.exit_code if worker.exit_code is not None else 1
        proc = self.state.proc(pid)
        record = self.exits.exited(
            pid,
            status,
            stop_sent=worker.stop_sent or worker.interrupted,  # Ctrl-C: the user's stop
            started=worker.started_monotonic,
            slot=worker.slot,
            version=worker.version,
            last_lines=tuple(worker.last_lines(ABORT_LINES)),
        )
        if self._own_worker(proc):
            self._slot_exit[worker.slot] = record.text
        extra = {"last_lines": list(record.last_lines)} if record.last_lines else {}
        if proc is not None and proc.phase is Phase.STOPPING and worker.stopped_at:
            self.log(
                "worker_drained",
                slot=worker.slot,
                pid=pid,
                code=code,
                reason=record.text,
                version=worker.version,
                seconds=round(time.monotonic() - worker.stopped_at, 3),
            )
        else:
            self.log(
                "worker_exited",
                slot=worker.slot,
                pid=pid,
                code=code,
                reason=record.text,
                version=worker.version,
                uptime=round(worker.uptime(), 3),
                **extra,
                level="info" if record.reason == "clean" else "warning",
            )
        self.post(planner.Exited(pid, code, self.clock(), self.rng()))
        self.on_exited(worker)

    def notified(self, pid: int, fields: dict[str, str]) -> None:
        """A datagram on the notify socket, from a worker or one of its processes."""
        worker = self.workers.get(pid)
        if worker is None:
            from launcher.process.notify_socket import process_group

            group = process_group(pid)
            worker = self.workers.get(group) if group is not None else None
        if worker is None:
            return
        now = self.clock()
        if fields.get("READY") == "1" and self.spec.kind == "notify":
            self.post(planner.Ready(worker.pid, now))
        if fields.get("WATCHDOG") == "1":
            self.post(planner.Ping(worker.pid, now))
        if fields.get("X_AGENT_RUN_CALL_DONE") == "1":
            self.post(planner.WorkDone(worker.pid, now))
        if fields.get("STOPPING") == "1":
            self.log("worker_stopping_itself", slot=worker.slot, pid=worker.pid)
            self.post(planner.Stopping(worker.pid, now))
        if "STATUS" in fields:
            worker.status_text = fields["STATUS"][:200]
            self.on_change()

    def shutdown(self) -> None:
        self.post(planner.Shutdown(self.clock()))
        self._fail_waiters("the launcher is shutting down")

    def force(self) -> None:
        self.post(planner.Force(self.clock()))

    def forward(self, signum: int) -> None:
        for worker in list(self.workers.values()):
            worker.send(signum)

    # --- session mode ------------------------------------------------------------------

    def wanted_generation(self) -> int:
        """What a new session must run: the newest target, unless that one was refused."""
        state = self.state
        if state.failed != state.target:
            return state.target
        active = [s.generation for s in state.slots if s.fate is SlotFate.ACTIVE]
        return max(active) if active else state.target

    def warm(self, generation: int, phase: Phase) -> list[Worker]:
        """Warm processes (in slots) of `generation` in `phase`, oldest first."""
        return [
            self.workers[p.pid]
            for p in self.state.procs
            if p.generation == generation and p.phase is phase and p.pid in self.workers
        ]

    def take(self, worker: Worker) -> None:
        """Hand a ready warm process to a session: it leaves its slot, which is refilled."""
        self.post(planner.Taken(worker.pid, self.clock()))

    async def burst(self) -> Worker:
        """Start a process for a waiting session (no warm one was ready); raises OSError."""
        done = anyio.Event()
        holder: list[Worker | OSError] = []
        self._bursts.append((done, holder))
        self.post(planner.Burst(self.clock()))
        await done.wait()
        result = holder[0]
        if isinstance(result, OSError):
            raise result
        return result

    def end_session(self, pid: int) -> None:
        self.post(planner.EndSession(pid, self.clock()))

    def defer_starts(self) -> None:
        """A session start is being answered: new warm processes wait (a fork costs the
        event loop a few ms that the answer must not wait for), as long as a warm one is
        ready for the next start. Pair with `resume_starts`."""
        self._deferring += 1

    def resume_starts(self) -> None:
        self._deferring = max(0, self._deferring - 1)
        if not self._deferring:
            self._wake.set()

    def _defers(self, action: planner.Action) -> bool:
        """Whether this start waits for the session starts being answered: a refill does
        while a warm process is ready; never a start a session waits for (a burst, slot
        -1), and never the last refill, or overlapping starts would keep the pool empty."""
        if not self._deferring or not isinstance(action, planner.Start) or action.slot < 0:
            return False
        return bool(self.warm(self.wanted_generation(), Phase.READY))

    def new_target(self, layers: EnvironmentLayers) -> int:
        """Roll out `layers` now (session mode's read-after-write path); its generation."""
        generation = max(self.generations) + 1
        self.generations[generation] = layers
        self.post(planner.NewTarget(generation, self.clock()))
        return generation

    def ready(self, worker: Worker) -> None:
        """Session mode: the process imported the agent (it said so on its channel)."""
        if worker.pid in self.workers:
            self.post(planner.Ready(worker.pid, self.clock()))

    # --- reloads -----------------------------------------------------------------------

    def request(self, reason: str) -> None:
        """Ask for a rollout to the store's current state (collapses with pending requests)."""
        self.log("rollout_requested", reason=reason)
        self._reload_reasons.append(reason)
        self._reload_wake.set()

    async def request_and_wait(self, reason: str) -> dict[str, object]:
        """Request a rollout and wait for the result of the one that serves it."""
        if not self.state.accepting:
            return {"ok": False, "error": "the launcher is shutting down"}
        done = anyio.Event()
        result: list[dict[str, object]] = []
        # Served by the first generation made after this request.
        self._waiters.append((max(self.generations) + 1, done, result))
        self.request(reason)
        await done.wait()
        return result[0]

    async def _serve_reloads(self, load: Callable[[], EnvironmentLayers]) -> None:
        while True:
            await self._reload_wake.wait()
            self._reload_wake = anyio.Event()
            if not self._reload_reasons:
                continue
            self._reload_reasons.clear()
            if not self.state.accepting:
                self._fail_waiters("the launcher is shutting down")
                continue
            try:
                layers = load()
            except LauncherError as error:
                if isinstance(error, VersionRegression):
                    # An older set file put back (#12): refused by the secrets source; the
                    # pool keeps serving what it runs.
                    self._refused += 1
                    self.log(
                        "secrets_version_refused",
                        reason=error.message,
                        serving_version=self.serving_version(),
                        level="error",
                    )
                self.log("rollout_skipped", reason=error.message, level="error")
                self._skipped = error.message
                self._resolve_waiters(
                    max(self.generations) + 1, {"ok": False, "error": error.message}
                )
                self.on_change()
                continue
            generation = max(self.generations) + 1
            self.generations[generation] = layers
            self.post(planner.NewTarget(generation, self.clock()))
            if all(s.fate is not SlotFate.ACTIVE for s in self.state.slots):
                self._resolve_waiters(generation, {"ok": False, "error": "no worker is running"})

    def _resolve_waiters(self, generation: int, result: dict[str, object]) -> None:
        keep = []
        for wanted, event, holder in self._waiters:
            if wanted <= generation:
                holder.append(result)
                event.set()
            else:
                keep.append((wanted, event, holder))
        self._waiters = keep

    def _fail_waiters(self, message: str) -> None:
        self._resolve_waiters(1 << 62, {"ok": False, "error": message})

    # --- the owner task ----------------------------------------------------------------

    async def run(
        self,
        load: Callable[[], EnvironmentLayers],
        *,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> int:
        """Supervise until the pool is finished; returns the launcher's exit code."""
        import asyncio

        self._loop = asyncio.get_running_loop()
        early, self._early_collisions = self._early_collisions, []
        for worker, port in early:
            self._port_collision(worker, port)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for worker in list(self.workers.values()):
                self._attach(worker)
            tg.start_soon(self._serve_reloads, load)
            if self.state.settings.max_memory:
                from launcher.supervision.recycling import sample_memory

                tg.start_soon(sample_memory, self)
            self.reap()
            task_status.started()
            code = await self._drive()
            tg.cancel_scope.cancel()
        return code

    async def _drive(self) -> int:
        asked = False
        while True:
            self._wake = anyio.Event()
            now = self.clock()
            result = planner.plan(self.state, now)
            template = None if asked else self._template_to_ask(result.actions)
            if template is not None:
                # Its fork answer is awaited on this loop: a stuck template must not hold
                # it (signals, probes, the control socket). Asked first, then planned again
                # (the plan is pure): what happened meanwhile is in the new plan.
                asked = True
                await template.answering()
                continue
            asked = False
            self.state = result.state
            self._report(result.notes)
            deferred = False
            for action in result.actions:
                if isinstance(action, planner.Finish):
                    self.exit_code = action.code
                    self.on_change()
                    return action.code
                if self._defers(action):
                    deferred = True
                    continue
                self._apply(action)
            self._settle_waiters()
            self.on_change()
            if deferred:
                # Until the starts are answered, or anything else happens (a burst, an
                # exit): a burst must never wait for the answer of a start waiting for it.
                with anyio.move_on_after(1.0):
                    await self._wake.wait()
                continue
            if result.actions:
                continue  # what we did (a start) is already observed: plan again
            timeout = None if result.wake_at is None else max(0.0, result.wake_at - self.clock())
            with anyio.move_on_after(timeout):
                await self._wake.wait()

    def _template_to_ask(self, actions: Sequence[planner.Action]) -> Template | None:
        """The template the next start would fork from, when these actions start one."""
        template = getattr(getattr(self.factory, "launch", None), "__self__", None)
        if not isinstance(template, Template) or not template.serving():
            return None
        return template if any(isinstance(a, planner.Start) for a in actions) else None

    def _apply(self, action: planner.Action) -> None:
        if isinstance(action, planner.Start):
            self._start(action)
        elif isinstance(action, planner.Stop):
            worker = self.workers.get(action.pid)
            if worker is not None:
                proc = self.state.proc(action.pid)
                self.stop_process(worker, proc is not None and proc.slot < 0)
                worker.stopped_at = time.monotonic()
                self.log(
                    "worker_stopping", slot=worker.slot, pid=worker.pid, version=worker.version
                )
        elif isinstance(action, planner.Kill):
            worker = self.workers.get(action.pid)
            if worker is not None:
                event = {
                    "drain deadline": "worker_drain_timeout",
                    "watchdog": "worker_watchdog_expired",
                }.get(action.reason, "worker_killed")
                self.log(
                    event,
                    slot=worker.slot,
                    pid=worker.pid,
                    reason=action.reason,
                    level="warning",
                )
                self.exits.killed(worker.pid, action.reason)
                worker.stop_sent = True
                worker.send(signal.SIGKILL)
                worker.kill_group()

    def _start(self, action: planner.Start) -> None:
        layers = self.generations[action.generation]
        port = self.port(action.slot, action.lane) if action.slot >= 0 else None
        try:
            worker = self.factory.spawn(action.slot, layers, port=port)
        except OSError as error:
            self.log("worker_start_failed", slot=action.slot, error=error.strerror, level="error")
            self.post(planner.StartFailed(action.slot, action.generation, self.clock(), self.rng()))
            if action.slot < 0 and self._bursts:
                done, holder = self._bursts.pop(0)
                holder.append(error)
                done.set()
            return
        if action.slot < 0:  # a burst start: it belongs to the session that asked for it
            self._track(worker, action.slot, action.lane, action.generation)
            self._attach(worker)
            if self._bursts:
                done, holder = self._bursts.pop(0)
                holder.append(worker)
                done.set()
            return
        slot = self.state.slots[action.slot]
        event = "replacement_started" if action.generation != slot.generation else "worker_started"
        if slot.restarts and action.generation == slot.generation:
            event = "worker_restarted"
        self.log(
            event,
            slot=action.slot,
            pid=worker.pid,
            version=worker.version,
            port=port,
            restarts=slot.restarts,
        )
        self._track(worker, action.slot, action.lane, action.generation)
        self._attach(worker)

    def port(self, slot: int, lane: int) -> int | None:
        """Lane 0 at rest, lane 1 for a replacement: never the port of the worker it replaces."""
        base = self.config.port_base
        return None if base is None else base + slot + lane * self.config.workers

    def _track(self, worker: Worker, slot: int, lane: int, generation: int) -> None:
        self.workers[worker.pid] = worker
        self.exits.spawned(worker.pid)
        self.on_spawned(worker)
        # The process layer registered it at the fork; its exit now comes to the engine.
        reaper.register(worker.pid, lambda status: self._reaped(worker, status))
        worker.generation = generation
        self.state, _ = planner.observe(
            self.state, planner.Started(worker.pid, slot, lane, generation, self.clock())
        )

    def _attach(self, worker: Worker) -> None:
        """Loop-side companions of a worker: its exit event and its readiness check."""
        worker.exited = anyio.Event()
        if not worker.alive:
            worker.exited.set()
        assert self._tg is not None
        if self.spec.kind == "channel":
            pass  # session mode: the process says so on its channel (see ready())
        elif self.spec.kind == "log":
            # The latch was made before the spawn: a match read before now is kept.
            loop = self._loop
            pid = worker.pid
            worker.log_match.subscribe(lambda: loop.call_soon_threadsafe(self._post_ready, pid))
        elif self.spec.kind != "notify":
            self._tg.start_soon(self._readiness, worker)

    def _post_ready(self, pid: int) -> None:
        if pid in self.workers:
            self.post(planner.Ready(pid, self.clock()))

    async def _readiness(self, worker: Worker) -> None:
        """`started`, `tcp:` and `http:` checks, each on this worker's own port."""
        assert worker.exited is not None
        with anyio.move_on_after(self.config.ready_timeout):
            async with anyio.create_task_group() as race:

                async def gone() -> None:
                    await worker.exited.wait()  # type: ignore[union-attr]
                    race.cancel_scope.cancel()

                async def check() -> None:
                    if self.spec.kind == "started":
                        await anyio.sleep(self.config.ready_delay)
                    else:
                        await probe_until_ready(self.spec, worker.port)
                    if worker.alive:
                        self.post(planner.Ready(worker.pid, self.clock()))
                    race.cancel_scope.cancel()

                race.start_soon(gone)
                race.start_soon(check)

    # --- reporting ---------------------------------------------------------------------

    _skipped: str | None = None
    _refused = 0  # store versions refused as older than one already served (#12)

    def _report(self, notes: planner.Notes) -> None:
        for pid in notes.not_ready:
            self.exits.missed_readiness(pid)
            missed = self.state.proc(pid)
            if missed is not None and self._own_worker(replace(missed, phase=Phase.STARTING)):
                self._slot_exit[missed.slot] = "readiness-timeout"
            worker = self.workers.get(pid)
            self.log(
                "worker_not_ready",
                slot=worker.slot if worker else None,
                pid=pid,
                timeout=self.config.ready_timeout,
                level="warning",
            )
        for slot in notes.gave_up:
            self.log(
                "slot_gave_up",
                slot=slot,
                restarts=self.state.slots[slot].restarts,
                window=self.config.restart_window,
                level="error",
            )
        for slot, failures, delay in notes.crash_loop:
            self.log(
                "worker_crash_loop",
                slot=slot,
                failures=failures,
                delay=round(delay, 3),
                level="warning",
            )
        rollout = self.state.rollout
        if notes.rollout_started:
            self._rollout_started_at = time.time()
            self._skipped = None
            self._abort_lines = ()
            self.log(
                "rollout_started",
                from_version=self._version(rollout.from_generation),
                to_version=self._version(rollout.to_generation),
                workers=self.config.workers,
            )
        for slot, pid, why in notes.recycling:
            proc = self.state.proc(pid)
            self.log(
                "worker_recycling",
                slot=slot,
                pid=pid,
                reason=why,
                age=round(self.clock() - proc.started, 1) if proc is not None else None,
                memory=self.memory.get(pid),
                calls=proc.calls if proc is not None else None,
            )
        for slot in notes.committed:
            self.log("worker_replaced", slot=slot, version=self._version(self.state.target))
        if notes.rollout_finished or (
            rollout.verdict is Verdict.SUCCEEDED
            and rollout.finished is not None
            and self._rollout_started_at is not None
        ):
            self._rollout_finished()

    def _rollout_finished(self) -> None:
        rollout = self.state.rollout
        if self._rollout_started_at is None or rollout.verdict is Verdict.RUNNING:
            return
        seconds = round(time.time() - self._rollout_started_at, 3)
        self._rollout_started_at = None
        version = self._version(rollout.to_generation)
        if rollout.verdict is Verdict.SUCCEEDED:
            self.log("rollout_succeeded", to_version=version, seconds=seconds)
        elif self._tg is not None:
            self._tg.start_soon(self._report_abort, version, self.serving_version(), seconds)

    def _failed_candidate(self) -> Worker | None:
        """The newest process of the aborted rollout's target: the replacement that failed."""
        target = self.state.rollout.to_generation
        candidates = [w for w in [*self._exited, *self.workers.values()] if w.generation == target]
        return max(candidates, key=lambda w: w.started_monotonic, default=None)

    async def _report_abort(self, version: int | None, serving: int | None, seconds: float) -> None:
        """`rollout_aborted` with the failed replacement's last lines (masked) and its port."""
        worker = self._failed_candidate()
        fields: dict[str, object] = {}
        if worker is not None:
            if worker.relay is not None:  # its last lines may still be on their way
                await anyio.to_thread.run_sync(worker.relay.wait, 2.0)
            self._abort_lines = tuple(worker.last_lines(ABORT_LINES))
            fields = {
                "replacement_pid": worker.pid,
                "slot": worker.slot,
                "port": worker.port,
                "exit_reason": self._exit_text(worker.pid),
            }
            if worker.port_collision is not None:
                fields["port_in_use"] = worker.port_collision or "unknown"
            self.on_change()
        self.log(
            "rollout_aborted",
            to_version=version,
            serving_version=serving,
            reason=self.state.rollout.reason,
            **fields,
            last_lines=list(self._abort_lines),
            seconds=seconds,
            level="error",
        )

    def _port_collision(self, worker: Worker, port: int) -> None:
        """From a relay thread: name the port, its holder and the fix (once per worker)."""
        if self._loop is None:
            self._early_collisions.append((worker, port))
            return
        from launcher.process import port_conflict

        found = port_conflict.holder(port) if port else None
        state = self.state  # an immutable snapshot: safe to read from this thread
        workers = {}
        for w in list(self.workers.values()):
            proc = state.proc(w.pid)
            phase = "?" if proc is None else proc.phase.value
            workers[w.pid] = (w.slot, w.version, "draining" if phase == "stopping" else phase)
        fields = {
            "slot": worker.slot,
            "pid": worker.pid,
            "port": port or "unknown",
            "held_by": port_conflict.owner_text(found, workers) if port else "unknown",
            "fix": port_conflict.FIX,
            "level": "error",
        }
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: self.log("port_in_use", **fields))

    def _settle_waiters(self) -> None:
        rollout = self.state.rollout
        if rollout.verdict is Verdict.RUNNING or rollout.to_generation is None:
            return
        version = self._version(rollout.to_generation)
        if rollout.verdict is Verdict.SUCCEEDED:
            message = f"rolled {self.config.workers} worker(s) to v{version}"
            result: dict[str, object] = {"ok": True, "message": message, "version": version}
        else:
            reason = rollout.reason or "aborted"
            failed = self._failed_candidate()
            why = self._exit_text(failed.pid) if failed is not None else None
            result = {
                "ok": False,
                "error": f"{reason}; old workers kept serving",
                "version": version,
                "exit_reason": why,
            }
        self._resolve_waiters(rollout.to_generation, result)

    def _own_worker(self, proc: planner.Proc | None) -> bool:
        """`proc` is its slot's own worker (committed, not draining): its exit is the slot's."""
        if proc is None or proc.slot < 0 or proc.phase is Phase.STOPPING:
            return False
        return proc.generation == self.state.slots[proc.slot].generation

    def _exit_text(self, pid: int) -> str | None:
        """Why process `pid` ended, or what will be said when it does (a readiness miss)."""
        reason = self.exits.by_pid.get(pid)
        if reason is not None:
            return reason.text
        kind = self.exits.provisional(pid)
        return kind.value if kind is not None else None

    def _wall(self, moment: float | None) -> float | None:
        """A planner time (our clock) as wall-clock seconds, for status."""
        return None if moment is None else time.time() - (self.clock() - moment)

    def _version(self, generation: int | None) -> int | None:
        layers = self.generations.get(generation) if generation is not None else None
        return layers.secrets_version if layers is not None else None

    def serving_version(self) -> int | None:
        """The version the pool serves: the newest committed one (never a refused target)."""
        generations = [s.generation for s in self.state.slots if s.fate is SlotFate.ACTIVE]
        return self._version(max(generations)) if generations else self._version(self.state.target)

    def status(self, name: str, secret_set: str | None) -> PoolStatus:
        state = self.state
        workers = []
        draining = []
        for proc in state.procs:
            worker = self.workers.get(proc.pid)
            if proc.phase is Phase.STOPPING:
                draining.append(self._worker_status(proc, worker, WorkerState.DRAINING))
        for slot in state.slots:
            procs = [
                p for p in state.procs if p.slot == slot.index and p.phase is not Phase.STOPPING
            ]
            # The slot's own worker first; a candidate only when the slot has nothing else.
            procs.sort(key=lambda p: p.generation != slot.generation)
            if procs:
                proc = procs[0]
                phase_state = (
                    WorkerState.READY if proc.phase is Phase.READY else WorkerState.STARTING
                )
                status = self._worker_status(proc, self.workers.get(proc.pid), phase_state)
                workers.append(
                    status._replace(
                        restarts=slot.restarts,
                        last_exit=slot.last_exit,
                        exit_reason=self._slot_exit.get(slot.index),
                    )
                )
                continue
            if slot.fate is SlotFate.GAVE_UP:
                shown = WorkerState.GAVE_UP
            elif slot.fate is SlotFate.EXITED or not state.accepting:
                shown = WorkerState.EXITED
            else:
                shown = WorkerState.BACKOFF
            workers.append(
                WorkerStatus(
                    slot=slot.index,
                    pid=None,
                    state=shown,
                    version=self._version(slot.generation),
                    restarts=slot.restarts,
                    last_exit=slot.last_exit,
                    exit_reason=self._slot_exit.get(slot.index),
                )
            )
        rollout = state.rollout
        total = len(state.slots)
        done = sum(1 for s in state.slots if s.generation == rollout.to_generation)
        rollout_status = RolloutStatus(
            state=_VERDICT_STATE[rollout.verdict],
            from_version=self._version(rollout.from_generation),
            to_version=self._version(rollout.to_generation),
            done=done if rollout.verdict is not Verdict.IDLE else 0,
            total=total if rollout.verdict is not Verdict.IDLE else 0,
            started_at=self._wall(rollout.started),
            finished_at=self._wall(rollout.finished),
            reason=rollout.reason if rollout.verdict is Verdict.ABORTED else self._skipped,
            refused=self._refused,
            last_lines=self._abort_lines if rollout.verdict is Verdict.ABORTED else (),
            exit_reason=self._rollout_exit() if rollout.verdict is Verdict.ABORTED else None,
        )
        return PoolStatus(
            name=name,
            pid=os.getpid(),
            secret_set=secret_set,
            version=self.serving_version(),
            workers=tuple(workers),
            rollout=rollout_status,
            draining=tuple(draining),
            **self.exit_fields(),
        )

    def exit_fields(self) -> dict[str, Any]:
        """The exit tally, the last exits and the census, for a `PoolStatus` (both modes)."""
        return {
            "exit_counts": tuple(sorted(self.exits.counts.items())),
            "recent_exits": tuple(self.exits.recent),
            "census": self.census(),
        }

    def census(self) -> tuple[CensusEntry, ...]:
        """Which secrets version each process holds, by state (ops/census.py).

        A slot waiting to restart (backoff) holds its committed version too: its next worker
        will run it. Sessions hold theirs until their process is reaped.
        """
        from collections import Counter

        warm = self.spec.kind == "channel"  # session mode: the slots are warm processes
        names = {
            Phase.STARTING: "warming" if warm else "starting",
            Phase.READY: "warm" if warm else "ready",
            Phase.STOPPING: "retiring" if warm else "draining",
        }
        state = self.state
        counts: Counter[tuple[int | None, str]] = Counter()
        for proc in state.procs:
            counts[(self._version(proc.generation), names[proc.phase])] += 1
        for proc in state.sessions:
            counts[(self._version(proc.generation), "session")] += 1
        if state.accepting:
            for slot in state.slots:
                live = any(
                    p.slot == slot.index and p.phase is not Phase.STOPPING for p in state.procs
                )
                if slot.fate is SlotFate.ACTIVE and not live:
                    counts[(self._version(slot.generation), "pending")] += 1
        ordered = sorted(counts.items(), key=lambda item: (-(item[0][0] or 0), item[0][1]))
        return tuple(CensusEntry(version, name, n) for (version, name), n in ordered)

    def _rollout_exit(self) -> str | None:
        failed = self._failed_candidate()
        return self._exit_text(failed.pid) if failed is not None else None

    def _worker_status(
        self, proc: planner.Proc, worker: Worker | None, state: WorkerState
    ) -> WorkerStatus:
        return WorkerStatus(
            slot=proc.slot,
            pid=proc.pid,
            state=state,
            version=self._version(proc.generation),
            started_at=worker.started_at if worker is not None else None,
            port=worker.port if worker is not None else None,
            status_text=worker.status_text if worker is not None else None,
            recycling=proc.worn,
            memory=self.memory.get(proc.pid),
        )

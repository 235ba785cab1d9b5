"""The pool: N slots, each kept filled with a worker; restarts by policy; reaping; shutdown.

A slot's supervision task watches its *current* worker. The rollout replaces a slot's worker
with `swap()`, which cancels the wait on the old one so the slot then watches the new one;
the old worker drains in the background, bounded by --drain-timeout. Every child exit is
collected here, by one `waitpid(-1)` loop, for workers and orphaned grandchildren alike.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import anyio
import anyio.abc

from launcher.config import RestartPolicy, RunConfig
from launcher.environment import EnvironmentLayers
from launcher.ops.status import PoolStatus, RolloutStatus, WorkerState, WorkerStatus
from launcher.process import reaper
from launcher.process.readiness import ReadySpec, probe_until_ready
from launcher.process.worker import Worker, WorkerFactory
from launcher.supervision import policy

Log = Callable[..., None]


class Slot:
    def __init__(self, index: int) -> None:
        self.index = index
        self.worker: Worker | None = None
        self.state = WorkerState.STARTING
        self.restarts = 0
        self.restart_times: list[float] = []
        self.failures = 0
        self.watching: anyio.CancelScope | None = None
        self.supervised = False
        self.handover = False  # a singleton handover owns the slot: do not restart
        self.last_exit: int | None = None


class Pool:
    def __init__(
        self,
        config: RunConfig,
        layers: EnvironmentLayers,
        spec: ReadySpec,
        factory: WorkerFactory,
        log: Log,
    ) -> None:
        self.config = config
        self.layers = layers  # the newest environment known good: restarts use it
        self.spec = spec
        self.factory = factory
        self.log = log
        self.slots = [Slot(i) for i in range(config.workers)]
        self.by_pid: dict[int, Worker] = {}
        self.draining: list[Worker] = []
        self.shutting_down = False
        self.rollout = RolloutStatus()
        self.on_change: Callable[[], None] = lambda: None
        self.all_done: anyio.Event | None = None
        self.exit_code: int | None = None
        self._tg: anyio.abc.TaskGroup | None = None
        self._loop: Any = None
        self._random = random.Random()

    # --- spawning (main thread) ----------------------------------------------------------

    def spawn(self, index: int, layers: EnvironmentLayers) -> Worker:
        return self.adopt(self.factory.spawn(index, layers))

    def adopt(self, worker: Worker) -> Worker:
        """Track a worker (spawned here, or before the event loop existed)."""
        self.by_pid[worker.pid] = worker
        reaper.register(worker.pid, lambda status: self._reaped(worker, status))
        if self._loop is not None:
            self._attach(worker)
        return worker

    def _attach(self, worker: Worker) -> None:
        """Give a worker its loop-bound events."""
        worker.exited = anyio.Event()
        worker.ready_event = ready = anyio.Event()
        loop = self._loop
        # A log: match raises the worker's latch from a relay thread, before or after this.
        worker.log_match.subscribe(lambda: loop.call_soon_threadsafe(ready.set))

    # --- the loop side -------------------------------------------------------------------

    async def run(self, tg: anyio.abc.TaskGroup) -> None:
        """Start supervising every slot (workers may already be running)."""
        import asyncio

        self._loop = asyncio.get_running_loop()
        self._tg = tg
        self.all_done = anyio.Event()
        for worker in list(self.by_pid.values()):
            self._attach(worker)
        for slot in self.slots:
            if slot.worker is not None:
                self.log(
                    "worker_started",
                    slot=slot.index,
                    pid=slot.worker.pid,
                    version=slot.worker.version,
                )
            self._supervise(slot)
        self.reap()

    def _supervise(self, slot: Slot) -> None:
        assert self._tg is not None
        if not slot.supervised:
            slot.supervised = True
            self._tg.start_soon(self._supervise_slot, slot)

    async def _supervise_slot(self, slot: Slot) -> None:
        try:
            while slot.worker is not None and not self.shutting_down:
                worker = slot.worker
                assert self._tg is not None and worker.exited is not None
                if worker.state is WorkerState.STARTING:
                    self._tg.start_soon(self._boot, worker)
                with anyio.CancelScope() as scope:
                    slot.watching = scope
                    await worker.exited.wait()
                slot.watching = None
                if scope.cancelled_caught or slot.worker is not worker:
                    continue  # swapped by a rollout: watch the replacement
                if slot.handover or self.shutting_down:
                    return
                if not await self._after_exit(slot, worker):
                    return
        finally:
            slot.supervised = False
            self._check_done()

    async def _after_exit(self, slot: Slot, worker: Worker) -> bool:
        """Restart per policy; False when the slot is finished (exited or gave up)."""
        code = worker.exit_code if worker.exit_code is not None else 1
        slot.last_exit = code
        self.log(
            "worker_exited",
            slot=slot.index,
            pid=worker.pid,
            code=code,
            uptime=round(worker.uptime(), 3),
        )
        if not policy.should_restart(self.config.restart, code):
            slot.state = WorkerState.EXITED
            slot.worker = None
            self.on_change()
            return False
        now = time.monotonic()
        if policy.gives_up(
            slot.restart_times, now, self.config.max_restarts, self.config.restart_window
        ):
            slot.state = WorkerState.GAVE_UP
            slot.worker = None
            self.log(
                "slot_gave_up",
                slot=slot.index,
                restarts=len(slot.restart_times),
                window=self.config.restart_window,
                level="error",
            )
            self.on_change()
            return False
        slot.failures = policy.consecutive_after_exit(slot.failures, worker.uptime())
        delay = policy.restart_delay(slot.failures, self._random.random())
        slot.state = WorkerState.BACKOFF
        self.on_change()
        if slot.failures > 1:
            self.log(
                "worker_crash_loop",
                slot=slot.index,
                failures=slot.failures,
                delay=round(delay, 3),
                level="warning",
            )
        await anyio.sleep(delay)
        if self.shutting_down or slot.handover:
            return False
        slot.restart_times.append(time.monotonic())
        slot.restarts += 1
        slot.worker = self.spawn(slot.index, self.layers)
        slot.state = WorkerState.STARTING
        self.log(
            "worker_restarted",
            slot=slot.index,
            pid=slot.worker.pid,
            restarts=slot.restarts,
            version=slot.worker.version,
        )
        self.on_change()
        return True

    async def _boot(self, worker: Worker) -> None:
        """Initial readiness of a slot's worker: mark it ready, or stop it at the timeout."""
        if await self.wait_ready(worker):
            return
        if worker.alive and not worker.stop_sent:
            self.log(
                "worker_not_ready",
                slot=worker.slot,
                pid=worker.pid,
                timeout=self.config.ready_timeout,
                level="warning",
            )
            await self.retire(worker, grace=min(self.config.drain_timeout, 10.0))

    async def wait_ready(self, worker: Worker) -> bool:
        """True once `worker` is ready; False if it exits or --ready-timeout passes."""
        ready = False
        exited_event = worker.exited
        assert exited_event is not None and worker.ready_event is not None
        with anyio.move_on_after(self.config.ready_timeout):
            async with anyio.create_task_group() as race:

                async def exited() -> None:
                    await exited_event.wait()
                    race.cancel_scope.cancel()

                async def became_ready() -> None:
                    nonlocal ready
                    await self._ready_condition(worker)
                    ready = worker.alive
                    race.cancel_scope.cancel()

                race.start_soon(exited)
                race.start_soon(became_ready)
        if ready:
            worker.state = WorkerState.READY
            worker.last_watchdog = time.monotonic()
            self.log(
                "worker_ready",
                slot=worker.slot,
                pid=worker.pid,
                version=worker.version,
                seconds=round(worker.uptime(), 3),
            )
            self.on_change()
            if self.config.watchdog and self.spec.kind == "notify" and self._tg is not None:
                self._tg.start_soon(self._watchdog, worker)
        return ready

    async def _ready_condition(self, worker: Worker) -> None:
        kind = self.spec.kind
        if kind == "started":
            await anyio.sleep(self.config.ready_delay)
        elif kind in ("notify", "log"):
            assert worker.ready_event is not None
            await worker.ready_event.wait()
        else:
            await probe_until_ready(self.spec, self.factory.port(worker.slot))

    async def _watchdog(self, worker: Worker) -> None:
        """A notify worker must ping WATCHDOG=1 every --watchdog seconds, or it is restarted."""
        limit = float(self.config.watchdog or 0)
        while worker.alive and not worker.stop_sent:
            overdue = worker.last_watchdog + limit - time.monotonic()
            if overdue <= 0:
                self.log(
                    "worker_watchdog_expired",
                    slot=worker.slot,
                    pid=worker.pid,
                    watchdog=limit,
                    level="warning",
                )
                worker.stop(signal.SIGKILL)  # hung: a stop signal would not be handled either
                worker.kill_group()
                return
            await anyio.sleep(overdue)

    def notified(self, pid: int, fields: dict[str, str]) -> None:
        """A datagram on the notify socket, from a worker or one of its processes."""
        worker = self.by_pid.get(pid)
        if worker is None:
            from launcher.process.notify_socket import process_group

            group = process_group(pid)
            worker = self.by_pid.get(group) if group is not None else None
        if worker is None:
            return
        if fields.get("READY") == "1" and worker.ready_event is not None:
            worker.ready_event.set()
        if fields.get("WATCHDOG") == "1":
            worker.last_watchdog = time.monotonic()
        if "STATUS" in fields:
            worker.status_text = fields["STATUS"][:200]
            self.on_change()

    # --- replacing workers (used by the rollout) -----------------------------------------

    def swap(self, slot: Slot, replacement: Worker) -> Worker | None:
        """Make `replacement` the slot's worker; return the old one (to retire)."""
        old, slot.worker = slot.worker, replacement
        slot.state = WorkerState.STARTING
        if slot.watching is not None:
            slot.watching.cancel()
        self._supervise(slot)
        self.on_change()
        return old

    async def retire(self, worker: Worker, grace: float | None = None) -> None:
        """Stop signal once; SIGKILL the group when the drain deadline passes."""
        if not worker.alive:
            return
        if worker not in self.draining:
            self.draining.append(worker)
        worker.stop(self.config.stop_signal)
        self.log("worker_stopping", slot=worker.slot, pid=worker.pid, version=worker.version)
        self.on_change()
        assert worker.exited is not None
        stopping = time.monotonic()
        with anyio.move_on_after(self.config.drain_timeout if grace is None else grace):
            await worker.exited.wait()
        if worker.alive:
            self.log("worker_drain_timeout", slot=worker.slot, pid=worker.pid, level="warning")
            worker.kill_group()
            await worker.exited.wait()
        else:
            self.log(
                "worker_drained",
                slot=worker.slot,
                pid=worker.pid,
                code=worker.exit_code,
                seconds=round(time.monotonic() - stopping, 3),
            )
        if worker in self.draining:
            self.draining.remove(worker)
        self.on_change()

    # --- reaping -------------------------------------------------------------------------

    def reap(self) -> None:
        """Collect every exited child (orphans too); our workers' exits come to `_reaped`."""
        reaper.reap()

    def _reaped(self, worker: Worker, status: int) -> None:
        self.by_pid.pop(worker.pid, None)
        worker.reaped(status)
        # The main process is gone: whatever it left in its group goes with it.
        worker.kill_group()
        if worker.exited is not None:
            worker.exited.set()
        self.on_change()

    # --- shutdown ------------------------------------------------------------------------

    def live_workers(self) -> list[Worker]:
        return [w for w in self.by_pid.values() if w.alive]

    async def shutdown(self, force: anyio.Event) -> None:
        """Stop every worker once, wait for the drain, SIGKILL what is left."""
        self.shutting_down = True
        for slot in self.slots:
            if slot.watching is not None:
                slot.watching.cancel()
        workers = self.live_workers()
        self.log("shutdown", workers=len(workers), drain_timeout=self.config.drain_timeout)
        async with anyio.create_task_group() as tg:
            for worker in workers:
                tg.start_soon(self.retire, worker)

            async def forced() -> None:
                await force.wait()
                self.log("shutdown_forced", level="warning")
                for worker in self.live_workers():
                    worker.kill_group()

            tg.start_soon(forced)
            while self.live_workers():
                await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    def _check_done(self) -> None:
        """When no slot has a worker any more (exited or gave up), the launcher is done."""
        if self.shutting_down or any(s.worker is not None or s.supervised for s in self.slots):
            return
        if self.all_done is None or self.all_done.is_set():
            return
        codes = [s.last_exit or 0 for s in self.slots]
        if all(s.state is WorkerState.GAVE_UP for s in self.slots):
            self.exit_code = 1
        elif self.config.workers == 1 and self.config.restart is RestartPolicy.NEVER:
            self.exit_code = codes[0]
        else:
            self.exit_code = next((c for c in codes if c != 0), 0)
        self.all_done.set()

    # --- status --------------------------------------------------------------------------

    def status(self, name: str, secret_set: str | None) -> PoolStatus:
        workers = []
        for slot in self.slots:
            w = slot.worker
            state = w.state if w is not None else slot.state
            if w is not None and not w.alive and slot.state is WorkerState.BACKOFF:
                state = WorkerState.BACKOFF  # a crash loop must show in status and metrics
            workers.append(
                WorkerStatus(
                    slot=slot.index,
                    pid=w.pid if w else None,
                    state=state,
                    version=w.version if w else None,
                    started_at=w.started_at if w else None,
                    restarts=slot.restarts,
                    last_exit=slot.last_exit,
                )
            )
        draining = tuple(
            WorkerStatus(
                slot=w.slot,
                pid=w.pid,
                state=WorkerState.DRAINING,
                version=w.version,
                started_at=w.started_at,
            )
            for w in self.draining
        )
        return PoolStatus(
            name=name,
            pid=os.getpid(),
            secret_set=secret_set,
            version=self.layers.secrets_version,
            workers=tuple(workers),
            rollout=self.rollout,
            draining=draining,
        )

    def set_rollout(self, **changes: Any) -> None:
        self.rollout = self.rollout._replace(**changes)
        self.on_change()

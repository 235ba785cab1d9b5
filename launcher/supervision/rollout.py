"""Rolling restart: new secrets reach every worker, capacity never drops, bad updates abort.

For each batch of --max-surge slots: decrypt and validate the new version first, start the
replacements with the new environment, wait until they are ready, then give the old workers
their stop signal and let them drain in the background. If a replacement exits or is not
ready within --ready-timeout, the rollout aborts: replacements are stopped, the old workers
keep serving, and the next change or reload retries. `--max-surge 0` is a singleton handover
(stop the old worker, wait for it to exit, start the new one) for agents that must never run
twice. A request arriving mid-rollout supersedes the current target; one rollout at a time.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import anyio

from launcher.environment import EnvironmentLayers
from launcher.errors import LauncherError
from launcher.ops.status import RolloutState
from launcher.supervision.pool import Log, Pool, Slot


class Rollout:
    def __init__(self, pool: Pool, load: Callable[[], EnvironmentLayers], log: Log) -> None:
        self.pool = pool
        self.load = load  # decrypts the bound set as it is now; raises LauncherError
        self.log = log
        self._wake = anyio.Event()
        self._pending = False
        self._finished: list[anyio.Event] = []
        self.last_result: dict[str, object] = {"ok": True, "message": "no rollout yet"}
        self.on_start: Callable[[], None] = lambda: None
        self.on_finish: Callable[[], None] = lambda: None

    def request(self, reason: str) -> None:
        """Ask for a rollout to the store's current state (collapses with pending requests)."""
        self.log("rollout_requested", reason=reason)
        self._pending = True
        self._wake.set()

    async def request_and_wait(self, reason: str) -> dict[str, object]:
        """Request a rollout and wait for the result of the one that serves it."""
        done = anyio.Event()
        self._finished.append(done)
        self.request(reason)
        await done.wait()
        return self.last_result

    async def run(self) -> None:
        """The single rollout task: serves requests one at a time, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake = anyio.Event()
            while self._pending and not self.pool.shutting_down:
                self._pending = False
                waiting, self._finished = self._finished, []
                self.last_result = await self._roll_to_current()
                for event in waiting:
                    event.set()

    async def _roll_to_current(self) -> dict[str, object]:
        pool = self.pool
        try:
            target = self.load()
        except LauncherError as error:
            self.log("rollout_skipped", reason=error.message, level="error")
            pool.set_rollout(
                state=RolloutState.ABORTED, reason=error.message, finished_at=time.time()
            )
            return {"ok": False, "error": error.message}
        started = time.time()
        from_version = pool.layers.secrets_version
        slots = list(pool.slots)
        pool.set_rollout(
            state=RolloutState.RUNNING,
            from_version=from_version,
            to_version=target.secrets_version,
            done=0,
            total=len(slots),
            started_at=started,
            finished_at=None,
            reason=None,
        )
        self.on_start()
        self.log(
            "rollout_started",
            from_version=from_version,
            to_version=target.secrets_version,
            workers=len(slots),
        )
        surge = pool.config.max_surge
        batches = (
            [slots] if surge <= 0 else [slots[i : i + surge] for i in range(0, len(slots), surge)]
        )
        done = 0
        for batch in batches:
            if self._pending:
                return self._finish(RolloutState.ABORTED, started, "superseded by a newer version")
            if surge <= 0:
                ok = await self._handover(batch, target)
            else:
                ok = await self._surge(batch, target)
            if not ok:
                return self._finish(
                    RolloutState.ABORTED,
                    started,
                    f"a replacement worker did not become ready (exited or --ready-timeout "
                    f"{pool.config.ready_timeout:g}s); old workers kept serving",
                )
            pool.layers = target  # proven good: crash restarts use it from now on
            done += len(batch)
            pool.set_rollout(done=done)
        return self._finish(RolloutState.SUCCEEDED, started, None)

    def _finish(self, state: RolloutState, started: float, reason: str | None) -> dict[str, object]:
        finished = time.time()
        self.pool.set_rollout(state=state, finished_at=finished, reason=reason)
        self.on_finish()
        seconds = round(finished - started, 3)
        rollout = self.pool.rollout
        if state is RolloutState.SUCCEEDED:
            self.log("rollout_succeeded", to_version=rollout.to_version, seconds=seconds)
            return {
                "ok": True,
                "message": (
                    f"rolled {rollout.total} worker(s) to v{rollout.to_version} in {seconds}s"
                ),
                "version": rollout.to_version,
            }
        self.log(
            "rollout_aborted",
            to_version=rollout.to_version,
            reason=reason,
            seconds=seconds,
            level="error",
        )
        return {"ok": False, "error": reason or "aborted", "version": rollout.to_version}

    async def _surge(self, batch: list[Slot], target: EnvironmentLayers) -> bool:
        pool = self.pool
        replacements = [pool.spawn(slot.index, target) for slot in batch]
        for slot, worker in zip(batch, replacements, strict=True):
            self.log("replacement_started", slot=slot.index, pid=worker.pid, version=worker.version)
        results: list[bool] = []

        async def ready(worker: object) -> None:
            results.append(await pool.wait_ready(worker))  # type: ignore[arg-type]

        async with anyio.create_task_group() as tg:
            for worker in replacements:
                tg.start_soon(ready, worker)
        if not all(results) or len(results) != len(replacements):
            async with anyio.create_task_group() as tg:
                for worker in replacements:
                    tg.start_soon(pool.retire, worker, 5.0)
            return False
        assert pool._tg is not None
        for slot, worker in zip(batch, replacements, strict=True):
            old = pool.swap(slot, worker)
            if old is not None and old.alive:
                pool._tg.start_soon(pool.retire, old)  # drains in the background
        return True

    async def _handover(self, batch: list[Slot], target: EnvironmentLayers) -> bool:
        """--max-surge 0: never two workers of a slot at once."""
        pool = self.pool
        for slot in batch:
            slot.handover = True
            try:
                old = slot.worker
                if old is not None and old.alive:
                    await pool.retire(old)
                worker = pool.spawn(slot.index, target)
                pool.swap(slot, worker)
                if not await pool.wait_ready(worker):
                    await pool.retire(worker, 5.0)
                    # A bad update must not leave the slot empty: back to the last good one.
                    pool.swap(slot, pool.spawn(slot.index, pool.layers))
                    return False
            finally:
                slot.handover = False
        return True

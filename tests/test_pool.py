"""The pool with real children, driven in-process: the API the rollout uses, crash isolation."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest

from launcher.config import RestartPolicy, RunConfig, Target, TargetKind
from launcher.environment import EnvironmentLayers
from launcher.ops.status import PoolStatus, WorkerState
from launcher.process.notify_socket import NotifySocket
from launcher.process.readiness import parse_ready
from launcher.process.worker import WorkerFactory
from launcher.supervision.pool import Pool

pytestmark = pytest.mark.anyio

# A worker that records each stop signal it gets in $POOL_DIR/<pid>, and exits on it. The
# file appears once the handler is installed: a test that waits for it never races the
# interpreter's start-up (`started` readiness alone says nothing about the handler).
SERVE = (
    "import os, signal, sys, time\n"
    "path = os.path.join(os.environ['POOL_DIR'], str(os.getpid()))\n"
    "def stop(*_):\n"
    "    open(path, 'a').write('term\\n'); sys.exit(0)\n"
    "signal.signal(signal.SIGTERM, stop)\n"
    "open(path, 'a').close()\n"
    "if os.environ.get('AGENT_RUN_WORKER') == os.environ.get('CRASH_SLOT'):\n"
    "    sys.exit(3)\n"
    "while True: time.sleep(1)\n"
)


class Harness:
    """A Pool over real processes, with its reaper running, as the supervisor wires it."""

    def __init__(self, pool: Pool, events: list[tuple[str, dict[str, Any]]]) -> None:
        self.pool = pool
        self.events = events
        self.statuses: list[PoolStatus] = []
        pool.on_change = lambda: self.statuses.append(pool.status("test", None))

    def count(self, event: str) -> int:
        return sum(1 for name, _ in self.events if name == event)

    async def until(self, predicate: Callable[[], bool]) -> None:
        with anyio.fail_after(30):
            while not predicate():
                await anyio.sleep(0.02)


async def _reap(pool: Pool, task_status: anyio.abc.TaskStatus[None]) -> None:
    with anyio.open_signal_receiver(signal.SIGCHLD) as signals:
        task_status.started()
        pool.reap()
        async for _ in signals:
            pool.reap()


@pytest.fixture
async def make_pool(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """Build a pool of SERVE workers, run it in a task group, shut it down afterwards."""
    notify = NotifySocket()

    async def make(
        tg: anyio.abc.TaskGroup, workers: int = 2, crash_slot: int | None = None, **options: Any
    ) -> Harness:
        config = RunConfig(
            target=Target(TargetKind.COMMAND, sys.executable, ("-c", SERVE)),
            workers=workers,
            ready_delay=0.05,
            drain_timeout=10,
            **options,
        )
        inherited = {**os.environ, "POOL_DIR": str(tmp_path), "CRASH_SLOT": str(crash_slot)}
        layers = EnvironmentLayers(inherited=inherited, secrets_version=1)
        factory = WorkerFactory(
            config.target.argv(), notify.path, None,
            port_base=None, use_pty=False, inherit_stdin=False, log_pattern=None,
        )  # fmt: skip
        events: list[tuple[str, dict[str, Any]]] = []
        pool = Pool(config, layers, parse_ready("started"), factory,
                    lambda event, **fields: events.append((event, fields)))  # fmt: skip
        harness = Harness(pool, events)
        for slot in pool.slots:
            slot.worker = pool.spawn(slot.index, layers)
        await tg.start(_reap, pool)
        await pool.run(tg)
        return harness

    yield make
    notify.close()


def _terms(tmp_path: Path, pid: int) -> int:
    return (tmp_path / str(pid)).read_text().count("term")


def _serving(tmp_path: Path, *pids: int) -> Callable[[], bool]:
    """True once each of these workers has installed its SIGTERM handler."""
    return lambda: all((tmp_path / str(pid)).exists() for pid in pids)


async def test_replace_a_slot_new_ready_first_then_old_stopped_once(
    make_pool: Callable[..., Any], tmp_path: Path
) -> None:
    """spawn(new layers) → wait_ready → swap → retire: the rollout's steps, old one gets one TERM."""
    async with anyio.create_task_group() as tg:
        harness = await make_pool(tg)
        pool = harness.pool
        await harness.until(lambda: harness.count("worker_ready") == 2)
        slot = pool.slots[0]
        old = slot.worker
        assert old is not None
        await harness.until(_serving(tmp_path, old.pid))
        newer = pool.layers._replace(secrets_version=2)
        replacement = pool.spawn(slot.index, newer)
        assert await pool.wait_ready(replacement)
        await harness.until(_serving(tmp_path, replacement.pid))
        assert old.alive  # capacity never dropped: both run until the swap
        assert pool.swap(slot, replacement) is old
        await pool.retire(old)
        assert not old.alive and old.exit_code == 0
        assert _terms(tmp_path, old.pid) == 1
        assert slot.worker is replacement and replacement.alive
        status = pool.status("test", None)
        assert [(w.slot, w.version) for w in status.workers] == [(0, 2), (1, 1)]
        await pool.shutdown(anyio.Event())
        tg.cancel_scope.cancel()
    assert _terms(tmp_path, replacement.pid) == 1


async def test_a_crashing_slot_backs_off_without_touching_the_others(
    make_pool: Callable[..., Any], tmp_path: Path
) -> None:
    """Slot 1 crash-loops with growing delays and gives up; slot 0 keeps its one worker."""
    async with anyio.create_task_group() as tg:
        harness = await make_pool(tg, max_restarts=3, restart_window=60, crash_slot=1)
        pool = harness.pool
        first = pool.slots[0].worker
        assert pool.all_done is not None
        await harness.until(lambda: harness.count("slot_gave_up") == 1)
        delays = [fields["delay"] for name, fields in harness.events if name == "worker_crash_loop"]
        assert delays == sorted(delays) and len(delays) == 2
        assert pool.slots[1].state is WorkerState.GAVE_UP
        assert pool.slots[0].worker is first and first is not None and first.alive
        assert any(
            s.workers[1].state is WorkerState.BACKOFF for s in harness.statuses
        )  # the crash loop is visible in the published status
        assert not pool.all_done.is_set()  # one healthy slot: the launcher keeps running
        await pool.shutdown(anyio.Event())
        tg.cancel_scope.cancel()


async def test_every_slot_given_up_ends_the_pool_with_exit_code_1(
    make_pool: Callable[..., Any],
) -> None:
    """When all slots have given up, all_done is set and the exit code is 1."""
    async with anyio.create_task_group() as tg:
        harness = await make_pool(tg, workers=1, max_restarts=1, crash_slot=0)
        pool = harness.pool
        assert pool.all_done is not None
        with anyio.fail_after(30):
            await pool.all_done.wait()
        assert pool.exit_code == 1
        tg.cancel_scope.cancel()


async def test_exec_like_pool_returns_the_workers_code(make_pool: Callable[..., Any]) -> None:
    """--workers 1 --restart never: the pool ends with the worker's own exit code."""
    async with anyio.create_task_group() as tg:
        harness = await make_pool(tg, workers=1, restart=RestartPolicy.NEVER, crash_slot=0)
        pool = harness.pool
        assert pool.all_done is not None
        with anyio.fail_after(30):
            await pool.all_done.wait()
        assert pool.exit_code == 3
        tg.cancel_scope.cancel()

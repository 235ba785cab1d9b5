"""Recycling's facts: the memory of each worker, sampled for the planner.

The decisions (which worker is worn, when a fresh one starts, when the worn one drains) are
the planner's (planner.py, "worn"); age is a fact of its clock and calls come as notify
messages, so memory is the one fact that needs a task: every SAMPLE_EVERY seconds, each
serving worker's process group is measured (process/memory.py) off the event loop, and the
figure is posted as a `Sample` event.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from launcher.supervision import planner
from launcher.supervision.planner import Phase

if TYPE_CHECKING:
    from launcher.supervision.engine import Engine

SAMPLE_EVERY = 2.0  # seconds: a leak is hours long; a sample costs ~0.1 ms per process


async def sample_memory(engine: Engine) -> None:
    """Measure every ready worker's process group and report it, until cancelled."""
    import anyio

    while True:
        await anyio.sleep(SAMPLE_EVERY)
        pids = [p.pid for p in engine.state.procs if p.phase is Phase.READY and p.slot >= 0]
        if not pids:
            continue
        sizes = await anyio.to_thread.run_sync(_measure, pids)
        for pid, size in sizes.items():
            if size is not None and pid in engine.workers:
                engine.memory[pid] = size
                engine.post(planner.Sample(pid, size, engine.clock()))


def _measure(pids: list[int]) -> dict[int, int | None]:
    from launcher.process.memory import group_memory

    return {pid: group_memory(pid) for pid in pids}

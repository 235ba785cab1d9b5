"""The least CPU a process per session costs on this machine (#18): the ceiling it sets.

Run: python bench/process_floor.py [--count 400]

SPEC §5 gives each session a process of its own. Whatever serves them, each session then
costs at least a fork of a warm Python interpreter and that process's exit, and a Pipecat-
shaped `async def bot()` needs an event loop in it. This measures those costs with nothing
of agent-run's in the way: a parent that imported what the session runtime imports and froze
its heap (as agent-run's template does) forks COUNT children one after the other, each doing
  - nothing: fork, then exit at once (os._exit);
  - loop:    a new asyncio event loop that runs one coroutine and closes;
and prints the CPU per child (parent + child, user + system) and the sessions per second
that CPU would allow if it were the only work on every core.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import time
from collections.abc import Callable

from launcher.sessions.server import SESSION_PRELOAD


def nothing() -> None:
    pass


def event_loop() -> None:
    runner = asyncio.Runner()
    runner.run(asyncio.sleep(0))
    runner.close()


def measure(child: Callable[[], None], count: int) -> tuple[float, float]:
    """(CPU ms per child, wall ms per child) for `count` children run one after the other."""
    before, start = os.times(), time.perf_counter()
    for _ in range(count):
        pid = os.fork()
        if pid == 0:
            child()
            os._exit(0)
        os.waitpid(pid, 0)
    after, wall = os.times(), time.perf_counter() - start
    cpu = sum(after[:4]) - sum(before[:4])  # user, system, children's user and system
    return cpu / count * 1000, wall / count * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=400)
    args = parser.parse_args()
    for name in SESSION_PRELOAD:  # what the template imports for the session runtime
        importlib.import_module(name)
    event_loop()  # whatever asyncio builds lazily is built here, before the forks
    gc.collect()
    gc.freeze()
    cores = len(os.sched_getaffinity(0))
    print(f"machine: {cores} cores; {args.count} children each, one after the other")
    for name, child in (("fork + exit", nothing), ("fork + event loop + exit", event_loop)):
        cpu, wall = measure(child, args.count)
        print(
            f"{name:26s} CPU {cpu:5.2f} ms per child (wall {wall:5.2f} ms): "
            f"at most {cores * 1000 / cpu:5.0f} per second on {cores} cores"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

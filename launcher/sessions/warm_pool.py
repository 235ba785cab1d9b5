"""The pre-warmed processes of session mode: spawn, warm-up, hand-out, retirement.

`--idle N` processes import the agent ahead of time (launcher/sessions/runtime.py) and wait on a
private channel, one end of a socketpair, for a session. Each process records the
*generation* of the environment it was started with; a new secrets version (or new platform
credentials) starts a new generation, and a process of an older generation is never handed
a session: idle ones are retired (their channel is closed, they exit at once), busy ones
finish their session on the values they started with.

Spawning and the event loop are kept apart: `spawn` is the seam (process.spawn in the
launcher, anything with the same shape in tests), the loop only reads channel lines.
"""

from __future__ import annotations

import random
import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from launcher.config import RunConfig
from launcher.environment import EnvironmentLayers, compose
from launcher.errors import OperationFailed
from launcher.process import reaper
from launcher.process import worker as process
from launcher.process.output import Masker
from launcher.sessions.entrypoint import Entrypoint
from launcher.sessions.runtime import CHANNEL_VARIABLE
from launcher.sessions.runtime import command as runtime_command
from launcher.supervision.policy import restart_delay

if TYPE_CHECKING:
    import anyio.abc

Log = Callable[..., None]
Spawn = Callable[..., process.Worker]


class StartFailed(OperationFailed):
    """A session process died or hung before its entrypoint ran."""


class WarmProcess:
    """One session process and the parent's end of its channel."""

    def __init__(self, worker: process.Worker, channel: socket.socket, generation: int) -> None:
        import anyio

        self.worker = worker
        self.channel = channel
        self.generation = generation
        self.version = worker.version
        self.ready = anyio.Event()  # the agent is imported
        self.started = anyio.Event()  # the entrypoint is being called
        self.closed = anyio.Event()  # the channel reached EOF (the process is exiting)
        self.spawned_at = time.monotonic()
        self.session: Any = None  # set by the session table when it takes this process
        self.on_ready: Callable[[], None] = lambda: None

    @property
    def pid(self) -> int:
        return self.worker.pid

    def __repr__(self) -> str:
        return f"WarmProcess(pid={self.pid}, generation={self.generation})"

    async def read_messages(self) -> None:
        """Turn channel lines into events, until EOF."""
        import anyio

        buffer = b""
        try:
            while True:
                await anyio.wait_readable(self.channel)
                try:
                    chunk = self.channel.recv(4096)
                except BlockingIOError:
                    continue
                if not chunk:
                    break
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line == b"ready":
                        self.ready.set()
                        self.on_ready()
                    elif line == b"started":
                        self.started.set()
        except (OSError, anyio.ClosedResourceError):
            pass
        finally:
            self.closed.set()

    async def send(self, data: bytes) -> None:
        import anyio

        view = memoryview(data)
        while view:
            try:
                sent = self.channel.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self.channel)
                continue
            view = view[sent:]

    def retire(self) -> None:
        """Close the channel: a ready process reads EOF and exits 0; one still importing
        the agent has nothing to finish and is killed."""
        import contextlib

        import anyio

        if not self.ready.is_set():
            self.worker.kill_group()

        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RDWR)
        anyio.notify_closing(self.channel)
        self.channel.close()


class WarmPool:
    """Keeps `--idle` processes warm on the current generation and hands them out."""

    def __init__(
        self,
        config: RunConfig,
        entry: Entrypoint,
        layers: EnvironmentLayers,
        masker: Masker | None,
        log: Log,
        spawn: Spawn = process.spawn,
    ) -> None:
        self.config = config
        self.entry = entry
        self.layers = layers
        self.masker = masker
        self.log = log
        self._spawn_worker = spawn
        self.generation = 0
        self.idle: list[WarmProcess] = []  # warming or ready, current generation only
        self.processes: dict[int, WarmProcess] = {}  # every process not yet reaped
        self.accepting = True
        self._counter = 0
        self.ever_ready = False
        self._failures = 0  # consecutive processes that died before they were ready
        self._refill_at = 0.0
        self._refill_scheduled = False
        self._tg: anyio.abc.TaskGroup | None = None
        # Told when one of our processes has been reaped (after `exited` recorded it).
        self.on_exit: Callable[[WarmProcess], None] = lambda warm: None

    @property
    def failures(self) -> int:
        """Processes in a row that died before the agent was imported."""
        return self._failures

    @property
    def version(self) -> int | None:
        return self.layers.secrets_version

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self.refill()

    # --- processes ---------------------------------------------------------------------

    def _argv(self) -> list[str]:
        entry = self.entry
        return runtime_command(
            sys.executable,
            entry.kind,
            entry.target,
            entry.function,
            int(self.config.stop_signal),
            list(self.config.target.args),
        )

    def spawn(self) -> WarmProcess:
        """Start one process on the current generation; its messages are read in the pool."""
        assert self._tg is not None
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._counter += 1
        env = compose(self.layers, worker=self._counter)
        env[CHANNEL_VARIABLE] = str(child.fileno())
        try:
            worker = self._spawn_worker(
                self._argv(),
                env,
                slot=self._counter,
                version=self.layers.secrets_version,
                masker=self.masker,
                pass_fds=(child.fileno(),),
                files=self.layers.files,
            )
        except OSError as error:
            parent.close()
            raise StartFailed(
                f"cannot start a session process ({sys.executable}): {error.strerror}"
            ) from None
        finally:
            child.close()
        parent.setblocking(False)
        warm = WarmProcess(worker, parent, self.generation)
        warm.on_ready = self._warmed
        self.processes[warm.pid] = warm
        reaper.register(warm.pid, lambda status: self._reaped(warm.pid, status))
        self._tg.start_soon(warm.read_messages)
        return warm

    def refill(self) -> None:
        """Start processes until `--idle` are warm or warming (with backoff after failures)."""
        if not self.accepting or self._tg is None:
            return
        delay = self._refill_at - time.monotonic()
        if delay > 0:
            if not self._refill_scheduled:
                self._refill_scheduled = True
                self._tg.start_soon(self._refill_later, delay)
            return
        while len(self.idle) < self.config.idle:
            try:
                warm = self.spawn()
            except StartFailed as error:
                self.log("session_process_spawn_failed", reason=error.message, level="error")
                self._failed()
                return
            self.idle.append(warm)

    async def _refill_later(self, delay: float) -> None:
        import anyio

        await anyio.sleep(delay)
        self._refill_scheduled = False
        self.refill()

    def _failed(self) -> None:
        self._failures += 1
        self._refill_at = time.monotonic() + restart_delay(self._failures, random.random())

    def take_idle(self) -> WarmProcess | None:
        """A ready process of the current generation, if one is waiting."""
        for warm in self.idle:
            if warm.ready.is_set() and not warm.closed.is_set():
                self.idle.remove(warm)
                # No refill here: a fork costs the event loop a few ms, which the session
                # being handed out must not wait for. The caller refills once it has
                # answered (SessionRuntime.after_start).
                return warm
        return None

    async def take(self) -> tuple[WarmProcess, bool]:
        """A process on the current generation, ready for a session: (process, was it warm).

        Without a ready one, the oldest warming one is awaited, else one is started now
        (a cold start)."""
        import anyio

        warm = self.take_idle()
        if warm is not None:
            return warm, True
        warm = self.idle.pop(0) if self.idle else self.spawn()
        self.refill()
        with anyio.move_on_after(self.config.ready_timeout):
            async with anyio.create_task_group() as tg:

                async def closed() -> None:
                    await warm.closed.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(closed)
                await warm.ready.wait()
                tg.cancel_scope.cancel()
        if not warm.ready.is_set() or warm.closed.is_set():
            warm.worker.kill_group()
            raise StartFailed(
                f"the session process (pid {warm.pid}) exited or hung while importing "
                f"{self.entry.target}; see its output above"
            )
        return warm, False

    # --- generations and exits ---------------------------------------------------------

    def new_generation(self, layers: EnvironmentLayers) -> int:
        """From now on processes start with `layers`; idle processes of older ones retire."""
        self.layers = layers
        self.generation += 1
        stale, self.idle = self.idle, []
        for warm in stale:
            warm.retire()
        self.refill()
        return len(stale)

    def _reaped(self, pid: int, status: int) -> None:
        warm = self.exited(pid, status)
        if warm is not None:
            self.on_exit(warm)

    def exited(self, pid: int, status: int) -> WarmProcess | None:
        """Record a reaped process; returns it when it was one of ours."""
        warm = self.processes.pop(pid, None)
        if warm is None:
            return None
        warm.worker.reaped(status)
        warm.worker.kill_group()  # whatever it left in its process group goes with it
        warm.worker.remove_private_files()
        if warm in self.idle:
            self.idle.remove(warm)
            if not warm.ready.is_set():
                self.log(
                    "session_process_failed",
                    pid=pid,
                    code=warm.worker.exit_code,
                    entrypoint=str(self.entry),
                    level="error",
                )
                self._failed()
            self.refill()
        return warm

    def _warmed(self) -> None:
        self._failures = 0
        self.ever_ready = True

    def retire_idle(self) -> None:
        self.accepting = False
        idle, self.idle = self.idle, []
        for warm in idle:
            warm.retire()

    def live(self) -> list[WarmProcess]:
        return list(self.processes.values())

"""The processes of session mode: how one is started, and its private channel.

`--idle N` processes import the agent ahead of time (launcher/sessions/runtime.py) and wait on
a private channel, one end of a socketpair, for a session. *When* they are started, replaced
and stopped is the engine's decision (supervision/planner.py: the warm processes are its
slots; a process taken for a session leaves them), exactly as for workers; this module only
knows how to start one and how to talk to it.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from launcher.config import RunConfig
from launcher.environment import EnvironmentLayers, compose
from launcher.errors import OperationFailed
from launcher.process import worker as process
from launcher.process.output import Masker
from launcher.sessions.entrypoint import Entrypoint
from launcher.sessions.runtime import CHANNEL_VARIABLE
from launcher.sessions.runtime import command as runtime_command

if TYPE_CHECKING:
    import anyio

Spawn = Callable[..., process.Worker]


class StartFailed(OperationFailed):
    """A session process died or hung before its entrypoint ran."""


class WarmProcess:
    """One session process and the parent's end of its channel."""

    def __init__(self, worker: process.Worker, channel: socket.socket) -> None:
        import anyio

        self.worker = worker
        self.channel = channel
        self.version = worker.version
        self.ready = anyio.Event()  # the agent is imported
        self.started = anyio.Event()  # the entrypoint is being called
        self.called = anyio.Event()  # a handed-over call's handshake is done, bot() called
        self.closed = anyio.Event()  # the channel reached EOF (the process is exiting)
        # Set (and replaced) whenever one of the events above is set: `until` waits on it,
        # where a task per wait racing `closed` cost a task group for every session start.
        self._changed = anyio.Event()
        self._loop: Any = None  # the event loop reading the channel (start_reading)
        self._buffer = b""  # an unfinished line read from the channel
        self.spawned_at = time.monotonic()
        self.session: Any = None  # set by the session table when it takes this process
        self.on_ready: Callable[[], None] = lambda: None
        self.on_message: Callable[[WarmProcess, str, bytes], None] = lambda warm, kind, rest: None
        self.has_readyz = False  # the agent's module defines readyz()
        self.readyz_answer = b""  # the last answer of the agent's readyz(), as JSON
        self.readyz_answered = anyio.Event()

    @property
    def pid(self) -> int:
        return self.worker.pid

    def __repr__(self) -> str:
        return f"WarmProcess(pid={self.pid}, version={self.version})"

    def start_reading(self) -> None:
        """Turn channel lines into events as they arrive, until EOF (call on the loop).

        A reader callback on the event loop, registered once: a task awaiting readability
        per message cost a task, a future and two epoll changes for each of the three
        messages of every session (#18).
        """
        import asyncio

        if self.channel.fileno() < 0:  # retired before it was read
            self._stop_reading()
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.channel.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            chunk = self.channel.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._stop_reading()
            return
        try:
            self._buffer = self._dispatch(self._buffer + chunk)
        except BaseException:
            self._stop_reading()  # as EOF: nothing more is read from a channel that failed
            raise

    def _dispatch(self, buffer: bytes) -> bytes:
        """Act on each complete line of `buffer`; returns the unfinished rest."""
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            kind, _, rest = line.partition(b" ")
            if kind == b"ready":
                self.has_readyz = rest == b"readyz"
                self.ready.set()
                self._notify()
                self.on_ready()
            elif kind == b"started":
                self.started.set()
                self._notify()
            elif kind == b"called":
                self.called.set()
                self._notify()
            elif kind == b"readyz":
                self.readyz_answer = rest
                self.readyz_answered.set()
            else:
                self.on_message(self, kind.decode("ascii", "replace"), rest)
        return buffer

    def _stop_reading(self) -> None:
        """EOF, or retired: the loop stops watching the fd *before* it is closed (the next
        socketpair reuses the number, and a watch left on it made a later session's channel
        look closed), then `closed` is set."""
        if self._loop is not None:
            if self.channel.fileno() >= 0:
                self._loop.remove_reader(self.channel.fileno())
            self._loop = None
        if self.channel.fileno() >= 0:
            import anyio

            anyio.notify_closing(self.channel)  # a send waiting to write gives up
            self.channel.close()
        if not self.closed.is_set():
            self.closed.set()
            self._notify()

    def _notify(self) -> None:
        import anyio

        changed, self._changed = self._changed, anyio.Event()
        changed.set()

    async def until(self, event: anyio.Event) -> None:
        """Until `event` (one of this process's) is set or the channel has closed."""
        import anyio.lowlevel

        if event.is_set() or self.closed.is_set():
            # Still a checkpoint: a caller that loops on this (a process that closed before
            # it was reaped) must let the event loop run.
            await anyio.lowlevel.checkpoint()
            return
        while not event.is_set() and not self.closed.is_set():
            await self._changed.wait()

    async def call_set_up(self, timeout: float) -> None:
        """Until a handed-over call runs its bot (or the process is gone, or `timeout`)."""
        import anyio

        with anyio.move_on_after(timeout):
            await self.until(self.called)

    async def send(self, data: bytes, fds: tuple[int, ...] = ()) -> None:
        """Write `data`; `fds` travel with its first byte (SCM_RIGHTS), so the process
        receives the descriptors together with the line that explains them."""
        import anyio

        view = memoryview(data)
        while view:
            try:
                if fds:
                    sent = socket.send_fds(self.channel, [view], list(fds))
                    fds = ()
                else:
                    sent = self.channel.send(view)
            except BlockingIOError:
                await anyio.wait_writable(self.channel)
                continue
            view = view[sent:]

    def retire(self) -> None:
        """Close the channel: a ready process reads EOF and exits 0; one still importing
        the agent has nothing to finish and is killed."""
        import contextlib

        self.worker.stop_sent = True
        if not self.ready.is_set():
            self.worker.kill_group()
        if self.channel.fileno() < 0:
            return  # already closed
        with contextlib.suppress(OSError):
            self.channel.shutdown(socket.SHUT_RDWR)
        self._stop_reading()


class WarmProcessFactory:
    """Starts session-mode processes: the runtime with its channel, the agent's environment.

    The engine calls `spawn` as it calls a worker factory's; `processes` maps each live pid to
    its `WarmProcess` (the channel's side of it).
    """

    def __init__(
        self,
        config: RunConfig,
        entry: Entrypoint,
        masker: Masker | None,
        spawn: Spawn = process.spawn,
    ) -> None:
        self.config = config
        self.entry = entry
        self.masker = masker
        self._spawn_worker = spawn
        # How a process starts: fork_exec, or a template's warm fork (launcher/process/template).
        self.launch: Callable[..., int] | None = None
        self.renew_template: Callable[[], None] | None = None  # `agent-run dev`: code changed
        self._counter = 0
        self.processes: dict[int, WarmProcess] = {}
        self.log: Callable[..., None] = lambda event, **fields: None
        self.has_readyz = False  # the agent defines readyz() (a warm process said so)

    def _argv(self) -> list[str]:
        entry = self.entry
        return runtime_command(
            entry.python or sys.executable,
            entry.kind,
            entry.target,
            entry.function,
            int(self.config.stop_signal),
            list(entry.args if entry.args is not None else self.config.target.args),
        )

    def spawn(
        self, index: int, layers: EnvironmentLayers, port: int | None = None
    ) -> process.Worker:
        """Start one process with `layers`; raises OSError when it cannot be started."""
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._counter += 1
        env = compose(layers, worker=self._counter)
        env[CHANNEL_VARIABLE] = str(child.fileno())
        try:
            worker = self._spawn_worker(
                self._argv(),
                env,
                slot=index,
                version=layers.secrets_version,
                masker=self.masker,
                pass_fds=(child.fileno(),),
                files=layers.files,
                file_variables=layers.file_variables,
                **({"launch": self.launch} if self.launch is not None else {}),
            )
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        warm = WarmProcess(worker, parent)
        warm.on_message = self._message
        self.processes[worker.pid] = warm
        return worker

    def _message(self, warm: WarmProcess, kind: str, rest: bytes) -> None:
        if kind == "overridden":
            self.log(
                "session_env_overridden",
                pid=warm.pid,
                keys=rest.decode(errors="replace"),
                action="bound values re-applied",
                hint="the agent's import changed these variables (for example "
                "load_dotenv(override=True) and a .env file); remove the .env entries or "
                "use override=False",
                level="warning",
            )

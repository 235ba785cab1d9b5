"""Session mode: agent-run serves sessions itself, from pre-warmed processes (SPEC §5).

A target that defines `bot` (Pipecat's `async def bot(runner_args)`), or names a function with
`--entrypoint`, is not run as a pool of workers. `--idle N` processes import it ahead of time
(warm_pool.py, runtime.py) and wait; `POST /sessions` (api.py) hands the request's JSON to one
of them, which runs the entrypoint and exits when the session ends. One process per session,
each in its own process group: nothing leaks between sessions.

The processes are the engine's, as workers are (supervision/engine.py): the warm ones are its
slots, kept filled and replaced ready-first when a new version arrives; a process taken for a
session leaves its slot for good, and no rollout touches it. This module is the session table
and the dispatcher; host.py runs it beside the same signals, watches and endpoints as workers.

Read-after-write: every dispatch re-reads the store's fingerprint (the bound set's version and
the platform file's, from plaintext headers: no decryption, a few tens of microseconds) and
compares it with the one the current target was made from. If the store is newer, the new
version is decrypted and becomes the target, and the session waits for a process of it (a
warm one when the watch was quicker than the request, else one started for it). So a session
requested after `secrets set` returned always sees the new values; the guarantee does not
depend on the file watch, which only refreshes the idle processes early so the next session
is warm too. A version that fails to decrypt is logged and sessions keep starting on the last
good one (a bad update never takes the service down); it is retried when the store changes.

Shutdown (TERM/INT): new sessions get 503, idle processes retire, running sessions may finish
within `--drain-timeout`; then each gets the stop signal once and, STOP_GRACE_S later, its
process group is SIGKILLed. A second TERM/INT skips the waiting.
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from launcher.errors import LauncherError, VersionRegression
from launcher.sessions.access import TOKEN_VARIABLE, Access, Refused, is_loopback
from launcher.sessions.entrypoint import Entrypoint, find_entrypoint
from launcher.sessions.warm_pool import StartFailed, WarmProcess, WarmProcessFactory

if TYPE_CHECKING:
    import anyio
    import anyio.abc

    from launcher.environment import EnvironmentLayers
    from launcher.ops.metrics import Metrics
    from launcher.ops.status import PoolStatus
    from launcher.plan import Plan
    from launcher.process.output import Masker
    from launcher.process.worker import Worker

__all__ = ["Entrypoint", "Refused", "SessionRuntime", "find_entrypoint"]

STOP_GRACE_S = 5.0  # after the drain: stop signal, then this long before SIGKILL
KEEP_ENDED = 1000  # ended sessions kept for GET /sessions
RETRY_AFTER_S = 1  # what a full runtime tells callers to wait (429)
READYZ_TIMEOUT_S = 5.0  # the agent's readyz() answers within this, or it is not ready
SESSION_MEMORY = 512 * 1024 * 1024  # bytes a voice bot process takes, roughly (models, buffers)


def default_max_sessions() -> int:
    """A finite default for --max-sessions: what the machine can hold, by CPUs and memory.

    A voice session keeps a fraction of a core busy and a few hundred MB resident; four per
    core, and no more than memory holds at SESSION_MEMORY each, stops an unlimited burst of
    starts from taking the machine down with every call on it.
    """
    by_cpu = 4 * (os.cpu_count() or 1)
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return by_cpu
    return max(1, min(by_cpu, memory // SESSION_MEMORY))


def connection_limit(max_sessions: int) -> int:
    """Open connections the API serves at once (uvicorn answers 503 beyond): room for every
    session's start and its callers' status requests, not for a flood of idle sockets."""
    return 4 * max_sessions + 64


class Session:
    """One session: the process serving it and what became of it."""

    def __init__(self, session_id: str, warm: WarmProcess, was_warm: bool) -> None:
        import anyio

        self.id = session_id
        self.process = warm
        self.warm = was_warm
        self.state = "starting"  # starting | running | stopping | ended | failed | stopped
        self.created_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.exit_code: int | None = None
        self.start_ms: float | None = None
        self.done = anyio.Event()

    @property
    def active(self) -> bool:
        return self.ended_at is None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.process.pid,
            "secrets_version": self.process.version,
            "state": self.state,
            "warm": self.warm,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
            "start_ms": self.start_ms,
        }


class SessionRuntime:
    """The session table, the dispatcher (with the read-after-write check), and the session
    mode's face to the host (`host.Mode`)."""

    def __init__(
        self,
        plan: Plan,
        entry: Entrypoint,
        masker: Masker | None,
        log: Any,
        listener: Any = None,
        create_app: Callable[[SessionRuntime], Any] | None = None,
        server_options: Callable[[SessionRuntime], dict[str, Any]] | None = None,
    ) -> None:
        import anyio

        from launcher.config import RestartPolicy
        from launcher.process.readiness import ReadySpec
        from launcher.supervision import planner
        from launcher.supervision.engine import Engine

        self.plan = plan
        self.config = config = plan.config
        self.entry = entry
        self.masker = masker
        self.log = log
        self.listener = listener
        self.create_app = create_app  # the HTTP API (api.py), given by server.py
        self.server_options = server_options  # uvicorn settings (the WS /ws handover), too
        self.factory = WarmProcessFactory(config, entry, masker)
        self.factory.log = log
        self.max_sessions = config.max_sessions or default_max_sessions()
        self.access = Access(is_loopback(config.listen.rpartition(":")[0]), self.api_token)
        settings = planner.Settings(
            size=config.idle,
            surge=max(config.idle, 1),  # idle processes serve nothing: replace them all at once
            restart=RestartPolicy.ALWAYS,
            ready_timeout=config.ready_timeout,
            drain_timeout=config.drain_timeout,
            failed_grace=STOP_GRACE_S,
            session_grace=STOP_GRACE_S,
        )
        self.engine = Engine(
            config, plan.layers, ReadySpec("channel"), self.factory, log, settings=settings
        )
        self.engine.on_spawned = self._spawned
        self.engine.on_exited = self._exited
        self.engine.stop_process = self._stop_process
        self.fingerprint: Hashable = plan.initial_fingerprint
        self._failed_fingerprint: Hashable = None
        self.refused = 0  # older store versions refused (#12), for status and /metrics
        self.refused_reason: str | None = None
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        # The sessions not yet ended, so that admitting one counts them without a walk over
        # the KEEP_ENDED sessions the table remembers (once per start).
        self._running: set[Session] = set()
        self.draining = False
        self.metrics: Metrics | None = None
        self.ever_ready = False
        self.import_failures = 0  # warm processes in a row that died before they were ready
        self._starting = 0  # admitted, not yet in the table
        self._deferred = 0  # starts whose refill waits for the answer (after_start)
        self._claimed: set[int] = set()  # warming processes a waiting session watches
        self.draining_sessions: list[Session] = []  # running when shutdown began
        self._lock = anyio.Lock()
        self._readyz_lock = anyio.Lock()
        self._tg: anyio.abc.TaskGroup | None = None

    # --- the engine's hooks ---------------------------------------------------------------

    def _spawned(self, worker: Worker) -> None:
        warm = self.factory.processes[worker.pid]

        def ready() -> None:
            self.factory.has_readyz = self.factory.has_readyz or warm.has_readyz
            self.ever_ready = True
            self.import_failures = 0
            self.engine.ready(worker)

        warm.on_ready = ready
        warm.start_reading()

    def _exited(self, worker: Worker) -> None:
        warm = self.factory.processes.pop(worker.pid, None)
        if warm is None:
            return
        if warm.session is not None:
            self._ended(warm.session)
        elif not warm.ready.is_set() and not worker.stop_sent:
            self.import_failures += 1
            self.log(
                "session_process_failed",
                pid=worker.pid,
                code=worker.exit_code,
                entrypoint=str(self.entry),
                level="error",
            )

    def _stop_process(self, worker: Worker, session: bool) -> None:
        warm = self.factory.processes.get(worker.pid)
        if warm is None or (session and warm.session is not None):
            if warm is not None and warm.session is not None and warm.session.active:
                warm.session.state = "stopping"
            worker.stop(self.config.stop_signal)  # a session: its entrypoint is cancelled
        else:
            warm.retire()  # an idle process: close its channel, it exits at once

    # --- host.Mode ------------------------------------------------------------------------

    def load(self) -> EnvironmentLayers:
        layers, values = self.plan.reload()
        if self.masker is not None:
            self.masker.add(values)
        return layers

    async def serve(self, tg: anyio.abc.TaskGroup) -> None:
        from functools import partial

        from launcher.ops.http_server import serve_asgi

        self._tg = tg
        if self.listener is None or self.create_app is None:
            return
        options = self.server_options(self) if self.server_options is not None else {}
        server = partial(serve_asgi, **options)
        address = await tg.start(server, self.create_app(self), self.listener)
        self.log(
            "sessions_listening",
            address=f"{address[0]}:{address[1]}",
            entrypoint=str(self.entry),
            idle=self.config.idle,
            max_sessions=self.max_sessions,
            auth="bearer" if self.api_token() else "none",
            version=self.version,
        )

    def current_layers(self) -> EnvironmentLayers:
        """The environment a session started now runs with."""
        layers = self.engine.generations.get(self.engine.wanted_generation())
        return layers if layers is not None else self.plan.layers

    def api_token(self) -> str | None:
        """The bearer token from the bound set's current version (never given to workers)."""
        return self.current_layers().secrets.get(TOKEN_VARIABLE) or None

    def current_environment(self) -> dict[str, str]:
        """What a session process starting now gets (DAILY_API_KEY for POST /start)."""
        from launcher.environment import compose

        return compose(self.current_layers(), worker=0)

    @property
    def version(self) -> int | None:
        """The version a session started now runs."""
        layers = self.engine.generations.get(self.engine.wanted_generation())
        return layers.secrets_version if layers is not None else None

    def pool_status(self) -> PoolStatus:
        """For /healthz, /readyz, metrics and systemd: ready while sessions can start.

        The idle processes themselves would make readiness flap on every session (a
        replacement is warming for a moment), so readiness means: not draining, the agent
        imported successfully at least once, and the last process did not fail to import.
        """
        from launcher.ops.status import PoolStatus, WorkerState, WorkerStatus

        ok = self.ever_ready and self.import_failures == 0 and not self.draining
        state = WorkerState.READY if ok else WorkerState.STARTING
        # Failed imports count as restarts, so /healthz sees an agent that cannot start.
        slot = WorkerStatus(0, os.getpid(), state, self.version, restarts=self.import_failures)
        return PoolStatus(
            name=self.plan.name,
            pid=os.getpid(),
            secret_set=self.plan.secret_set,
            version=self.version,
            workers=(slot,),
            rollout=self._refusals(),
            **self.engine.exit_fields(),
        )

    def _refusals(self) -> Any:
        """Refused versions as a rollout status: the status line and the metric show them."""
        from launcher.ops.status import RolloutState, RolloutStatus

        if not self.refused:
            return RolloutStatus()
        return RolloutStatus(
            state=RolloutState.ABORTED, reason=self.refused_reason, refused=self.refused
        )

    def control_status(self) -> dict[str, object]:
        """Session mode's own shape: the warm processes and the sessions, no slots."""
        from launcher.supervision.planner import Phase

        warm = []
        for proc in self.engine.state.procs:
            worker = self.engine.workers.get(proc.pid)
            state = {Phase.STARTING: "warming", Phase.READY: "warm"}.get(proc.phase, "retiring")
            warm.append(
                {
                    "pid": proc.pid,
                    "state": state,
                    "version": worker.version if worker is not None else None,
                    "started_at": worker.started_at if worker is not None else None,
                }
            )
        rollout = self.engine.status(self.plan.name, self.plan.secret_set).rollout
        return {
            "mode": "sessions",
            "name": self.plan.name,
            "pid": os.getpid(),
            "secret_set": self.plan.secret_set,
            "version": self.version,
            "draining": self.draining,
            "idle": self.config.idle,
            "max_sessions": self.max_sessions,
            "warm": warm,
            "sessions_active": self.active(),
            "sessions": [s.as_dict() for s in self.sessions.values() if s.active],
            "rollout": {
                "state": rollout.state.value,
                "reason": self.refused_reason if self.refused else rollout.reason,
                "refused": self.refused,
            },
            **_exits_as_data(self.engine.exit_fields()),
        }

    def control_extra(self) -> dict[str, Any]:
        return {"sessions": self.control}

    async def reload(self, reason: str = "reload") -> dict[str, Any]:
        """`agent-run reload`, SIGHUP, a code change: new processes for new sessions."""
        old = self.version
        try:
            await self.refresh(force=True, reason=reason)
        except LauncherError as error:
            return {"ok": False, "result": "aborted", "error": error.message}
        return {
            "ok": True,
            "result": "succeeded",
            "message": f"idle session processes replaced (v{old} -> v{self.version})",
        }

    def store_changed(self) -> None:
        # Only an optimisation: the next session would be a cold start otherwise (dispatch
        # checks the version itself).
        if not self.draining and self._tg is not None:
            self._tg.start_soon(self.refresh)

    def code_changed(self) -> None:
        # `agent-run dev`: idle processes imported the old code; running sessions finish on
        # the code they started with, as they do on the secrets they started with.
        if self.factory.renew_template is not None:
            self.factory.renew_template()  # a dependency may have changed too (#18)
        if not self.draining and self._tg is not None:
            self._tg.start_soon(self.reload, "code_changed")

    def shutting_down(self) -> None:
        self.draining = True
        self.draining_sessions = [s for s in self.sessions.values() if s.active]
        self.log(
            "sessions_draining",
            active=self.active(),
            drain_timeout=self.config.drain_timeout,
        )

    def sessions_active(self) -> int | None:
        return self.active()

    # --- read-after-write ----------------------------------------------------------------

    async def refresh(self, force: bool = False, reason: str = "reload") -> bool:
        """Follow the store before a process is handed out; True when a new target began.

        `reason` says why a forced refresh replaced the idle processes when the secrets
        version did not move (`reload`, `code_changed`): that is not a secrets update."""
        fingerprint = self.plan.fingerprint
        if fingerprint is None and not force:
            return False
        current = fingerprint() if fingerprint is not None else None
        if not force and current in (self.fingerprint, self._failed_fingerprint):
            return False
        async with self._lock:
            current = fingerprint() if fingerprint is not None else None
            if not force and current == self.fingerprint:
                return False  # another request did it while we waited
            old = self.version
            try:
                snapshot = self.plan.source.snapshot()
            except LauncherError as error:
                self._failed_fingerprint = current
                if isinstance(error, VersionRegression):
                    self.refused += 1
                    self.refused_reason = error.message
                    self.log("secrets_version_refused", reason=error.message, level="error")
                self.log(
                    "sessions_update_failed",
                    reason=error.message,
                    keeping_version=old,
                    level="error",
                )
                if force:
                    raise
                return False
            layers = snapshot.layers
            if self.masker is not None:
                self.masker.add(snapshot.masked)
            # The snapshot's fingerprint was read *before* it decrypted: a write landing
            # during the reload makes the next dispatch reload again rather than be missed.
            observed = snapshot.fingerprint if fingerprint is not None else None
            previous, self.fingerprint = self.fingerprint, observed
            self.engine.new_target(layers)
            if layers.secrets_version == old and current == previous:
                self.log("sessions_idle_replaced", reason=reason, version=old)
            else:
                self.log(
                    "sessions_secrets_updated", from_version=old, to_version=layers.secrets_version
                )
            return True

    # --- sessions -------------------------------------------------------------------------

    def active(self) -> int:
        return self._starting + len(self._running)

    def admit(self) -> None:
        """Count a start before any of its request is read: Refused(503) while draining,
        Refused(429) at --max-sessions. `start()` or `release()` gives the place back."""
        if self.draining:
            raise Refused(503, "draining: this runtime is shutting down and takes no sessions")
        maximum = self.max_sessions
        if self.active() >= maximum:
            raise Refused(
                429,
                f"at capacity: {maximum} sessions running (--max-sessions); retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )
        self._starting += 1

    def release(self) -> None:
        """Give back a place taken by `admit()` for a start that will not happen."""
        self._starting -= 1

    async def take(self) -> tuple[WarmProcess, bool]:
        """A process on the newest good version, ready for a session: (process, was it warm).

        A warm one if one is ready; else a warming one nobody else waits for; else one
        started for this session (a cold start)."""
        import anyio

        from launcher.supervision.planner import Phase

        engine = self.engine
        ready = engine.warm(engine.wanted_generation(), Phase.READY)
        if ready:  # the common case, taken without a timeout scope (the loop's first step)
            engine.take(ready[0])
            return self.factory.processes[ready[0].pid], True
        with anyio.move_on_after(self.config.ready_timeout):
            while True:
                wanted = engine.wanted_generation()
                ready = engine.warm(wanted, Phase.READY)
                if ready:
                    engine.take(ready[0])
                    return self.factory.processes[ready[0].pid], True
                warming = [
                    w for w in engine.warm(wanted, Phase.STARTING) if w.pid not in self._claimed
                ]
                if warming:
                    pid = warming[0].pid
                    self._claimed.add(pid)
                    try:
                        await self._until_ready(self.factory.processes[pid])
                    finally:
                        self._claimed.discard(pid)
                    continue  # ready now (take it, or another), or gone (try again)
                try:
                    worker = await engine.burst()
                except OSError as error:
                    raise StartFailed(f"cannot start a session process: {error.strerror}") from None
                warm = self.factory.processes[worker.pid]
                await self._until_ready(warm)
                if warm.ready.is_set() and not warm.closed.is_set():
                    return warm, False
                break
        raise StartFailed(
            f"no session process became ready within --ready-timeout "
            f"{self.config.ready_timeout:g}s (importing {self.entry.target} failed or hung; "
            "see its output above)"
        )

    async def _until_ready(self, warm: WarmProcess) -> None:
        await warm.until(warm.ready)

    async def start(
        self,
        body: Any,
        *,
        session_id: str | None = None,
        kind: str = "plain",
        fields: dict[str, Any] | None = None,
        fds: tuple[int, ...] = (),
        max_seconds: float | None = None,
    ) -> Session:
        """Start an admitted session with `body`; returns once its entrypoint is being called.

        `kind` and `fields` shape the entrypoint's argument (runtime.py): "plain", "daily"
        (`room_url`, `token`) or "websocket" (`head`, with the connection in `fds`).
        """
        import json

        import anyio

        requested = time.perf_counter()
        self.engine.defer_starts()  # the refill forks after the answer (after_start)
        self._deferred += 1
        try:
            if session_id is not None and session_id in self.sessions:
                raise Refused(409, f"session {session_id!r} exists already")
            await self.refresh()
            try:
                warm, was_warm = await self.take()
            except StartFailed as error:
                raise Refused(500, error.message) from None
            session = Session(session_id or str(uuid.uuid4()), warm, was_warm)
            warm.session = session
            self._remember(session)
        except BaseException:
            if not isinstance(sys.exc_info()[1], Refused):
                self.after_start_now()
            raise
        finally:
            self._starting -= 1
        if warm.worker.relay is not None:
            from launcher.ops.logs import session_tag, uses_json

            warm.worker.relay.tag = session_tag(session.id, uses_json(self.config.log_format))
        request = {"session_id": session.id, "kind": kind, "body": body, **(fields or {})}
        line = json.dumps(request).encode() + b"\n"
        with anyio.move_on_after(self.config.ready_timeout):
            try:
                await warm.send(line, fds)
            except OSError:
                pass
            else:
                await warm.until(warm.started)
        if not warm.started.is_set():
            session.state = "failed"
            warm.worker.kill_group()
            raise Refused(500, f"session process {warm.pid} exited before the entrypoint ran")
        if session.state == "starting":  # it may already have ended while we waited
            session.state = "running"
        session.started_at = time.time()
        seconds = time.perf_counter() - requested
        session.start_ms = round(seconds * 1000, 3)
        if self.metrics is not None:
            self.metrics.session_started(seconds)
        limit = max_seconds if max_seconds is not None else self.config.max_session_seconds
        if limit is not None and self._tg is not None:
            self._tg.start_soon(self._time_limit, session, limit)
        self.log(
            "session_started",
            session=session.id,
            pid=warm.pid,
            version=warm.version,
            warm=was_warm,
            start_ms=session.start_ms,
        )
        return session

    def after_start_now(self) -> None:
        if self._deferred:
            self._deferred -= 1
            self.engine.resume_starts()

    async def after_start(self) -> None:
        """Let the engine refill the warm slots; called once the start has been answered, so
        that the fork of the replacement does not delay the answer. Async on purpose:
        Starlette runs a sync background task in a thread, and processes are only spawned on
        the main thread (PR_SET_PDEATHSIG is tied to the forking thread)."""
        self.after_start_now()

    def _remember(self, session: Session) -> None:
        self.sessions[session.id] = session
        if session.active:
            self._running.add(session)
        excess = len(self.sessions) - KEEP_ENDED
        if excess > 0:
            # The oldest ended sessions go; only as many entries are visited as it takes.
            stale: list[str] = []
            for key, old in self.sessions.items():
                if len(stale) == excess:
                    break
                if not old.active:
                    stale.append(key)
            for key in stale:
                del self.sessions[key]

    def list_sessions(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.sessions.values()]

    def stop(self, session: Session) -> None:
        """The stop signal, once; the process group is SIGKILLed after --drain-timeout."""
        if not session.active or session.process.worker.stop_sent:
            return
        session.state = "stopping"
        self.engine.end_session(session.process.pid)

    async def _time_limit(self, session: Session, seconds: float) -> None:
        """The maximum session duration: a warning, then the stop signal, as DELETE does."""
        import anyio

        warning = min(60.0, seconds * 0.1)
        with anyio.move_on_after(seconds - warning):
            await session.done.wait()
        if not session.active:
            return
        self.log(
            "session_time_limit_near",
            session=session.id,
            pid=session.process.pid,
            stop_in_s=round(warning, 3),
            max_session_seconds=seconds,
            level="warning",
        )
        with anyio.move_on_after(warning):
            await session.done.wait()
        if session.active:
            self.log("session_time_limit", session=session.id, pid=session.process.pid)
            self.stop(session)

    async def readyz(self) -> tuple[bool, dict[str, Any]]:
        """Readiness for /readyz: sessions can start, and the agent's `readyz()` (asked of
        a warm process, where the agent is imported) says so when the agent defines one."""
        import json

        import anyio

        from launcher.supervision.planner import Phase

        status = self.pool_status()
        if status.workers[0].state.value != "ready":
            return False, {"status": "not ready", "draining": self.draining}
        if not self.factory.has_readyz:
            return True, {"status": "ok"}
        wanted = self.engine.wanted_generation()
        candidates = self.engine.warm(wanted, Phase.READY) or self.engine.warm(
            wanted, Phase.STARTING
        )
        warm = self.factory.processes.get(candidates[0].pid) if candidates else None
        if warm is None:
            return False, {"status": "not ready", "error": "no warm process to ask readyz()"}
        with anyio.move_on_after(READYZ_TIMEOUT_S):
            await warm.ready.wait()  # a replacement still importing the agent: wait for it
        if not warm.ready.is_set() or warm.closed.is_set():
            return False, {"status": "not ready", "error": "no warm process to ask readyz()"}
        async with self._readyz_lock:
            warm.readyz_answered = anyio.Event()
            try:
                await warm.send(b'{"readyz": true}\n')
            except OSError:
                return False, {"status": "not ready", "error": "warm process went away"}
            with anyio.move_on_after(READYZ_TIMEOUT_S):
                await warm.readyz_answered.wait()
        if not warm.readyz_answered.is_set():
            return False, {"status": "not ready", "error": "readyz() did not answer"}
        answer = json.loads(warm.readyz_answer)
        return bool(answer.get("ready")), answer

    def _ended(self, session: Session) -> None:
        code = session.process.worker.exit_code
        session.exit_code = code
        session.ended_at = time.time()
        self._running.discard(session)
        if session.process.worker.stop_sent:
            session.state = "stopped"
        elif session.state == "failed" or code != 0:
            session.state = "failed"
        else:
            session.state = "ended"
        session.done.set()
        self.log(
            "session_ended",
            session=session.id,
            pid=session.process.pid,
            outcome=session.state,
            code=code,
            seconds=round(session.ended_at - session.created_at, 3),
            level="info" if session.state != "failed" else "warning",
        )

    async def control(self, request: Any) -> dict[str, Any]:
        """`agent-run sessions` over the control socket."""
        action = request.get("action", "list")
        if action == "list":
            return {"ok": True, "sessions": self.list_sessions()}
        if action == "start":
            try:
                self.admit()
                started = await self.start(request.get("body", {}))
            except Refused as refused:
                return {"ok": False, "error": refused.message, "status": refused.status}
            finally:
                await self.after_start()
            return {"ok": True, "session": started.as_dict()}
        session = self.sessions.get(str(request.get("id")))
        if session is None:
            return {"ok": False, "error": f"no session {request.get('id')!r}", "status": 404}
        if action == "stop":
            self.stop(session)
        elif action != "show":
            return {"ok": False, "error": f"unknown sessions action {action!r}"}
        return {"ok": True, "session": session.as_dict()}


def _exits_as_data(fields: dict[str, Any]) -> dict[str, Any]:
    """The engine's exit tally and last exits as JSON-ready data."""
    return {
        "exit_counts": dict(fields["exit_counts"]),
        "recent_exits": [record._asdict() for record in fields["recent_exits"]],
        "census": [entry._asdict() for entry in fields["census"]],
    }

"""Session mode: agent-run serves sessions itself, from pre-warmed processes (SPEC §5).

A target that defines `bot` (Pipecat's `async def bot(runner_args)`), or names a function with
`--entrypoint`, is not run as a pool of workers. `--idle N` processes import it ahead of time
(warm_pool.py, runtime.py) and wait; `POST /sessions` (session_api.py) hands the request's
JSON to one of them, which runs the entrypoint and exits when the session ends. One process
per session, each in its own process group: nothing leaks between sessions.

Read-after-write: every dispatch re-reads the store's fingerprint (the bound set's version and
the platform file's, from plaintext headers: no decryption, a few tens of microseconds) and
compares it with the one the warm processes were started with. If the store is newer, the new
version is decrypted, the idle processes retire, and the session starts in a process with the
new values — a cold start for that one request. So a session requested after `secrets set`
returned always sees the new values; the guarantee does not depend on the file watch, which
only refreshes the idle processes early so the next session is warm too. A version that fails
to decrypt is logged and sessions keep starting on the last good one (a bad update never takes
the service down); it is retried when the store changes again.

Shutdown (TERM/INT): new sessions get 503, idle processes retire, running sessions may finish
within `--drain-timeout`; then each gets the stop signal once and, STOP_GRACE_S later, its
process group is SIGKILLed. A second TERM/INT skips the waiting.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from launcher.errors import LauncherError
from launcher.sessions.api import RETRY_AFTER_S, Refused
from launcher.sessions.entrypoint import Entrypoint, find_entrypoint
from launcher.sessions.warm_pool import StartFailed, WarmPool, WarmProcess

if TYPE_CHECKING:
    from pathlib import Path

    import anyio
    import anyio.abc

    from launcher.ops.metrics import Metrics
    from launcher.ops.status import PoolStatus
    from launcher.process.output import Masker
    from launcher.supervisor import Plan

__all__ = ["Entrypoint", "SessionRuntime", "find_entrypoint", "serve"]

STOP_GRACE_S = 5.0  # after the drain: stop signal, then this long before SIGKILL
KEEP_ENDED = 1000  # ended sessions kept for GET /sessions


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
    """The session table, the dispatcher (with the read-after-write check) and shutdown."""

    def __init__(self, plan: Plan, entry: Entrypoint, masker: Masker | None, log: Any) -> None:
        import anyio

        self.plan = plan
        self.config = plan.config
        self.entry = entry
        self.masker = masker
        self.log = log
        self.pool = WarmPool(plan.config, entry, plan.layers, masker, log)
        self.pool.on_exit = self._process_exited
        self.fingerprint: Hashable = plan.initial_fingerprint
        self._failed_fingerprint: Hashable = None
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.draining = False
        self.metrics: Metrics | None = None
        self._starting = 0  # admitted, not yet in the table
        self._lock = anyio.Lock()
        self._exited = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None

    def start_pool(self, tg: anyio.abc.TaskGroup) -> None:
        self._tg = tg
        self.pool.start(tg)

    # --- read-after-write ----------------------------------------------------------------

    async def refresh(self, force: bool = False, reason: str = "reload") -> bool:
        """Follow the store before a process is handed out; True when a new generation began.

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
            old = self.pool.version
            try:
                layers, values = self.plan.reload()
            except LauncherError as error:
                self._failed_fingerprint = current
                self.log(
                    "sessions_update_failed",
                    reason=error.message,
                    keeping_version=old,
                    level="error",
                )
                if force:
                    raise
                return False
            if self.masker is not None:
                self.masker.add(values)
            # The fingerprint read *before* the reload: a write landing during it makes the
            # next dispatch reload again rather than be missed.
            previous, self.fingerprint = self.fingerprint, current
            retired = self.pool.new_generation(layers)
            if layers.secrets_version == old and current == previous:
                self.log("sessions_idle_replaced", reason=reason, version=old, retired_idle=retired)
            else:
                self.log(
                    "sessions_secrets_updated",
                    from_version=old,
                    to_version=layers.secrets_version,
                    retired_idle=retired,
                )
            return True

    # --- sessions -------------------------------------------------------------------------

    def active(self) -> int:
        return self._starting + sum(1 for s in self.sessions.values() if s.active)

    def admit(self) -> None:
        """Refused(503) while draining, Refused(429) at --max-sessions."""
        if self.draining:
            raise Refused(503, "draining: this runtime is shutting down and takes no sessions")
        maximum = self.config.max_sessions
        if maximum is not None and self.active() >= maximum:
            raise Refused(
                429,
                f"at capacity: {maximum} sessions running (--max-sessions); retry later",
                {"Retry-After": str(RETRY_AFTER_S)},
            )

    async def start(self, body: Any) -> Session:
        """Start a session with `body`; returns once its entrypoint is being called."""
        import json

        import anyio

        requested = time.perf_counter()
        self._starting += 1
        try:
            await self.refresh()
            try:
                warm, was_warm = await self.pool.take()
            except StartFailed as error:
                raise Refused(500, error.message) from None
            session = Session(str(uuid.uuid4()), warm, was_warm)
            warm.session = session
            self._remember(session)
        finally:
            self._starting -= 1
        line = json.dumps({"session_id": session.id, "body": body}).encode() + b"\n"
        with anyio.move_on_after(self.config.ready_timeout):
            try:
                await warm.send(line)
            except OSError:
                pass
            else:
                async with anyio.create_task_group() as tg:

                    async def closed() -> None:
                        await warm.closed.wait()
                        tg.cancel_scope.cancel()

                    tg.start_soon(closed)
                    await warm.started.wait()
                    tg.cancel_scope.cancel()
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
        self.log(
            "session_started",
            session=session.id,
            pid=warm.pid,
            version=warm.version,
            warm=was_warm,
            start_ms=session.start_ms,
        )
        return session

    async def after_start(self) -> None:
        """Refill the warm pool; called once the start has been answered, so that the fork
        of the replacement does not delay the answer. Async on purpose: Starlette runs a sync
        background task in a thread, and processes are only spawned on the main thread
        (PR_SET_PDEATHSIG is tied to the forking thread)."""
        self.pool.refill()

    def _remember(self, session: Session) -> None:
        self.sessions[session.id] = session
        if len(self.sessions) > KEEP_ENDED:
            for key, old in list(self.sessions.items()):
                if len(self.sessions) <= KEEP_ENDED:
                    break
                if not old.active:
                    del self.sessions[key]

    def list_sessions(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.sessions.values()]

    def stop(self, session: Session) -> None:
        """The stop signal, once; the process group is SIGKILLed after --drain-timeout."""
        if not session.active or session.process.worker.stop_sent:
            return
        session.state = "stopping"
        session.process.worker.stop(self.config.stop_signal)
        if self._tg is not None:
            self._tg.start_soon(self._kill_after, session, self.config.drain_timeout)

    async def _kill_after(self, session: Session, seconds: float) -> None:
        import anyio

        with anyio.move_on_after(seconds):
            await session.done.wait()
        if session.active:
            session.process.worker.kill_group()

    # --- exits ----------------------------------------------------------------------------

    def reap(self) -> None:
        """Collect every exited child (ours and, as subreaper, orphans): the one reaper
        dispatches our processes' exits to the warm pool, which calls `_process_exited`."""
        from launcher.process import reaper

        reaper.reap()
        self._exited.set()
        import anyio

        self._exited = anyio.Event()

    def _process_exited(self, warm: WarmProcess) -> None:
        if warm.session is not None:
            self._ended(warm.session)

    def _ended(self, session: Session) -> None:
        code = session.process.worker.exit_code
        session.exit_code = code
        session.ended_at = time.time()
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

    async def _wait_processes(self, until: anyio.Event | None = None) -> None:
        """Until every session process has been reaped (or `until` is set)."""
        while self.pool.processes and not (until is not None and until.is_set()):
            await self._exited.wait()

    async def shutdown(self, force: anyio.Event) -> None:
        import anyio

        self.draining = True
        self.pool.retire_idle()
        active = self.active()
        self.log("sessions_draining", active=active, drain_timeout=self.config.drain_timeout)
        async with anyio.create_task_group() as tg:

            async def forced() -> None:
                await force.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(forced)
            with anyio.move_on_after(self.config.drain_timeout):
                await self._wait_processes()
            tg.cancel_scope.cancel()
        stopped = 0  # sessions still running at the end of the drain: asked to stop
        for warm in self.pool.live():
            warm.worker.stop(self.config.stop_signal)
            if warm.session is not None and warm.session.active:
                warm.session.state = "stopping"
                stopped += 1
        if self.pool.processes:
            with anyio.move_on_after(0 if force.is_set() else STOP_GRACE_S):
                await self._wait_processes(force)
        for warm in self.pool.live():
            warm.worker.kill_group()
        with anyio.move_on_after(STOP_GRACE_S):
            await self._wait_processes()
        self.log("sessions_stopped", stopped=stopped, finished=max(0, active - stopped))

    # --- status ---------------------------------------------------------------------------

    def status(self) -> PoolStatus:
        """The warm pool as `agent-run status` shows it (idle processes are the workers)."""
        from launcher.ops.status import PoolStatus, WorkerState, WorkerStatus

        workers = tuple(
            WorkerStatus(
                slot=index,
                pid=warm.pid,
                state=WorkerState.READY if warm.ready.is_set() else WorkerState.STARTING,
                version=warm.version,
                started_at=warm.worker.started_at,
            )
            for index, warm in enumerate(self.pool.idle)
        )
        busy = tuple(
            WorkerStatus(
                slot=-1,
                pid=s.process.pid,
                state=WorkerState.READY,
                version=s.process.version,
                started_at=s.started_at,
            )
            for s in self.sessions.values()
            if s.active
        )
        return PoolStatus(
            name=self.plan.name,
            pid=os.getpid(),
            secret_set=self.plan.secret_set,
            version=self.pool.version,
            workers=workers,
            draining=busy,
        )

    def health_status(self) -> PoolStatus:
        """For /healthz and /readyz: one synthetic slot, ready while sessions can start.

        The idle processes themselves would make readiness flap on every session (a
        replacement is warming for a moment), so readiness means: not draining, the agent
        imported successfully at least once, and the last process did not fail to import.
        """
        from launcher.ops.status import PoolStatus, WorkerState, WorkerStatus

        ok = self.pool.ever_ready and self.pool.failures == 0
        state = WorkerState.READY if ok else WorkerState.STARTING
        # Failed imports count as restarts, so /healthz sees an agent that cannot start.
        slot = WorkerStatus(0, os.getpid(), state, self.pool.version, restarts=self.pool.failures)
        return PoolStatus(
            name=self.plan.name,
            pid=os.getpid(),
            secret_set=self.plan.secret_set,
            version=self.pool.version,
            workers=(slot,),
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

    async def reload(self, reason: str = "reload") -> dict[str, Any]:
        """`agent-run reload`: re-read the store and replace the idle processes."""
        old = self.pool.version
        try:
            await self.refresh(force=True, reason=reason)
        except LauncherError as error:
            return {"ok": False, "result": "aborted", "error": error.message}
        return {
            "ok": True,
            "result": "succeeded",
            "message": f"idle session processes replaced (v{old} -> v{self.pool.version})",
        }


def serve(plan: Plan, entry: Entrypoint) -> int:
    """Run session mode until TERM/INT; returns the exit code (0 after a graceful stop).

    `plan` is what `agent-run` resolved (config, environment layers, how to re-read the
    store); `entry` comes from `find_entrypoint`.
    """
    from launcher import signals
    from launcher.ops.http_server import bind, parse_host_port
    from launcher.process import worker as process
    from launcher.process.output import Masker

    config = plan.config
    host, port = parse_host_port(config.listen, "--listen")
    listener = bind(host, port, "--listen")
    health_socket = None
    if config.health:
        host, port = parse_host_port(config.health, "--health")
        health_socket = bind(host, port, "--health")
    signals.install_early()
    process.become_subreaper()
    masker = Masker(plan.masked_values) if config.mask else None
    from launcher.process.containment import contain

    contain()
    import anyio

    return anyio.run(_main, plan, entry, masker, listener, health_socket)


async def _main(
    plan: Plan, entry: Entrypoint, masker: Masker | None, listener: Any, health_socket: Any
) -> int:
    import anyio

    from launcher import signals
    from launcher.ops import logs
    from launcher.ops.http_server import serve_asgi
    from launcher.process.output import Masker
    from launcher.sessions.api import create_app

    config = plan.config
    log = logs.configure(config.log_format, masker or Masker(()))
    from launcher.process.containment import current as containment

    log("containment", mode=containment().mode, detail=containment().detail)
    runtime = SessionRuntime(plan, entry, masker, log)
    force = anyio.Event()
    stopping = False
    async with anyio.create_task_group() as tg:
        runtime.start_pool(tg)
        address = await tg.start(serve_asgi, create_app(runtime), listener)
        log(
            "sessions_listening",
            address=f"{address[0]}:{address[1]}",
            entrypoint=str(entry),
            idle=config.idle,
            max_sessions=config.max_sessions,
            version=runtime.pool.version,
        )
        if health_socket is not None:
            from launcher.ops.health import create_app as health_app
            from launcher.ops.metrics import Metrics

            runtime.metrics = Metrics(runtime.health_status, sessions_active=runtime.active)
            app = health_app(runtime.health_status, runtime.metrics, lambda: stopping)
            health = await tg.start(serve_asgi, app, health_socket)
            log("health_listening", address=f"{health[0]}:{health[1]}")
        if config.watch and plan.watch_dir is not None and plan.fingerprint is not None:
            tg.start_soon(_refresh_on_change, plan, runtime, log)
        if plan.code_dir is not None:
            tg.start_soon(_reimport_on_code_change, plan.code_dir, runtime, log)
        if plan.run_dir is not None:
            tg.start_soon(_serve_control, plan, runtime, log)

        async def shut_down() -> None:
            await runtime.shutdown(force)
            tg.cancel_scope.cancel()

        async for signum in signals.receive():
            if signum == signal.SIGCHLD:
                runtime.reap()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                if stopping:
                    force.set()  # a second TERM/INT: no more waiting
                else:
                    stopping = True
                    log("signal_received", signal=signal.Signals(signum).name, action="drain")
                    tg.start_soon(shut_down)
            elif signum == signal.SIGHUP:
                tg.start_soon(runtime.reload)
    return 0


async def _refresh_on_change(plan: Plan, runtime: SessionRuntime, log: Any) -> None:
    """Replace the idle processes as soon as the store changes, so the next session is warm.

    Only an optimisation: dispatch checks the version itself."""
    from launcher.watch import fingerprints

    assert plan.watch_dir is not None and plan.fingerprint is not None
    if not os.path.isdir(plan.watch_dir):
        log("watch_skipped", reason=f"{plan.watch_dir} does not exist", level="warning")
        return
    async for _ in fingerprints(plan.watch_dir, plan.fingerprint, plan.initial_fingerprint):
        if not runtime.draining:
            await runtime.refresh()


async def _reimport_on_code_change(directory: Path, runtime: SessionRuntime, log: Any) -> None:
    """`agent-run dev`: idle processes imported the old code; replace them. Running sessions
    finish on the code they started with, as they do on the secrets they started with."""
    from launcher.watch import code_changes

    async for files in code_changes(directory):
        log("code_changed", files=",".join(files[:5]))
        if not runtime.draining:
            await runtime.reload(reason="code_changed")


async def _serve_control(plan: Plan, runtime: SessionRuntime, log: Any) -> None:
    from pathlib import Path

    import anyio

    from launcher.ops import control
    from launcher.ops.status import as_dict

    def status() -> dict[str, object]:
        data = as_dict(runtime.status())
        data["mode"] = "sessions"
        data["sessions_active"] = runtime.active()
        return data

    handlers = control.Handlers(
        status=status, reload=runtime.reload, extra={"sessions": runtime.control}
    )
    assert plan.run_dir is not None
    try:
        async with control.serving(Path(plan.run_dir), plan.name, handlers) as path:
            log("control_listening", path=str(path))
            await anyio.sleep_forever()
    except (LauncherError, OSError) as error:
        log("control_unavailable", reason=str(error), level="warning")

"""Session mode: agent-run serves sessions itself, from pre-warmed processes (SPEC §5).

A target that defines `bot` (Pipecat's `async def bot(runner_args)`), or names a function with
`--entrypoint`, is not run as a pool of workers. Instead `--idle N` processes import it ahead
of time (launcher/runtime.py) and wait; `POST /sessions` hands the request's JSON to one of
them, which runs the entrypoint and exits when the session ends. One process per session:
nothing leaks between sessions.

Read-after-write: every dispatch compares the bound set's version in the store (one short
read, no decryption) with the version the warm processes were started with. If the store is
newer, the new version is decrypted, the stale idle processes are retired, and the session
starts in a process with the new values — so a session requested after `secrets set`
returned always sees them. Running sessions keep the values they started with.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from launcher.config import Target, TargetKind
from launcher.errors import UsageError


def _defines(path: Path, function: str) -> bool:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return False
    return any(
        isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == function
        for node in tree.body
    )


def find_entrypoint(target: Target, option: str | None) -> tuple[str, str, str] | None:
    """(kind, target, function) when the target runs in session mode, else None.

    Detection reads the source (AST), never imports it: the agent's module-level code runs
    once, in the process that serves the session.
    """
    if option:
        module, sep, function = option.rpartition(":")
        if not sep or not function.isidentifier():
            raise UsageError(f"--entrypoint {option!r} is not module:function (or :function)")
        if module:
            return ("module", module, function)
        if target.kind is TargetKind.COMMAND:
            raise UsageError("--entrypoint :function needs a Python target (bot.py or -m module)")
        return (target.kind.value, target.value, function)
    if target.kind is TargetKind.SCRIPT:
        return ("script", target.value, "bot") if _defines(Path(target.value), "bot") else None
    if target.kind is TargetKind.MODULE:
        import importlib.util

        try:
            spec = importlib.util.find_spec(target.value)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            return None
        return ("module", target.value, "bot") if _defines(Path(spec.origin), "bot") else None
    return None


class WarmProcess:
    """A pre-warmed process: imported the agent, waiting on its channel."""

    def __init__(self, worker: Any, channel: socket.socket, version: int | None) -> None:
        self.worker = worker
        self.channel = channel
        self.version = version
        self.ready = False
        self.buffer = b""

    async def read_line(self) -> bytes:
        """The next line from the process; EOFError when it is gone or was retired."""
        import anyio

        while b"\n" not in self.buffer:
            if self.channel.fileno() < 0:
                raise EOFError  # retired (channel closed) while we were waiting
            try:
                await anyio.wait_readable(self.channel)
                chunk = self.channel.recv(4096)
            except BlockingIOError:
                continue
            except (anyio.ClosedResourceError, ValueError, OSError):
                raise EOFError from None
            if not chunk:
                raise EOFError
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line

    def retire(self) -> None:
        """Close the channel: an idle process exits at once (it never got a session).

        A task may be waiting on this socket (the process is still importing the agent):
        notify_closing wakes it first. Closing under it would leave the event loop watching
        a file descriptor number that the next socketpair reuses.
        """
        import anyio

        if self.channel.fileno() >= 0:
            anyio.notify_closing(self.channel)
            self.channel.close()


class Session:
    def __init__(self, session_id: str, process: WarmProcess) -> None:
        self.id = session_id
        self.process = process
        self.pid = process.worker.pid
        self.version = process.version
        self.state = "starting"
        self.created_at = time.time()
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.exit_code: int | None = None
        self.start_ms: float | None = None
        self.warm = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pid": self.pid,
            "secrets_version": self.version,
            "state": self.state,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "exit_code": self.exit_code,
            "start_ms": self.start_ms,
            "warm": self.warm,
        }


class SessionRuntime:
    """The warm pool, the dispatcher and the session table."""

    def __init__(
        self, plan: Any, entry: tuple[str, str, str], masker: Any, notify_path: str, log: Any
    ) -> None:
        from launcher.store import Store

        self.plan = plan
        self.config = plan.config
        self.entry = entry
        self.masker = masker
        self.notify_path = notify_path
        self.log = log
        self.layers = plan.layers
        self.store = Store.open(self.config.store)
        self.idle: list[WarmProcess] = []
        self.sessions: dict[str, Session] = {}
        self.by_pid: dict[int, Any] = {}
        self.draining = False
        self._counter = 0
        self.metrics: Any = None  # set when --health is given
        self._tg: Any = None
        self._reload_lock: Any = None

    # --- processes -----------------------------------------------------------------------

    def _spawn(self) -> WarmProcess:
        from launcher.environment import compose
        from launcher.process import spawn

        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._counter += 1
        env = compose(self.layers, worker=self._counter, notify_socket=self.notify_path)
        env["AGENT_RUN_SESSION_FD"] = str(child.fileno())
        kind, target, function = self.entry
        try:
            worker = spawn(
                [sys.executable, "-m", "launcher.runtime", kind, target, function],
                env,
                slot=self._counter,
                version=self.layers.secrets_version,
                masker=self.masker,
                pass_fds=[child.fileno()],
            )
        finally:
            child.close()
        parent.setblocking(False)
        warm = WarmProcess(worker, parent, self.layers.secrets_version)
        self.by_pid[worker.pid] = worker
        return warm

    async def _warm_up(self, warm: WarmProcess) -> bool:
        import anyio

        with anyio.move_on_after(self.config.ready_timeout):
            try:
                if await warm.read_line() == b"ready":
                    warm.ready = True
            except (EOFError, OSError):
                pass
        if not warm.ready:
            self.log("session_process_failed", pid=warm.worker.pid, level="warning")
            warm.worker.kill_group()
        return warm.ready

    def refill(self) -> None:
        """Start warm processes until --idle are ready or warming."""
        while not self.draining and len(self.idle) < self.config.idle:
            warm = self._spawn()
            self.idle.append(warm)
            self._tg.start_soon(self._keep_warm, warm)

    async def _keep_warm(self, warm: WarmProcess) -> None:
        if not await self._warm_up(warm) and warm in self.idle:
            self.idle.remove(warm)

    async def _fresh_layers(self) -> None:
        """Read-after-write: follow the store's version before handing out a process."""
        if not self.config.secret_set:
            return
        current = self.store.current_version(self.config.secret_set)
        if current == self.layers.secrets_version:
            return
        async with self._reload_lock:
            current = self.store.current_version(self.config.secret_set)
            if current == self.layers.secrets_version:
                return
            layers, values = self.plan.reload()
            if self.masker is not None:
                self.masker.add(values)
            old = self.layers.secrets_version
            self.layers = layers
            stale = [w for w in self.idle if w.version != layers.secrets_version]
            for warm in stale:
                self.idle.remove(warm)
                warm.retire()
            self.log(
                "sessions_secrets_updated",
                from_version=old,
                to_version=layers.secrets_version,
                retired=len(stale),
            )
            self.refill()

    async def _take(self) -> tuple[WarmProcess, bool]:
        """A ready process on the current version: warm if one is idle, else started now."""
        await self._fresh_layers()
        for warm in list(self.idle):
            if warm.ready and warm.version == self.layers.secrets_version:
                self.idle.remove(warm)
                self.refill()
                return warm, True
        warm = self._spawn()
        self.refill()
        if not await self._warm_up(warm):
            raise RuntimeError("the session process did not start")
        return warm, False

    # --- sessions ------------------------------------------------------------------------

    def active(self) -> int:
        return sum(
            1 for s in self.sessions.values() if s.state in ("starting", "running", "stopping")
        )

    async def start(self, body: Any) -> Session:
        import anyio

        requested = time.perf_counter()
        warm, was_warm = await self._take()
        session = Session(uuid.uuid4().hex, warm)
        session.warm = was_warm
        self.sessions[session.id] = session
        line = json.dumps({"session_id": session.id, "body": body}).encode() + b"\n"
        try:
            warm.channel.setblocking(True)
            warm.channel.sendall(line)
            warm.channel.setblocking(False)
            with anyio.fail_after(self.config.ready_timeout):
                started = await warm.read_line()
        except (OSError, EOFError, TimeoutError):
            started = b""
        if started != b"started":
            session.state = "failed"
            warm.worker.kill_group()
            raise RuntimeError("the session process did not start the entrypoint")
        session.state = "running"
        session.started_at = time.time()
        session.start_ms = round((time.perf_counter() - requested) * 1000, 3)
        if self.metrics is not None:
            self.metrics.session_started(session.start_ms / 1000)
        self.log(
            "session_started",
            session=session.id,
            pid=session.pid,
            version=session.version,
            start_ms=session.start_ms,
            warm=was_warm,
        )
        return session

    def stop(self, session: Session) -> None:
        if session.state in ("starting", "running"):
            session.state = "stopping"
            session.process.worker.stop(self.config.stop_signal)
            self._tg.start_soon(self._kill_after_drain, session)

    async def _kill_after_drain(self, session: Session) -> None:
        import anyio

        await anyio.sleep(self.config.drain_timeout)
        if session.process.worker.alive:
            session.process.worker.kill_group()

    def reap(self) -> None:
        """Collect exited children; end their sessions or replace their idle processes."""
        from launcher.process import exited_children

        for pid, status in exited_children():
            worker = self.by_pid.pop(pid, None)
            if worker is None:
                continue
            worker.reaped(status)
            worker.kill_group()
            for session in self.sessions.values():
                if session.pid == pid and session.ended_at is None:
                    session.process.retire()  # its channel: one socket per session, not leaked
                    session.exit_code = worker.exit_code
                    session.ended_at = time.time()
                    failed = worker.exit_code != 0 and session.state != "stopping"
                    session.state = "failed" if failed else "ended"
                    self.log(
                        "session_ended",
                        session=session.id,
                        pid=pid,
                        code=worker.exit_code,
                        seconds=round(session.ended_at - session.created_at, 3),
                    )
            for warm in list(self.idle):
                if warm.worker.pid == pid:
                    self.idle.remove(warm)
                    warm.retire()
                    self.refill()

    def status(self) -> Any:
        """The warm processes as a PoolStatus, for /healthz and /metrics."""
        from launcher.status import PoolStatus, WorkerState, WorkerStatus

        workers = tuple(
            WorkerStatus(
                slot=index,
                pid=warm.worker.pid,
                state=WorkerState.READY if warm.ready else WorkerState.STARTING,
                version=warm.version,
                started_at=warm.worker.started_at,
            )
            for index, warm in enumerate(self.idle)
        )
        return PoolStatus(
            name=self.plan.name,
            pid=os.getpid(),
            secret_set=self.config.secret_set,
            version=self.layers.secrets_version,
            workers=workers,
        )

    def live(self) -> list[Any]:
        return [w for w in self.by_pid.values() if w.alive]

    async def shutdown(self, force: Any) -> None:
        """503 from now on; idle processes go at once; sessions get --drain-timeout."""
        import anyio

        self.draining = True
        for warm in self.idle:
            warm.retire()
        self.idle.clear()
        self.log("sessions_draining", active=self.active(), drain_timeout=self.config.drain_timeout)
        with anyio.move_on_after(self.config.drain_timeout) as scope:
            async with anyio.create_task_group() as tg:

                async def forced() -> None:
                    await force.wait()
                    scope.cancel()

                tg.start_soon(forced)
                while self.live():
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
        for worker in self.live():
            worker.stop(self.config.stop_signal)
        with anyio.move_on_after(0 if force.is_set() else 5):
            while self.live():
                await anyio.sleep(0.05)
        for worker in self.live():
            worker.kill_group()
        while self.live():
            await anyio.sleep(0.02)


async def _refresh_on_change(plan: Any, runtime: SessionRuntime) -> None:
    """Replace idle processes as soon as the store changes, so the next session is warm too.

    Dispatch checks the version anyway (the guarantee does not depend on this watch)."""
    from launcher.errors import LauncherError
    from launcher.watch import fingerprints

    if not plan.watch_dir.is_dir():
        return
    async for _ in fingerprints(plan.watch_dir, plan.fingerprint, plan.initial_fingerprint):
        try:
            await runtime._fresh_layers()
        except LauncherError as error:
            runtime.log("sessions_update_skipped", reason=error.message, level="error")


def create_app(runtime: SessionRuntime) -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    async def create(request: Request) -> Response:
        if runtime.draining:
            return JSONResponse({"error": "draining: not accepting sessions"}, status_code=503)
        maximum = runtime.config.max_sessions
        if maximum is not None and runtime.active() >= maximum:
            return JSONResponse(
                {"error": f"at capacity ({maximum} sessions)"},
                status_code=429,
                headers={"Retry-After": "1"},
            )
        raw = await request.body()
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as error:
            return JSONResponse(
                {"error": f"request body is not valid JSON: {error}"}, status_code=400
            )
        try:
            session = await runtime.start(body)
        except RuntimeError as error:
            return JSONResponse({"error": str(error)}, status_code=500)
        return JSONResponse(session.as_dict(), status_code=201)

    async def listing(request: Request) -> Response:
        return JSONResponse([s.as_dict() for s in runtime.sessions.values()])

    async def one(request: Request) -> Response:
        session = runtime.sessions.get(request.path_params["session_id"])
        if session is None:
            return JSONResponse({"error": "no such session"}, status_code=404)
        if request.method == "DELETE":
            runtime.stop(session)
        return JSONResponse(
            session.as_dict(), status_code=202 if request.method == "DELETE" else 200
        )

    return Starlette(
        routes=[
            Route("/sessions", create, methods=["POST"]),
            Route("/sessions", listing, methods=["GET"]),
            Route("/sessions/{session_id}", one, methods=["GET", "DELETE"]),
        ]
    )


def serve(plan: Any, entry: tuple[str, str, str]) -> int:
    """Run session mode until TERM/INT; returns the exit code."""
    from launcher import signals
    from launcher.http_server import bind, parse_host_port
    from launcher.notify_socket import NotifySocket
    from launcher.output import Masker

    config = plan.config
    host, port = parse_host_port(config.listen, "--listen")
    listener = bind(host, port, "--listen")
    health = None
    if config.health:
        health = bind(*parse_host_port(config.health, "--health"), "--health")
    signals.install_early()
    from launcher import process

    process.become_subreaper()
    notify = NotifySocket()
    masker = Masker(plan.masked_values) if config.mask else None
    import anyio

    try:
        return anyio.run(_main, plan, entry, masker, notify, listener, health)
    finally:
        notify.close()


async def _main(
    plan: Any, entry: tuple[str, str, str], masker: Any, notify: Any, listener: Any, health: Any
) -> int:
    import anyio

    from launcher import logs, signals
    from launcher.http_server import serve_asgi
    from launcher.output import Masker

    log = logs.configure(plan.config.log_format, masker or Masker(()))
    runtime = SessionRuntime(plan, entry, masker, notify.path, log)
    runtime._reload_lock = anyio.Lock()
    force = anyio.Event()
    stopping = False
    async with anyio.create_task_group() as tg:
        runtime._tg = tg
        runtime.refill()
        address = await tg.start(serve_asgi, create_app(runtime), listener)
        log(
            "sessions_listening",
            address=f"{address[0]}:{address[1]}",
            idle=plan.config.idle,
            entrypoint=":".join(entry[1:]),
        )

        if plan.config.watch and plan.watch_dir is not None and plan.fingerprint is not None:
            tg.start_soon(_refresh_on_change, plan, runtime)
        if health is not None:
            from launcher.health import create_app as create_health_app
            from launcher.metrics import Metrics

            runtime.metrics = Metrics(runtime.status, sessions_active=runtime.active)
            app = create_health_app(
                runtime.status,
                runtime.metrics,
                lambda: runtime.draining,
                # Ready while sessions are accepted: a cold start still serves one.
                ready_when=lambda status, stopping: not stopping,
            )
            health_address = await tg.start(serve_asgi, app, health)
            log("health_listening", address=f"{health_address[0]}:{health_address[1]}")

        async def shut_down() -> None:
            await runtime.shutdown(force)
            tg.cancel_scope.cancel()

        async for signum in signals.receive():
            if signum == signal.SIGCHLD:
                runtime.reap()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                if stopping:
                    force.set()
                else:
                    stopping = True
                    tg.start_soon(shut_down)
    return 0

"""The host both modes run in: one task group, signals, watches, control socket, health, systemd.

Worker mode (supervisor.py) and session mode (sessions/service.py) differ in what they put in
the engine's slots and in what they serve; everything around the engine is the same and lives
here once: signal dispatch (handlers only enqueue, see signals.py; this loop decides), the store
and code watches, the control socket, the health and metrics endpoints, and systemd's
notifications. A mode plugs in through the small `Mode` protocol below.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from pathlib import Path

    import anyio.abc

    from launcher.ops.status import PoolStatus, StatusBoard
    from launcher.plan import Plan
    from launcher.process.notify_socket import NotifySocket
    from launcher.supervision.engine import Engine

Log = Callable[..., None]


class Mode(Protocol):
    """What a mode gives the host."""

    engine: Engine

    def load(self) -> Any:
        """Decrypt the bound set as it is now (for a rollout); raises LauncherError."""

    async def serve(self, tg: anyio.abc.TaskGroup) -> None:
        """Start what the mode serves (session mode: its HTTP API)."""

    def pool_status(self) -> PoolStatus:
        """For health, metrics and systemd."""

    def control_status(self) -> dict[str, object]:
        """For `agent-run status`: the mode's own shape."""

    def control_extra(self) -> dict[str, Callable[[Any], Awaitable[dict[str, Any]]]]:
        """More control-socket commands (session mode: `sessions`)."""

    async def reload(self, reason: str) -> dict[str, object]:
        """`agent-run reload`, SIGHUP: roll out the store's current state; the result."""

    def store_changed(self) -> None: ...

    def code_changed(self) -> None: ...

    def shutting_down(self) -> None:
        """TERM/INT arrived: stop taking new work (before the engine drains)."""

    def sessions_active(self) -> int | None:
        """Running sessions, for metrics; None in worker mode."""


async def run(
    plan: Plan,
    mode: Mode,
    log: Log,
    *,
    health_socket: Any = None,
    notify: NotifySocket | None = None,
) -> int:
    """Run `mode` until its engine finishes; returns the launcher's exit code."""
    import anyio

    from launcher import signals
    from launcher.ops.status import StatusBoard
    from launcher.process import reaper

    config = plan.config
    engine = mode.engine
    board = StatusBoard()
    engine.on_change = lambda: board.publish(mode.pool_status())
    stopping = False
    systemd = None
    if os.environ.get("NOTIFY_SOCKET"):
        from launcher.ops.systemd import SystemdNotifier

        systemd = SystemdNotifier()
        board.subscribe(systemd.observe)
    code = 0
    async with anyio.create_task_group() as tg:

        async def drive() -> None:
            nonlocal code
            code = await engine.run(mode.load)
            tg.cancel_scope.cancel()

        tg.start_soon(drive)
        from launcher.ops.deadlines import warn_if_too_short

        tg.start_soon(warn_if_too_short, config.grace_period, config.drain_timeout, log)
        await mode.serve(tg)
        if notify is not None:
            tg.start_soon(notify.serve, engine.notified)
        if config.watch and plan.watch_dir is not None and plan.fingerprint is not None:
            tg.start_soon(_watch_store, plan, mode, log)
        if plan.code_dir is not None:
            tg.start_soon(_watch_code, plan.code_dir, mode, log)
        if plan.run_dir is not None:
            tg.start_soon(_serve_control, plan, mode, log, board)
        if health_socket is not None:
            from launcher.ops.health import create_app
            from launcher.ops.http_server import serve_asgi
            from launcher.ops.metrics import Metrics

            metrics = Metrics(lambda: board.current, sessions_active=_sessions_gauge(mode))
            board.subscribe(metrics.observe)
            mode.metrics = metrics  # type: ignore[attr-defined]
            app = create_app(lambda: board.current, metrics, lambda: stopping)
            address = await tg.start(serve_asgi, app, health_socket)
            log("health_listening", address=f"{address[0]}:{address[1]}")
        if systemd is not None:
            from launcher.ops.systemd import ping_watchdog, watchdog_interval

            interval = watchdog_interval()
            if interval:
                tg.start_soon(ping_watchdog, interval)

        async for signum in signals.receive():
            if signum == signal.SIGCHLD:
                engine.reap()
            elif signum in (signal.SIGTERM, signal.SIGINT):
                if stopping:
                    log("shutdown_forced", level="warning")
                    engine.force()  # a second TERM/INT: no more waiting
                else:
                    stopping = True
                    log(
                        "signal_received",
                        signal=signal.Signals(signum).name,
                        action="drain",
                        drain_timeout=config.drain_timeout,
                    )
                    if systemd is not None:
                        systemd.stopping()
                    mode.shutting_down()
                    engine.shutdown()
            elif signum == signal.SIGHUP:
                tg.start_soon(mode.reload, "SIGHUP")
            elif signum in (signal.SIGUSR1, signal.SIGUSR2):
                engine.forward(signum)
    # The last orphans of killed process groups: collected, so none outlives us as a zombie.
    reaper.reap_remaining(timeout=2.0)
    return code


def _sessions_gauge(mode: Mode) -> Callable[[], int] | None:
    if mode.sessions_active() is None:
        return None
    return lambda: mode.sessions_active() or 0


async def _watch_store(plan: Plan, mode: Mode, log: Log) -> None:
    from launcher.watch import fingerprints

    assert plan.watch_dir is not None and plan.fingerprint is not None
    if not os.path.isdir(plan.watch_dir):
        log("watch_skipped", reason=f"{plan.watch_dir} does not exist", level="warning")
        return
    async for value in fingerprints(plan.watch_dir, plan.fingerprint, plan.initial_fingerprint):
        log("store_changed", fingerprint=str(value))
        mode.store_changed()


async def _watch_code(directory: Path, mode: Mode, log: Log) -> None:
    from launcher.watch import code_changes

    async for files in code_changes(directory):
        log("code_changed", files=",".join(files[:5]))
        mode.code_changed()


async def _serve_control(plan: Plan, mode: Mode, log: Log, board: StatusBoard) -> None:
    from pathlib import Path

    import anyio

    from launcher.errors import LauncherError
    from launcher.ops import control

    async def reload() -> dict[str, object]:
        return await mode.reload("agent-run reload")

    from launcher.ops.census import CensusService

    census = CensusService(mode.engine.census, plan.secret_set, board)
    extra = {**mode.control_extra(), "census": census.answer}
    handlers = control.Handlers(status=mode.control_status, reload=reload, extra=extra)
    assert plan.run_dir is not None
    try:
        async with control.serving(Path(plan.run_dir), plan.name, handlers) as path:
            log("control_listening", path=str(path))
            await anyio.sleep_forever()
    except (LauncherError, OSError) as error:
        log("control_unavailable", reason=str(error), level="warning")

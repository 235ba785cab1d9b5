"""The run loop of `agent-run TARGET`: spawn first, then supervise.

Order matters for start-up time (the launch target is an agent's first output line within
40 ms): the workers are spawned, and their output relayed by threads, *before* anyio,
structlog and the rest are imported. Then the event loop runs the pool, the rollout, the
watchers, the control socket, the health endpoints, systemd notifications and signal
dispatch, all in one task group. Before the spawn, paths are `str` and `typing` is only
imported by the type checker (tests/test_startup.py keeps the list of what may not come
earlier).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Hashable

from launcher import signals
from launcher.config import RunConfig
from launcher.environment import EnvironmentLayers
from launcher.process import reaper
from launcher.process import worker as process
from launcher.process.notify_socket import NotifySocket
from launcher.process.output import Masker
from launcher.process.readiness import parse_ready
from launcher.record import NamedTuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (launch path)
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any


class Plan(NamedTuple):
    """What the run command hands the supervisor, resolved and validated."""

    config: RunConfig
    layers: EnvironmentLayers
    masked_values: list[str]
    # Re-reads the store (and env files) for a rollout: returns the new layers and the
    # values to mask; raises LauncherError when the new version is not usable.
    reload: Callable[[], tuple[EnvironmentLayers, list[str]]]
    name: str
    secret_set: str | None
    watch_dir: str | None = None  # the store directory, watched for new versions
    fingerprint: Callable[[], Hashable] | None = None
    initial_fingerprint: Hashable = None
    run_dir: str | None = None  # control socket directory
    code_dir: Path | None = None  # `agent-run dev`: restart when a .py file here changes

    def __repr__(self) -> str:
        return f"Plan(name={self.name!r}, secret_set={self.secret_set!r}, layers={self.layers!r})"


def run(plan: Plan) -> int:
    config = plan.config
    spec = parse_ready(config.ready)
    signals.install_early()
    process.become_subreaper()
    health_socket = None
    if config.health:
        from launcher.ops.http_server import bind, parse_host_port

        host, port = parse_host_port(config.health, "--health")
        health_socket = bind(host, port, "--health")
    notify = NotifySocket()
    masker = Masker(plan.masked_values) if config.mask else None
    factory = process.WorkerFactory(
        config.target.argv(),
        notify.path,
        masker,
        port_base=config.port_base,
        use_pty=masker is not None and sys.stdout.isatty(),
        inherit_stdin=config.workers == 1,
        log_pattern=spec.target if spec.kind == "log" else None,
    )
    try:
        early = [factory.spawn(index, plan.layers) for index in range(config.workers)]
    except OSError as error:
        notify.close()
        from launcher.errors import OperationFailed

        raise OperationFailed(f"cannot start {config.target.argv()[0]}: {error.strerror}") from None
    # --- the critical path ends here: everything below may import what it needs ---------
    # Relaying the agent's first line needs the masker. Built here, before the imports
    # below, it is ready ~3 ms after the spawn; left to the relay thread, which shares the
    # GIL with those imports, it was often ready only after that line (~12 ms).
    if masker is not None:
        masker.prepare()
    from launcher.process.containment import contain

    contain()  # after the spawn: moving into a cgroup costs ~10 ms
    import anyio

    try:
        return anyio.run(_main, plan, spec, factory, early, notify, masker, health_socket)
    finally:
        notify.close()


async def _main(
    plan: Plan,
    spec: Any,
    factory: process.WorkerFactory,
    early: list[process.Worker],
    notify: NotifySocket,
    masker: Masker | None,
    health_socket: Any,
) -> int:
    import anyio

    from launcher.ops import logs
    from launcher.ops.status import StatusBoard, as_dict
    from launcher.supervision.engine import Engine

    config = plan.config
    log = logs.configure(config.log_format, masker or Masker(()))
    from launcher.process.containment import current as containment

    log("containment", mode=containment().mode, detail=containment().detail)
    engine = Engine(config, plan.layers, spec, factory, log)
    for index, worker in enumerate(early):
        engine.adopt(worker, index)
        log("worker_started", slot=index, pid=worker.pid, version=worker.version, port=worker.port)
    board = StatusBoard()
    engine.on_change = lambda: board.publish(engine.status(plan.name, plan.secret_set))

    def reload_layers() -> EnvironmentLayers:
        layers, values = plan.reload()
        if masker is not None:
            masker.add(values)
        return layers

    stopping = False
    systemd = None
    if os.environ.get("NOTIFY_SOCKET"):
        from launcher.ops.systemd import SystemdNotifier

        systemd = SystemdNotifier()
        board.subscribe(systemd.observe)

    async with anyio.create_task_group() as tg:
        engine_done = anyio.Event()
        code = 0

        async def drive() -> None:
            nonlocal code
            code = await engine.run(reload_layers)
            engine_done.set()
            tg.cancel_scope.cancel()

        tg.start_soon(drive)
        tg.start_soon(notify.serve, engine.notified)
        if config.watch and plan.watch_dir is not None and plan.fingerprint is not None:
            tg.start_soon(_watch_store, plan, engine, log)
        if plan.code_dir is not None:
            tg.start_soon(_watch_code, plan.code_dir, engine, log)
        if plan.run_dir is not None:
            tg.start_soon(_serve_control, plan, board, engine, log, as_dict)
        if health_socket is not None:
            from launcher.ops.health import create_app
            from launcher.ops.http_server import serve_asgi
            from launcher.ops.metrics import Metrics

            metrics = Metrics(lambda: board.current)
            board.subscribe(metrics.observe)
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
                    engine.shutdown()
            elif signum == signal.SIGHUP:
                engine.request("SIGHUP")
            elif signum in (signal.SIGUSR1, signal.SIGUSR2):
                engine.forward(signum)
    reaper.reap_remaining(timeout=2.0)
    return code


async def _watch_store(plan: Plan, engine: Any, log: Any) -> None:
    from launcher.watch import fingerprints

    assert plan.watch_dir is not None and plan.fingerprint is not None
    if not os.path.isdir(plan.watch_dir):
        log("watch_skipped", reason=f"{plan.watch_dir} does not exist", level="warning")
        return
    async for value in fingerprints(plan.watch_dir, plan.fingerprint, plan.initial_fingerprint):
        log("store_changed", fingerprint=str(value))
        engine.request("store changed")


async def _watch_code(directory: Path, engine: Any, log: Any) -> None:
    from launcher.watch import code_changes

    async for files in code_changes(directory):
        log("code_changed", files=",".join(files[:5]))
        engine.request("code changed")


async def _serve_control(plan: Plan, board: Any, engine: Any, log: Any, as_dict: Any) -> None:
    from pathlib import Path

    import anyio

    from launcher.errors import LauncherError
    from launcher.ops import control

    async def reload() -> dict[str, object]:
        result: dict[str, object] = await engine.request_and_wait("agent-run reload")
        return result

    handlers = control.Handlers(status=lambda: as_dict(board.current), reload=reload)
    assert plan.run_dir is not None
    try:
        async with control.serving(Path(plan.run_dir), plan.name, handlers) as path:
            log("control_listening", path=str(path))
            await anyio.sleep_forever()
    except (LauncherError, OSError) as error:
        log("control_unavailable", reason=str(error), level="warning")

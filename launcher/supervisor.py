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

import sys
from typing import TYPE_CHECKING

from launcher import signals
from launcher.environment import EnvironmentLayers
from launcher.plan import Plan
from launcher.process import worker as process
from launcher.process.notify_socket import NotifySocket
from launcher.process.output import Masker
from launcher.process.readiness import parse_ready

if TYPE_CHECKING:
    from typing import Any


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
    notify = NotifySocket(process.worker_user())
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
    template = None
    from launcher.process.preload import modules_for

    if modules_for(config, session=False) is not None:
        # Only for agents with dependencies worth sharing (launcher/process/template.py):
        # the first workers then fork from it too, their imports shared copy-on-write.
        from launcher.process.template import for_target

        template = for_target(config, plan.layers, session=False)
        if template is not None and template.start():
            template.wait_ready(config.ready_timeout)
            factory.launch = template.launch
    try:
        early = [factory.spawn(index, plan.layers) for index in range(config.workers)]
    except OSError as error:
        notify.close()
        if template is not None:
            template.close()
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
        return anyio.run(_main, plan, spec, factory, early, notify, masker, health_socket, template)
    finally:
        notify.close()
        if template is not None:
            template.close()


async def _main(
    plan: Plan,
    spec: Any,
    factory: process.WorkerFactory,
    early: list[process.Worker],
    notify: NotifySocket,
    masker: Masker | None,
    health_socket: Any,
    template: Any,
) -> int:
    from launcher import host
    from launcher.ops import logs
    from launcher.process.containment import current as containment
    from launcher.supervision.engine import Engine

    config = plan.config
    log = logs.configure(config.log_format, masker or Masker(()))
    log("containment", mode=containment().mode, detail=containment().detail)
    if template is not None:
        log("template", pid=template.pid, modules=",".join(template.modules), forks=template.forks)
        template.attach_log(log)
    engine = Engine(config, plan.layers, spec, factory, log)
    for index, worker in enumerate(early):
        engine.adopt(worker, index)
        log("worker_started", slot=index, pid=worker.pid, version=worker.version, port=worker.port)
    mode = WorkerMode(plan, engine, masker, template)
    return await host.run(plan, mode, log, health_socket=health_socket, notify=notify)


class WorkerMode:
    """Worker mode on the host: the engine's slots are the workers; a reload is a rollout."""

    def __init__(self, plan: Plan, engine: Any, masker: Masker | None, template: Any) -> None:
        self.plan = plan
        self.engine = engine
        self.masker = masker
        self.template = template

    def load(self) -> EnvironmentLayers:
        layers, values = self.plan.reload()
        if self.masker is not None:
            self.masker.add(values)
        return layers

    async def serve(self, tg: Any) -> None:
        pass  # workers serve on their own

    def pool_status(self) -> Any:
        return self.engine.status(self.plan.name, self.plan.secret_set)

    def control_status(self) -> dict[str, object]:
        from launcher.ops.status import as_dict

        data = as_dict(self.pool_status())
        data["mode"] = "workers"
        return data

    def control_extra(self) -> dict[str, Any]:
        return {}

    async def reload(self, reason: str) -> dict[str, object]:
        result: dict[str, object] = await self.engine.request_and_wait(reason)
        return result

    def store_changed(self) -> None:
        self.engine.request("store changed")

    def code_changed(self) -> None:
        if self.template is not None:
            self.template.renew()  # a dependency may have changed too
        self.engine.request("code changed")

    def shutting_down(self) -> None:
        pass

    def sessions_active(self) -> int | None:
        return None

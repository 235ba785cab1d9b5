"""Session mode's composition: the runtime, its HTTP API and the host, bound together.

Kept apart from service.py so that the session table and dispatcher (the domain) never
import the HTTP layer; this module is the one place that knows both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from launcher.sessions.service import SessionRuntime

if TYPE_CHECKING:
    from launcher.plan import Plan
    from launcher.process.output import Masker
    from launcher.sessions.entrypoint import Entrypoint


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
    from launcher import host
    from launcher.ops import logs
    from launcher.process.output import Masker
    from launcher.sessions.api import create_app

    log = logs.configure(plan.config.log_format, masker or Masker(()))
    runtime = SessionRuntime(plan, entry, masker, log, listener, create_app)
    code = await host.run(plan, runtime, log, health_socket=health_socket)
    # Of the sessions running when shutdown began: those stopped at the end of the drain,
    # and those that finished on their own within it.
    stopped = sum(1 for s in runtime.draining_sessions if s.state == "stopped")
    finished = len(runtime.draining_sessions) - stopped
    log("sessions_stopped", stopped=stopped, finished=finished)
    return code

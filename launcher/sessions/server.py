"""Session mode's composition: the runtime, its HTTP API and the host, bound together.

Kept apart from service.py so that the session table and dispatcher (the domain) never
import the HTTP layer; this module is the one place that knows both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from launcher.sessions.service import SessionRuntime

if TYPE_CHECKING:
    from launcher.plan import Plan
    from launcher.process.output import Masker
    from launcher.sessions.entrypoint import Entrypoint


def refuse_open_listen(plan: Plan, host: str) -> None:
    """ConfigError (78) for a --listen beyond loopback without a bearer token, unless the
    operator said --insecure-no-auth: a session runs the agent with the operator's keys."""
    from launcher.sessions.access import TOKEN_VARIABLE, is_loopback

    config = plan.config
    if is_loopback(host) or plan.layers.secrets.get(TOKEN_VARIABLE) or config.insecure_no_auth:
        return
    from launcher.errors import ConfigError

    where = f"set {plan.secret_set!r}" if plan.secret_set else "a set bound with --secrets"
    raise ConfigError(
        f"--listen {config.listen} is reachable from other machines, and anyone who reaches "
        f"it could start sessions with your keys: store a bearer token in {where} "
        "(agent-run secrets set SET AGENT_RUN_API_TOKEN=$(openssl rand -hex 32)), listen "
        "on 127.0.0.1, or pass --insecure-no-auth if a proxy in front authenticates"
    )


def server_options(runtime: SessionRuntime) -> dict[str, Any]:
    """uvicorn's settings for the session API: WS /ws handed to a session process
    (handover.py), and a limit on open connections."""
    from launcher.sessions.handover import protocol_class
    from launcher.sessions.service import connection_limit

    return {
        "ws": protocol_class(runtime),
        "limit_concurrency": connection_limit(runtime.max_sessions),
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
    refuse_open_listen(plan, host)
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
    from launcher.process.template import for_target

    # Warm processes forked from a secret-free template (#18): the agent's dependencies are
    # imported once; each process then imports only the agent itself, with its secrets.
    # It loads the session runtime too: each process then runs it without parsing it.
    template = for_target(
        config, plan.layers, session=True, extra=session_preload, loaded=runtime_module()
    )
    if template is not None and template.start():
        template.wait_ready(config.ready_timeout)
    import anyio

    try:
        return anyio.run(_main, plan, entry, masker, listener, health_socket, template)
    finally:
        if template is not None:
            template.close()


# What the session runtime (runtime.py) imports in every process, besides the agent.
SESSION_PRELOAD = ("asyncio", "json", "inspect", "traceback", "socket", "contextlib")
# And what its warm-up imports when the agent uses Pipecat or Starlette (_prepare_websocket:
# ~90 modules of Starlette and uvicorn). Each process imported them itself until they were
# preloaded: ~200 ms of the first session after `secrets set` on a loaded machine (#18).
WEBSOCKET_PRELOAD = (
    "starlette.websockets",
    "uvicorn.config",
    "uvicorn.server",
    "uvicorn.protocols.http.auto",
    "uvicorn.protocols.websockets.auto",
    "uvicorn.lifespan.off",
)


def runtime_module() -> dict[str, str]:
    """The session runtime, as each process's bootstrap looks it up (runtime.BOOTSTRAP)."""
    from launcher.sessions import runtime

    return {runtime.MODULE_NAME: runtime.file_path()}


def session_preload(found: Sequence[str]) -> list[str]:
    """The runtime's own imports, given the agent's dependencies `found` by --preload."""
    users = {name.partition(".")[0] for name in found} & {"pipecat", "starlette"}
    return [*SESSION_PRELOAD, *(WEBSOCKET_PRELOAD if users else ())]


async def _main(
    plan: Plan,
    entry: Entrypoint,
    masker: Masker | None,
    listener: Any,
    health_socket: Any,
    template: Any = None,
) -> int:
    from launcher import host
    from launcher.ops import logs
    from launcher.process.output import Masker
    from launcher.sessions.api import create_app

    log = logs.configure(plan.config.log_format, masker or Masker(()))
    runtime = SessionRuntime(plan, entry, masker, log, listener, create_app, server_options)
    if template is not None:
        log("template", pid=template.pid, modules=",".join(template.modules), forks=0)
        template.attach_log(log)
        runtime.factory.launch = template.launch
        runtime.factory.renew_template = template.renew
    code = await host.run(plan, runtime, log, health_socket=health_socket)
    # Of the sessions running when shutdown began: those stopped at the end of the drain,
    # and those that finished on their own within it.
    stopped = sum(1 for s in runtime.draining_sessions if s.state == "stopped")
    finished = len(runtime.draining_sessions) - stopped
    log("sessions_stopped", stopped=stopped, finished=finished)
    return code

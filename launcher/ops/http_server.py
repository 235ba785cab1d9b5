"""Serve an ASGI app (health, metrics, the session API) inside the supervisor's event loop.

uvicorn is the server; two of its habits do not fit a supervisor, so they are changed here:
- `Server.serve()` installs its own SIGINT/SIGTERM handlers for its lifetime, which would steal
  the launcher's graceful shutdown (signals.py is the only place that handles signals);
- it binds its socket itself, so a busy port surfaces as a log line and `port 0` cannot be
  reported back. We bind first and hand uvicorn the socket.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Generator
from typing import Any

from launcher.errors import OperationFailed, UsageError


def parse_host_port(text: str, option: str) -> tuple[str, int]:
    """`HOST:PORT` (or `:PORT` for all interfaces) → (host, port); a clear error otherwise."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"{option} {text!r} is not HOST:PORT (for example 127.0.0.1:8080)")
    return host.strip("[]") or "0.0.0.0", int(port_text)


def bind(host: str, port: int, option: str) -> socket.socket:
    """A listening TCP socket, or OperationFailed naming the option and the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections whose proto says TCP.
    # Without it a response's head and body, two writes, wait out the peer's delayed ACK
    # (Nagle): every answer of a busy keep-alive client took 40 ms more.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as error:
        sock.close()
        raise OperationFailed(
            f"{option}: cannot listen on {host}:{port}: {error.strerror}; choose another address"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _quiet_server_class() -> Any:
    import uvicorn

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Generator[None, None, None]:
            # Signals belong to the launcher (signals.py); it stops us by cancellation.
            yield

    return QuietServer


async def serve_asgi(
    app: Any, sock: socket.socket, *, task_status: Any = None, **options: Any
) -> None:
    """Serve `app` on the already bound `sock` until cancelled; reports the address when up.

    Use with `TaskGroup.start()` (`functools.partial` for `options`); anyio is imported
    here, not at module level, so that binding the socket (done before the workers are
    spawned) costs no event-loop import.
    """
    import anyio
    import uvicorn

    if task_status is None:
        task_status = anyio.TASK_STATUS_IGNORED

    # `options` are uvicorn's own settings (session mode: its websocket handover class and a
    # connection limit).
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", **options)
    server = _quiet_server_class()(config)
    address = sock.getsockname()[:2]
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(server.serve, [sock])
            while not server.started:
                # uvicorn offers no startup event; its own loop ticks every 0.1 s too.
                await anyio.sleep(0.005)
            task_status.started((str(address[0]), int(address[1])))
    finally:
        with anyio.CancelScope(shield=True):
            server.should_exit = True
            sock.close()

"""`WS /ws` and `/ws/{token}`: a call's connection handed to a session process (SPEC §5).

uvicorn parses the request head and, for a websocket upgrade, gives the connection to the
protocol class named by its `ws` setting; here that class completes nothing itself. It
checks access, admits the call (429/503 as plain HTTP answers, before any handshake), starts
a session (with the read-after-write check) and passes the TCP connection's descriptor to
the session process over its channel (`socket.send_fds`, SCM_RIGHTS), with the request
head. The session process completes the handshake with uvicorn's own websocket protocol and
runs the bot with a Starlette `WebSocket` (runtime.py); the launcher closes its copy.

Why a handover and not a proxy: a call carries ~50 audio messages a second each way; relayed
through the launcher, every call would share one process and one event loop. Handed over,
the audio flows between the caller and the call's own process, and the launcher is back to
accepting the next call.

As Pipecat's runner and Pipecat Cloud's image do: the body comes from `?body=<base64 JSON>`,
the session id from `X-Daily-Session-Id` (a new UUID otherwise).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

from launcher.sessions.access import Refused, check_access

if TYPE_CHECKING:
    from launcher.sessions.service import SessionRuntime

HEAD_LIMIT = 64 * 1024  # uvicorn's own header limits apply first; this is a backstop


def parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, lower-case headers) of a request head as uvicorn rebuilt it."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return method, target, headers


def decode_body(query: str) -> Any:
    """`?body=<base64 JSON>` as Pipecat Cloud sends it; None without one, Refused(400) if bad."""
    values = parse_qs(query).get("body")
    if not values:
        return None
    text = values[0].strip()
    try:
        standard = text.replace("-", "+").replace("_", "/")  # the URL-safe alphabet too
        raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        return json.loads(raw)
    except (binascii.Error, ValueError):
        raise Refused(400, "?body= is not base64-encoded JSON") from None


def route(target: str) -> tuple[str | None, str]:
    """(token in the path or None, query) for `/ws` and `/ws/{token}`; Refused(404) else."""
    path, _, query = target.partition("?")
    if path == "/ws":
        return None, query
    if path.startswith("/ws/") and "/" not in path[4:] and path[4:]:
        return unquote(path[4:]), query
    raise Refused(404, f"no websocket endpoint {path!r} (calls connect to /ws or /ws/<token>)")


def protocol_class(runtime: SessionRuntime) -> type[asyncio.Protocol]:
    """The class uvicorn instantiates for each websocket upgrade (its `ws` setting)."""

    class Handover(asyncio.Protocol):
        def __init__(
            self, config: Any, server_state: Any, app_state: Any = None, _loop: Any = None
        ) -> None:
            self.connections = server_state.connections
            self.transport: asyncio.Transport | None = None
            self.task: asyncio.Task[None] | None = None
            self.head = b""

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)
            self.transport = transport
            self.connections.add(self)

        def data_received(self, data: bytes) -> None:
            assert self.transport is not None
            if self.task is not None:
                return  # a client that sends before the 101: its bytes are not ours to read
            self.transport.pause_reading()  # from here on the bytes are the session's
            self.head = data[:HEAD_LIMIT]
            self.task = asyncio.get_running_loop().create_task(self.dispatch())

        def connection_lost(self, exc: Exception | None) -> None:
            self.connections.discard(self)

        def shutdown(self) -> None:
            """uvicorn stopping: a call not yet handed over is closed."""
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def respond(self, refused: Refused) -> None:
            assert self.transport is not None
            body = json.dumps({"error": refused.message}).encode()
            reason = HTTPStatus(refused.status).phrase
            lines = [
                f"HTTP/1.1 {refused.status} {reason}",
                "content-type: application/json",
                f"content-length: {len(body)}",
                "connection: close",
                *(f"{k}: {v}" for k, v in refused.headers.items()),
            ]
            self.transport.write("\r\n".join(lines).encode() + b"\r\n\r\n" + body)
            self.transport.close()

        async def dispatch(self) -> None:
            assert self.transport is not None
            try:
                method, target, headers = parse_head(self.head)
                token, query = route(target)
                await runtime.refresh()  # a token rotated a moment ago is the one asked for
                denied = check_access(runtime.access, method, "/ws", headers, token)
                if denied is not None:
                    raise denied
                body = decode_body(query)
            except Refused as refused:
                self.respond(refused)
                return
            except ValueError:
                self.respond(Refused(400, "malformed request head"))
                return
            try:
                runtime.admit()
            except Refused as refused:
                self.respond(refused)
                return
            connection = self.transport.get_extra_info("socket")
            try:
                session = await runtime.start(
                    body,
                    session_id=headers.get("x-daily-session-id") or None,
                    kind="websocket",
                    fields={"head": self.head.decode("latin-1")},
                    fds=(connection.fileno(),),
                    max_seconds=_header_seconds(headers),
                )
            except Refused as refused:
                self.respond(refused)
                return
            else:
                # The session process holds the connection now: only our descriptor closes.
                self.transport.abort()
                # The replacement is forked once the call's handshake is done: its start
                # (Python, then the bot's imports: seconds of CPU) would otherwise compete
                # with the call's setup for the same cores.
                await session.process.call_set_up(runtime.config.ready_timeout)
            finally:
                await runtime.after_start()

    return Handover


def _header_seconds(headers: dict[str, str]) -> float | None:
    text = headers.get("x-pcc-max-session-seconds")
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None

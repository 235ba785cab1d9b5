"""The session API over HTTP (Starlette, served by uvicorn through http_server.py).

    POST   /sessions          JSON body -> the entrypoint; 201 {id, pid, secrets_version, ...}
    GET    /sessions          every session known (running, and the most recent ended ones)
    GET    /sessions/{id}     one session
    DELETE /sessions/{id}     stop it: the stop signal once, SIGKILL after --drain-timeout
    POST   /bot               Pipecat Cloud's base image: body = the session's body; X-Daily-*
    POST   /start             Pipecat's runner: {createDailyRoom, body, dailyRoomProperties...}
    WS     /ws, /ws/{token}   a call's media stream, handed to a session process (handover.py)
    GET    /readyz, /livez    probes: the agent's readyz() when it defines one

At `--max-sessions` a start answers 429 with `Retry-After` (Pipecat Cloud's answer at
`max-agents`); while draining, 503. An empty body is `{}`; a body that is not JSON is a 400
that says where it broke.

Who gets in (access.py): the bearer token when one is bound, browsers never on loopback. A
start takes its place (admission) before its body is read, and the body is counted while it
streams in, so neither slow nor large requests get past the limits.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from launcher.sessions.access import Refused, check_access

if TYPE_CHECKING:
    from launcher.sessions.service import SessionRuntime

__all__ = ["MAX_BODY", "Refused", "create_app", "parse_body"]

MAX_BODY = 1024 * 1024  # bytes: a session's configuration, not an upload
DAILY_ROOM_HOURS = 2.0  # room and token lifetime, as Pipecat's runner makes them


def parse_body(raw: bytes) -> Any:
    """The request's JSON (`{}` when empty), or Refused(400) naming the problem."""
    if len(raw) > MAX_BODY:
        raise Refused(413, f"request body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise Refused(400, "request body is not UTF-8 JSON") from None
    except json.JSONDecodeError as error:
        raise Refused(
            400,
            f"request body is not valid JSON: {error.msg} at line {error.lineno} "
            f'column {error.colno} (send a JSON object, e.g. {{"room": "demo"}})',
        ) from None


async def read_body(request: Any) -> Any:
    """The JSON body, refused with 413 as soon as it passes MAX_BODY (never buffered whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY:
        raise Refused(413, f"request body is larger than {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise Refused(413, f"request body is larger than {MAX_BODY} bytes")
        chunks.append(chunk)
    return parse_body(b"".join(chunks))


def _max_seconds(headers: Any) -> float | None:
    """Pipecat Cloud's X-Pcc-Max-Session-Seconds, or None."""
    text = headers.get("x-pcc-max-session-seconds")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        raise Refused(400, f"X-Pcc-Max-Session-Seconds {text!r} is not a number") from None
    if not value > 0:
        raise Refused(400, "X-Pcc-Max-Session-Seconds must be positive")
    return value


def create_app(runtime: SessionRuntime) -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def guarded(request: Request, start: Any) -> Response:
        """Admission first (nothing of the body read yet), then the start itself."""
        refill = BackgroundTask(runtime.after_start)  # after the answer is sent
        try:
            runtime.admit()
        except Refused as refused:
            return error(refused.status, refused.message, refused.headers)
        admitted = True
        try:
            body = await read_body(request)
            admitted = False  # start() takes over the place
            response: Response = await start(body)
        except Refused as refused:
            if admitted:
                runtime.release()
            response = error(refused.status, refused.message, refused.headers)
        response.background = refill
        return response

    async def sessions_start(request: Request) -> Response:
        async def start(body: Any) -> Response:
            session = await runtime.start(body, max_seconds=_max_seconds(request.headers))
            return JSONResponse(session.as_dict(), status_code=201)

        return await guarded(request, start)

    async def bot(request: Request) -> Response:
        """Pipecat Cloud's `POST /bot`: the body is the session's; a room in the headers."""
        headers = request.headers

        async def start(body: Any) -> Response:
            room, token = headers.get("x-daily-room-url"), headers.get("x-daily-room-token")
            kind, fields = ("daily", {"room_url": room, "token": token}) if room else ("plain", {})
            session = await runtime.start(
                body,
                session_id=headers.get("x-daily-session-id") or None,
                kind=kind,
                fields=fields,
                max_seconds=_max_seconds(headers),
            )
            answer: dict[str, Any] = {"sessionId": session.id}
            if room:
                answer.update(dailyRoom=room, dailyToken=token)
            return JSONResponse(answer)

        return await guarded(request, start)

    async def runner_start(request: Request) -> Response:
        """Pipecat's runner `POST /start`: a Daily room made with the set's DAILY_API_KEY."""

        async def start(envelope: Any) -> Response:
            if not isinstance(envelope, dict):
                raise Refused(400, 'POST /start takes an object, e.g. {"createDailyRoom": true}')
            transport = envelope.get("transport")
            create = bool(envelope.get("createDailyRoom"))
            if transport not in (None, "daily") and not create:
                raise Refused(
                    400,
                    f"transport {transport!r} is not started here: telephony providers connect "
                    'to WS /ws; use {"createDailyRoom": true} for a Daily room',
                )
            body = envelope.get("body", {})
            kind, fields, answer = "plain", {}, {}
            if create:
                await runtime.refresh()  # the room is made with the current DAILY_API_KEY
                from launcher.sessions.daily import create_room

                room, token = await create_room(
                    runtime.current_environment(),
                    envelope.get("dailyRoomProperties"),
                    envelope.get("dailyMeetingTokenProperties"),
                    DAILY_ROOM_HOURS,
                )
                kind, fields = "daily", {"room_url": room, "token": token}
                answer = {"dailyRoom": room, "dailyToken": token}
            session = await runtime.start(body, kind=kind, fields=fields)
            return JSONResponse({**answer, "sessionId": session.id})

        return await guarded(request, start)

    async def listing(request: Request) -> Response:
        return JSONResponse({"sessions": runtime.list_sessions()})

    async def one(request: Request) -> Response:
        session = runtime.sessions.get(request.path_params["session_id"])
        if session is None:
            return error(404, f"no session {request.path_params['session_id']!r}")
        if request.method == "DELETE":
            runtime.stop(session)
            return JSONResponse(session.as_dict(), status_code=202)
        return JSONResponse(session.as_dict())

    async def readyz(request: Request) -> Response:
        ready, answer = await runtime.readyz()
        return JSONResponse(answer, status_code=200 if ready else 503)

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    app = Starlette(
        routes=[
            Route("/sessions", sessions_start, methods=["POST"]),
            Route("/sessions", listing, methods=["GET"]),
            Route("/sessions/{session_id}", one, methods=["GET", "DELETE"]),
            Route("/bot", bot, methods=["POST"]),
            Route("/start", runner_start, methods=["POST"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/livez", livez, methods=["GET"]),
        ]
    )
    return guard(app, runtime)


def guard(app: Any, runtime: SessionRuntime) -> Any:
    """The ASGI app behind access checks, answered before any route (or body) is touched."""

    async def guarded(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if runtime.api_token() is not None or not runtime.access.loopback:
                await runtime.refresh()  # a token set a moment ago is the one asked for
            refused = check_access(
                runtime.access, scope["method"], scope["path"], headers, path_token=None
            )
            if refused is not None:
                await _send_refusal(send, refused)
                return
        await app(scope, receive, send)

    return guarded


async def _send_refusal(send: Any, refused: Refused) -> None:
    body = json.dumps({"error": refused.message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in refused.headers.items()),
    ]
    await send({"type": "http.response.start", "status": refused.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})

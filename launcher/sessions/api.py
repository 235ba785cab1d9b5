"""The session API over HTTP (Starlette, served by uvicorn through http_server.py).

    POST   /sessions          JSON body -> the entrypoint; 201 {id, pid, secrets_version, ...}
    GET    /sessions          every session known (running, and the most recent ended ones)
    GET    /sessions/{id}     one session
    DELETE /sessions/{id}     stop it: the stop signal once, SIGKILL after --drain-timeout

At `--max-sessions` a start answers 429 with `Retry-After` (Pipecat Cloud's answer at
`max-agents`); while draining, 503. An empty body is `{}`; a body that is not JSON is a 400
that says where it broke.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from launcher.sessions.service import Refused

if TYPE_CHECKING:
    from launcher.sessions.service import SessionRuntime

MAX_BODY = 1024 * 1024  # bytes: a session's configuration, not an upload


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


def create_app(runtime: SessionRuntime) -> Any:
    from starlette.applications import Starlette
    from starlette.background import BackgroundTask
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    async def start(request: Request) -> Response:
        refill = BackgroundTask(runtime.after_start)  # after the answer is sent
        try:
            runtime.admit()
            body = parse_body(await request.body())
            session = await runtime.start(body)
        except Refused as refused:
            response = error(refused.status, refused.message, refused.headers)
            response.background = refill
            return response
        return JSONResponse(session.as_dict(), status_code=201, background=refill)

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

    return Starlette(
        routes=[
            Route("/sessions", start, methods=["POST"]),
            Route("/sessions", listing, methods=["GET"]),
            Route("/sessions/{session_id}", one, methods=["GET", "DELETE"]),
        ]
    )

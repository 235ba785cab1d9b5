"""A Daily room and its meeting token for `POST /start {"createDailyRoom": true}`.

Made as Pipecat's runner makes them (`pipecat.runner.daily.configure`): `POST /rooms` then
`POST /meeting-tokens` on Daily's REST API, with the bound set's `DAILY_API_KEY` and
`DAILY_API_URL` (default https://api.daily.co/v1), both expiring after a few hours. The
standard library's HTTP client in a worker thread: one request per session start does not
justify an HTTP client dependency, and the event loop keeps serving meanwhile.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

from launcher.sessions.access import Refused

DEFAULT_API_URL = "https://api.daily.co/v1"
TIMEOUT_S = 15.0


def _post(url: str, key: str, payload: dict[str, Any]) -> dict[str, Any]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read(500).decode("utf-8", "replace")
        raise Refused(502, f"Daily's REST API answered {error.code} to {url}: {detail}") from None
    except (OSError, ValueError) as error:
        raise Refused(502, f"Daily's REST API at {url} is unreachable: {error}") from None
    if not isinstance(answer, dict):
        raise Refused(502, f"Daily's REST API answered {url} with something that is not an object")
    return answer


async def create_room(
    environment: Mapping[str, str],
    room_properties: Any,
    token_properties: Any,
    hours: float,
) -> tuple[str, str]:
    """(room URL, meeting token), or Refused(502/500) saying what went wrong."""
    import anyio

    key = environment.get("DAILY_API_KEY")
    if not key:
        raise Refused(
            500,
            "createDailyRoom needs DAILY_API_KEY in the bound secret set "
            "(agent-run secrets set SET DAILY_API_KEY=...)",
        )
    base = environment.get("DAILY_API_URL") or DEFAULT_API_URL
    expires = time.time() + hours * 3600
    properties = {"exp": expires, "eject_at_room_exp": True}
    if isinstance(room_properties, dict):
        properties.update(room_properties)
    room = await anyio.to_thread.run_sync(
        _post, f"{base.rstrip('/')}/rooms", key, {"properties": properties}
    )
    url, name = room.get("url"), room.get("name")
    if not isinstance(url, str) or not isinstance(name, str):
        raise Refused(502, "Daily's REST API made a room without url and name")
    token_options: dict[str, Any] = {"room_name": name, "is_owner": True, "exp": expires}
    if isinstance(token_properties, dict):
        token_options.update(token_properties)
    answer = await anyio.to_thread.run_sync(
        _post, f"{base.rstrip('/')}/meeting-tokens", key, {"properties": token_options}
    )
    token = answer.get("token")
    if not isinstance(token, str):
        raise Refused(502, "Daily's REST API answered /meeting-tokens without a token")
    return url, token

"""Who may use the session API: the bearer token, and no browsers on loopback (SPEC §5).

A session starts an agent with the operator's API keys, so the API is for its callers only:
- **a bearer token** (`AGENT_RUN_API_TOKEN` in the bound set: sealed in the store, rotated
  like any secret, never in a worker's environment) is required whenever one is bound, and
  `--listen` beyond loopback refuses to start without one unless `--insecure-no-auth` says
  so. It is compared in constant time; `/ws/{token}` carries it for telephony providers
  that cannot send headers.
- **on loopback, browsers are refused**: any web page the developer visits can send a
  `text/plain` POST to 127.0.0.1 without a CORS preflight, and DNS rebinding gives a page
  GET and DELETE too. So a request whose `Host` is not a loopback name (rebinding), whose
  `Origin` is not a loopback page, or whose POST body is not declared JSON (the preflight-
  free content types) is refused before anything else happens.

The probes (`/livez`, `/readyz`) need no token: orchestrators call them without one.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Callable, Mapping

OPEN_PATHS = frozenset({"/livez", "/readyz"})
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
TOKEN_VARIABLE = "AGENT_RUN_API_TOKEN"


class Refused(Exception):
    """A request the runtime declines: (HTTP status, message, headers)."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def is_loopback(host: str) -> bool:
    """True when `host` (a --listen host) is reachable from this machine only."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Access:
    """The access policy of one runtime: its listen address and where its token comes from."""

    def __init__(self, loopback: bool, token: Callable[[], str | None]) -> None:
        self.loopback = loopback
        self.token = token  # the bound set's current token (it may be rotated while we run)


def _host_name(value: str) -> str:
    """`Host`/`Origin` authority without scheme and port: "127.0.0.1:7860" -> "127.0.0.1"."""
    value = value.split("://", 1)[-1].split("/", 1)[0].lower()
    if value.startswith("["):
        return value.split("]", 1)[0] + "]"
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _bearer(headers: Mapping[str, str]) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else None


def check_access(
    access: Access,
    method: str,
    path: str,
    headers: Mapping[str, str],
    path_token: str | None,
) -> Refused | None:
    """Why this request is refused, or None. `headers` have lower-case names."""
    if access.loopback:
        host = headers.get("host")
        if host is None or _host_name(host) not in LOOPBACK_NAMES:
            return Refused(
                403,
                f"Host {host!r} refused: this API listens on loopback and answers requests "
                "for localhost only (a web page may be rebinding its name to 127.0.0.1)",
            )
        origin = headers.get("origin")
        if origin is not None and _host_name(origin) not in LOOPBACK_NAMES:
            return Refused(
                403,
                f"Origin {origin!r} refused: browsers on other sites may not use this API "
                "(call it from your server, or a page served from localhost)",
            )
    if method == "POST" and _has_body(headers):
        media_type = headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if media_type != "application/json":
            return Refused(
                415,
                f"Content-Type {media_type or 'missing'!r} refused: send the body as "
                "application/json (curl -H 'Content-Type: application/json' ...)",
            )
    if path in OPEN_PATHS:
        return None
    token = access.token()
    if token is None:
        return None
    presented = path_token if path_token is not None else _bearer(headers)
    if presented is None or not hmac.compare_digest(presented.encode(), token.encode()):
        return Refused(
            401,
            "missing or wrong bearer token (Authorization: Bearer <AGENT_RUN_API_TOKEN>, "
            "or /ws/<token> for a media stream)",
            {"WWW-Authenticate": "Bearer"},
        )
    return None


def _has_body(headers: Mapping[str, str]) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() not in ("", "0")
    return "transfer-encoding" in headers

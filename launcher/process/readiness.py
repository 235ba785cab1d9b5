"""When is a worker ready to take work? (`--ready`)

- `started`: still alive `--ready-delay` seconds after spawn;
- `notify`: it sent `READY=1` on the notify socket (any systemd-notify library works);
- `tcp:PORT`: a TCP connection to 127.0.0.1:PORT succeeds;
- `http:URL`: a GET answers 2xx or 3xx;
- `log:REGEX`: a line of its output matches (an unmodified LiveKit worker logs
  "registered worker" once it can take jobs; its HTTP health answers before that).
`{port}` in a probe stands for the worker's AGENT_RUN_PORT. Probes retry every PROBE_EVERY_S;
the caller bounds the wait with `--ready-timeout` and races it against the worker's exit.
"""

from __future__ import annotations

import _thread
from collections.abc import Callable
from typing import NamedTuple

from launcher.errors import UsageError

PROBE_EVERY_S = 0.05


class Latch:
    """A flag raised at most once, from any thread; every subscriber hears of it exactly once,
    whether it subscribed before or after the flag went up.

    Why: a `log:REGEX` match is found by the worker's relay thread, which starts reading
    before the supervisor has registered the worker. The latch is created *before* the
    spawn and handed to both sides, so a match in any window is kept (#11, item 4: a
    matching first line read in that window was dropped and the worker never became ready).
    """

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._set = False
        self._subscribers: list[Callable[[], None]] = []

    @property
    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        with self._lock:
            if self._set:
                return
            self._set = True
            subscribers, self._subscribers = self._subscribers, []
        for subscriber in subscribers:
            subscriber()

    def subscribe(self, subscriber: Callable[[], None]) -> None:
        """Call `subscriber` once the latch is set (now, if it already is)."""
        with self._lock:
            if not self._set:
                self._subscribers.append(subscriber)
                return
        subscriber()


class ReadySpec(NamedTuple):
    kind: str  # started | notify | tcp | http | log
    target: str = ""

    @property
    def event_driven(self) -> bool:
        return self.kind in ("notify", "log")


def parse_ready(text: str) -> ReadySpec:
    kind, sep, target = text.partition(":")
    if kind in ("started", "notify") and not sep:
        return ReadySpec(kind)
    if kind == "tcp" and sep and (target.isdigit() or target == "{port}"):
        return ReadySpec(kind, target)
    if kind == "http" and sep and target.startswith(("http://", "https://")):
        return ReadySpec(kind, target)
    if kind == "log" and sep and target:
        import re

        try:
            re.compile(target)
        except re.error as error:
            raise UsageError(
                f"--ready log:{target}: not a valid regular expression ({error})"
            ) from None
        return ReadySpec(kind, target)
    raise UsageError(
        f"--ready {text!r} is not one of: started, notify, tcp:PORT, http:URL, log:REGEX "
        "(PORT and URL may contain {port})"
    )


def _with_port(text: str, port: int | None) -> str:
    if "{port}" in text:
        if port is None:
            raise UsageError("--ready uses {port}, which needs --port-base")
        return text.replace("{port}", str(port))
    return text


async def _tcp_open(port: int) -> bool:
    import anyio

    try:
        stream = await anyio.connect_tcp("127.0.0.1", port)
    except OSError:
        return False
    await stream.aclose()
    return True


async def _http_ok(url: str) -> bool:
    import urllib.parse

    import anyio
    import anyio.abc

    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with anyio.fail_after(2):
            if parts.scheme == "https":
                stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port, tls=True)
            else:
                stream = await anyio.connect_tcp(host, port)
            async with stream:
                path = parts.path or "/"
                if parts.query:
                    path += "?" + parts.query
                await stream.send(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                head = b""
                while b"\r\n" not in head and len(head) < 1024:
                    head += await stream.receive()
    except (OSError, TimeoutError, anyio.EndOfStream, anyio.BrokenResourceError):
        return False
    fields = head.split(b" ", 2)
    return len(fields) >= 2 and fields[1][:1] in (b"2", b"3")


async def probe_until_ready(spec: ReadySpec, port: int | None) -> None:
    """Return once the tcp/http probe succeeds (retries until cancelled)."""
    import anyio

    target = _with_port(spec.target, port)
    while True:
        if spec.kind == "tcp" and await _tcp_open(int(target)):
            return
        if spec.kind == "http" and await _http_ok(target):
            return
        await anyio.sleep(PROBE_EVERY_S)

"""The control socket: `agent-run status | reload` talk to a running launcher through it.

One Unix stream socket per running launcher, `<store>/run/<name>.sock`, mode 0600 in a 0700
directory (only the owner may steer the launcher). The protocol is one JSON request line, one
JSON answer line. The server side runs in the supervisor's event loop; the client side is plain
blocking sockets, so the CLI commands start without importing anyio.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError, OperationFailed, UsageError

SUFFIX = ".sock"
MAX_REQUEST = 64 * 1024


def socket_path(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}{SUFFIX}"


# --- server ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handlers:
    """What the control socket can ask of the supervisor."""

    status: Callable[[], Mapping[str, Any]]
    reload: Callable[[], Awaitable[Mapping[str, Any]]]
    extra: Mapping[str, Callable[[Mapping[str, Any]], Awaitable[Mapping[str, Any]]]] | None = None


def _claim(path: Path) -> None:
    """Remove a stale socket left by a launcher that died; refuse if one is still answering."""
    if not path.exists() and not path.is_symlink():
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError as error:
        if error.errno not in (errno.ECONNREFUSED, errno.ENOENT):
            raise
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise ConfigError(
        f"another launcher named {path.stem!r} is already running (control socket {path}); "
        "give this one another --name"
    )


@contextlib.asynccontextmanager
async def serving(run_dir: Path, name: str, handlers: Handlers) -> AsyncIterator[Path]:
    """Listen on the control socket while the block runs; remove the socket afterwards."""
    import anyio

    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = socket_path(run_dir, name)
    _claim(path)
    old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
    try:
        listener = await anyio.create_unix_listener(path)
    finally:
        os.umask(old_umask)
    try:
        async with listener, anyio.create_task_group() as tg:

            async def handle(stream: Any) -> None:
                async with stream:
                    await _answer(stream, handlers)

            tg.start_soon(listener.serve, handle)
            try:
                yield path
            finally:
                tg.cancel_scope.cancel()
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def _answer(stream: Any, handlers: Handlers) -> None:
    import anyio

    buffer = b""
    try:
        while b"\n" not in buffer and len(buffer) < MAX_REQUEST:
            buffer += await stream.receive()
        request = json.loads(buffer.split(b"\n", 1)[0])
        command = request.get("command") if isinstance(request, dict) else None
        if command == "status":
            answer: Mapping[str, Any] = {"ok": True, "status": handlers.status()}
        elif command == "reload":
            answer = await handlers.reload()
        elif isinstance(command, str) and handlers.extra and command in handlers.extra:
            answer = await handlers.extra[command](request)
        else:
            answer = {"ok": False, "error": f"unknown command {command!r}"}
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return
    except ValueError:
        answer = {"ok": False, "error": "request is not one line of JSON"}
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(json.dumps(answer).encode() + b"\n")


# --- client ----------------------------------------------------------------------------------


def running_launchers(run_dir: Path) -> list[str]:
    """Names of the launchers that have a control socket in `run_dir`."""
    if not run_dir.is_dir():
        return []
    return sorted(p.name[: -len(SUFFIX)] for p in run_dir.glob(f"*{SUFFIX}"))


def choose(run_dir: Path, name: str | None) -> Path:
    """The socket of launcher `name`, or of the only one running when no name is given."""
    if name is not None:
        return socket_path(run_dir, name)
    names = running_launchers(run_dir)
    if len(names) == 1:
        return socket_path(run_dir, names[0])
    if not names:
        raise ConfigError(f"no launcher is running (no control socket in {run_dir})")
    raise UsageError(f"several launchers are running ({', '.join(names)}); choose one with --name")


def request(path: Path, command: str, timeout: float | None = 10.0, **fields: Any) -> Any:
    """Send one command and return the decoded answer."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise ConfigError(
                f"no launcher named {path.stem!r} is running (no control socket {path})"
            ) from None
        except ConnectionRefusedError:
            raise ConfigError(
                f"the launcher named {path.stem!r} is not answering (stale socket {path})"
            ) from None
        except PermissionError:
            from launcher.errors import PermissionProblem

            raise PermissionProblem(
                f"not allowed to use control socket {path}; run as the launcher's user"
            ) from None
        sock.sendall(json.dumps({"command": command, **fields}).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise OperationFailed(f"the launcher named {path.stem!r} did not answer in time") from None
    finally:
        sock.close()
    if not data:
        raise OperationFailed(f"the launcher named {path.stem!r} closed the connection")
    return json.loads(data)

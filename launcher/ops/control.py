"""The control socket: `agent-run status | reload` talk to a running launcher through it.

One Unix stream socket per running launcher, `<store>/run/<name>.sock`, mode 0600 in a
directory private to the launcher's user (see `runtime_dir.py`). The protocol is one JSON
request line, one JSON answer line. The server side runs in the supervisor's event loop; the
client side is plain blocking sockets, so the CLI commands start without importing anyio.

Both ends check who is at the other end with SO_PEERCRED (the kernel's record of the peer's
uid, which a process cannot forge), because file modes alone did not stop another user from
answering in a launcher's name (issue #15):
- the server answers only its own user and root;
- the client talks only to a launcher running as its own user; root, to a launcher running
  as the owner of the runtime directory it names (root's own, or a user's whose store it
  points at). Anything else is refused (exit 77) before the request is sent, so a squatter
  never sees a command such as `sessions start --body ...`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from launcher.errors import ConfigError, OperationFailed, PermissionProblem, UsageError
from launcher.ops import runtime_dir
from launcher.store.names import SET_NAME

SUFFIX = runtime_dir.SUFFIX
MAX_REQUEST = 64 * 1024
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def socket_path(run_dir: Path, name: str) -> Path:
    """`run_dir/NAME.sock`; refused when the name is invalid or the path too long for AF_UNIX."""
    return Path(runtime_dir.socket_file(str(run_dir), name))


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    uid: int
    _pid, uid, _gid = _UCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    )
    return uid


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

    path = socket_path(run_dir, name)
    runtime_dir.make_private(str(run_dir))
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
    from anyio.abc import SocketAttribute

    client = peer_uid(stream.extra(SocketAttribute.raw_socket))
    if client not in (os.geteuid(), 0):
        # Only reachable if the socket's mode was widened by hand: refuse, say nothing more.
        with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
            await stream.send(b'{"ok": false, "error": "not allowed"}\n')
        return
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
    except (ValueError, RecursionError):  # RecursionError: `[[[[...` nested too deep
        answer = {"ok": False, "error": "request is not one line of JSON"}
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
        await stream.send(json.dumps(answer).encode() + b"\n")


# --- client ----------------------------------------------------------------------------------


def _expected_server(path: Path) -> int:
    """The uid a launcher serving `path` must run as (see the module docstring)."""
    uid = os.geteuid()
    if uid != 0:
        return uid
    try:
        return os.stat(path.parent).st_uid
    except OSError:
        return 0


def _check_server(sock: socket.socket, path: Path) -> None:
    server, expected = peer_uid(sock), _expected_server(path)
    if server != expected:
        raise PermissionProblem(
            f"control socket {path} is served by uid {server}, not by the launcher's user "
            f"(uid {expected}); nothing was sent. Another user may have taken the launcher's "
            "name: keep control sockets in a private directory (AGENT_RUN_RUNTIME_DIR)"
        )


def running_launchers(run_dir: Path) -> list[str]:
    """Names of the launchers that have a control socket in `run_dir`."""
    try:
        entries = os.listdir(run_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError:
        raise PermissionProblem(
            f"cannot read runtime directory {run_dir}: permission denied"
        ) from None
    except OSError as error:
        raise ConfigError(f"cannot read runtime directory {run_dir}: {error.strerror}") from None
    names = (e[: -len(SUFFIX)] for e in entries if e.endswith(SUFFIX))
    return sorted(n for n in names if SET_NAME.fullmatch(n))


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
    try:
        sock.settimeout(timeout)
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
            raise PermissionProblem(
                f"not allowed to use control socket {path}; run as the launcher's user"
            ) from None
        except OSError as error:  # not a socket, a symlink loop, ...
            raise ConfigError(
                f"cannot connect to control socket {path}: {error.strerror}"
            ) from None
        _check_server(sock, path)
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
    try:
        answer = json.loads(data)
    except (ValueError, RecursionError):
        answer = None
    if not isinstance(answer, dict):
        raise OperationFailed(f"the launcher named {path.stem!r} sent an answer that is not JSON")
    return answer

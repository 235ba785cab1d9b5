"""The sd_notify socket the launcher offers its workers (`NOTIFY_SOCKET` in their environment).

One datagram socket for the whole pool, in a private 0700 directory. The kernel tells us who
sent each datagram (SO_PASSCRED / SCM_CREDENTIALS), so a worker is recognised by pid — or by
process group, for a library that notifies from a helper process. `READY=1`, `WATCHDOG=1`,
`STATUS=` and `STOPPING=1` are understood; anything else is ignored, as systemd does.

The socket is created before the workers are spawned (a few syscalls); datagrams queue in
its buffer until the event loop starts reading. It is made with `_socket`, the C module:
`socket.py` costs ~2 ms to import (its enum conversions) on the launch critical path and
adds nothing a datagram socket needs.
"""

from __future__ import annotations

import _socket
import os
import struct
from collections.abc import Callable

Handler = Callable[[int, dict[str, str]], None]  # (sender pid, fields)

_UCRED = struct.Struct("3i")


def parse(message: bytes) -> dict[str, str]:
    fields: dict[str, str] = {}
    for line in message.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            fields[key] = value
    return fields


class NotifySocket:
    def __init__(self, owner: tuple[int, int] | None = None) -> None:
        """`owner`: the (uid, gid) of workers that run as another user (--user)."""
        # A private directory, made by hand: `tempfile` would cost ~3 ms on the launch path.
        base = os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp"
        # `str` paths: pathlib costs ~4 ms to import on the launch path.
        self._dir = os.path.join(base, f"agent-run-notify-{os.getpid()}-{os.urandom(6).hex()}")
        os.mkdir(self._dir, mode=0o700)
        self.path = os.path.join(self._dir, "notify.sock")
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        self.sock.bind(self.path)
        self.sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        self.sock.setblocking(False)
        if owner is not None:
            # Sending to a socket needs write on its file and search on its directory: the
            # socket becomes the workers' (0600), the directory stays ours and unlistable.
            # Mode before owner: once it is theirs, chmod would need CAP_FOWNER too.
            os.chmod(self._dir, 0o711)
            os.chmod(self.path, 0o600)
            os.chown(self.path, *owner)

    def receive_pending(self, handler: Handler) -> None:
        """Hand every queued datagram to `handler`; returns when the queue is empty."""
        while True:
            try:
                data, ancillary, _flags, _addr = self.sock.recvmsg(
                    4096, _socket.CMSG_SPACE(_UCRED.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            pid = 0
            for level, kind, payload in ancillary:
                if level == _socket.SOL_SOCKET and kind == _socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            handler(pid, parse(data))

    async def serve(self, handler: Handler) -> None:
        """Dispatch datagrams until cancelled."""
        import anyio

        while True:
            await anyio.wait_readable(self.sock)
            self.receive_pending(handler)

    def close(self) -> None:
        self.sock.close()
        try:
            os.unlink(self.path)
            os.rmdir(self._dir)
        except OSError:
            pass


def process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except (ProcessLookupError, PermissionError):
        return None

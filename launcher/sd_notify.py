"""The sd_notify protocol, client side: one datagram to $NOTIFY_SOCKET.

Agents use `notify_ready()` (and `notify_status`, `notify_watchdog`) to tell agent-run they
can take work; any systemd-notify library works the same. The launcher uses `notify()` to
talk to systemd about itself. Outside a supervisor every call is a no-op returning False,
and no call ever raises: a notification must never take an agent down.
"""

from __future__ import annotations

import os
import socket


def notify(message: str, socket_path: str | None = None) -> bool:
    """Send `message` (e.g. "READY=1\\nSTATUS=...") to the notify socket; True if sent."""
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode("utf-8", "replace"))
        return True
    except OSError:
        return False


def notify_ready(status: str | None = None) -> bool:
    """Tell the supervisor this process is ready for work."""
    return notify("READY=1" + (f"\nSTATUS={status}" if status else ""))


def notify_status(status: str) -> bool:
    """A one-line status, shown by `agent-run status` (or `systemctl status`)."""
    return notify(f"STATUS={status}")


def notify_watchdog() -> bool:
    """Liveness ping: with `--watchdog S`, send one at least every S seconds."""
    return notify("WATCHDOG=1")


def notify_call_done() -> bool:
    """One call (or job) finished: counted for `--max-worker-calls` recycling."""
    return notify("X_AGENT_RUN_CALL_DONE=1")


def notify_stopping() -> bool:
    return notify("STOPPING=1")

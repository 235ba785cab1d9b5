"""A worker that could not bind its port: which port, who holds it, and the one-line fix.

A worker whose code pins a port (LiveKit's `AgentServer(port=8081)`, any server on a fixed
port) cannot run twice on one host: the second of a pool, or a rollout's replacement next to
the worker it replaces, fails with "address already in use", and the worker's own message
rarely names the holder. The relay shows each output line to `collision_port()`; on a
collision the launcher finds the listening socket's owner in /proc and logs one precise line.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

FIX = (
    'give each worker its own port: port=int(os.environ["AGENT_RUN_PORT"]) with --port-base, '
    "or port=0 (LiveKit: AgentServer(port=...), or leave port= out: agent-run then picks one)"
)

_COLLISION = re.compile(rb"address already in use|EADDRINUSE|Errno 98\b", re.IGNORECASE)
# asyncio/aiohttp: "error while attempting to bind on address ('0.0.0.0', 8081)", and for
# IPv6 "('::', 8081, 0, 0)"
_PYTHON_ADDRESS = re.compile(rb"\('[^']*', (\d{1,5})[,)]")
# node "listen EADDRINUSE: address already in use :::8081", go "listen tcp :8081: bind: ...",
# uvicorn "[Errno 98] ... ('127.0.0.1', 8000)" (above), "0.0.0.0:8081"
_HOST_PORT = re.compile(rb"(?:^|[\s\[(])(?:[\w.-]*|\[?[0-9a-fA-F:]*\]?):(\d{1,5})\b")


class Holder(NamedTuple):
    pid: int
    command: str


def collision_port(line: bytes) -> int | None:
    """The port a bind failed on, 0 when the line says so without naming it, else None."""
    said = _COLLISION.search(line)
    if said is None:
        return None
    found = _PYTHON_ADDRESS.search(line)
    if found is None:
        # The HOST:PORT nearest to "address already in use" (a timestamp is further away).
        candidates = list(_HOST_PORT.finditer(line))
        found = min(candidates, key=lambda m: abs(m.start() - said.start()), default=None)
    port = int(found.group(1)) if found else 0
    return port if 0 < port < 65536 else 0


def _listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    # local_address is HEXADDR:HEXPORT; state 0A is LISTEN
                    listening = len(fields) > 9 and fields[3] == "0A"
                    if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except (OSError, ValueError):
            continue
    return inodes


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            words = file.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return "?"
    # The program and its first arguments only: later arguments could be anything.
    return " ".join(w.decode("utf-8", "replace") for w in words[:3])[:200]


def holder(port: int) -> Holder | None:
    """The process listening on TCP `port` (visible to us: ours, or any as root), if any."""
    inodes = _listening_inodes(port)
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    try:
        pids = [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    for pid in sorted(pids):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in targets:
                    return Holder(pid, _command(pid))
            except OSError:
                continue
    return None


def owner_text(found: Holder | None, workers: dict[int, tuple[int, int | None, str]]) -> str:
    """Who holds the port, in words: one of our workers (slot, version, state), or a process.

    `workers` maps a live worker's pid (= its process group) to (slot, version, state).
    """
    if found is None:
        return "no listener visible now (another user's process, or it has exited since)"
    try:
        group = os.getpgid(found.pid)
    except OSError:
        group = None
    for pid in (found.pid, group):
        if pid in workers:
            slot, version, state = workers[pid]
            own = "worker" if pid == found.pid else f"a process of worker pid {pid}"
            return (
                f"pid {found.pid} ({found.command}), agent-run {own} of slot {slot}, "
                f"v{version}, {state}"
            )
    return f"pid {found.pid} ({found.command}), not one of this pool's workers"

"""A port collision is recognised in a worker's output and its holder found in /proc."""

from __future__ import annotations

import os
import socket

import pytest

from launcher.process.port_conflict import collision_port, holder, owner_text


@pytest.mark.parametrize(
    ("line", "port"),
    [
        # livekit-agents (aiohttp/asyncio), as one JSON log line
        (
            b'{"exc_info": "...OSError: [Errno 98] error while attempting to bind on address (\'0.0.0.0\', 8081): address already in use"}',
            8081,
        ),
        (
            b"OSError: [Errno 98] error while attempting to bind on address ('::', 8081, 0, 0): address already in use",
            8081,
        ),
        (b"Error: listen EADDRINUSE: address already in use :::8081", 8081),
        (b"2026-12-01T03:25:20Z listen tcp 0.0.0.0:7860: bind: address already in use", 7860),
        (b"OSError: [Errno 98] Address already in use", 0),
        (b"registered worker", None),
    ],
)
def test_collision_port_from_common_messages(line: bytes, port: int | None) -> None:
    """Python, node and Go spell it differently; the port is found (0 when not named), other lines are no collision."""
    assert collision_port(line) == port


def test_holder_is_the_process_listening() -> None:
    """The listening socket's owner is found through /proc/net/tcp and the fd tables."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        found = holder(port)
        assert found is not None and found.pid == os.getpid()
        text = owner_text(found, {os.getpid(): (3, 7, "draining")})
        assert f"pid {os.getpid()} " in text and "worker of slot 3, v7, draining" in text
    assert holder(port) is None

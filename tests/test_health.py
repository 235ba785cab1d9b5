"""`--health`: /healthz, /readyz and /metrics answer real HTTP requests from the status."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import anyio
import pytest

from launcher.errors import OperationFailed, UsageError
from launcher.ops.health import Health, create_app, pool_health
from launcher.ops.http_server import bind, parse_host_port, serve_asgi
from launcher.ops.metrics import Metrics
from launcher.ops.status import (
    PoolStatus,
    RolloutState,
    RolloutStatus,
    StatusBoard,
    WorkerState,
    WorkerStatus,
)

pytestmark = pytest.mark.anyio


def _pool(*states: WorkerState, version: int = 2, worker_version: int = 2) -> PoolStatus:
    workers = tuple(
        WorkerStatus(slot=i, pid=100 + i, state=s, version=worker_version)
        for i, s in enumerate(states)
    )
    return PoolStatus(name="t", pid=1, secret_set="t", version=version, workers=workers)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


async def _serving(board: StatusBoard, stopping: list[bool]):  # type: ignore[no-untyped-def]
    metrics = Metrics(lambda: board.current)
    board.subscribe(metrics.observe)
    app = create_app(lambda: board.current, metrics, lambda: stopping[0])
    return app, metrics


async def test_endpoints_follow_the_status() -> None:
    """readyz is 503 while a worker starts, 200 when all are ready, 503 when stopping."""
    board = StatusBoard()
    stopping = [False]
    app, _ = await _serving(board, stopping)
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(serve_asgi, app, bind("127.0.0.1", 0, "--health"))
        base = f"http://{host}:{port}"
        board.publish(_pool(WorkerState.READY, WorkerState.STARTING))
        code, body = await anyio.to_thread.run_sync(_get, base + "/readyz")
        assert code == 503 and json.loads(body)["ready_workers"] == 1
        board.publish(_pool(WorkerState.READY, WorkerState.READY))
        code, body = await anyio.to_thread.run_sync(_get, base + "/readyz")
        assert code == 200 and json.loads(body)["ready_on_current"] == 2
        code, _ = await anyio.to_thread.run_sync(_get, base + "/healthz")
        assert code == 200
        stopping[0] = True
        code, _ = await anyio.to_thread.run_sync(_get, base + "/readyz")
        assert code == 503
        tg.cancel_scope.cancel()


async def test_healthz_fails_when_every_slot_gave_up() -> None:
    """Liveness turns 503 once no slot is being kept any more."""
    board = StatusBoard(_pool(WorkerState.GAVE_UP, WorkerState.GAVE_UP))
    app, _ = await _serving(board, [False])
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(serve_asgi, app, bind("127.0.0.1", 0, "--health"))
        code, body = await anyio.to_thread.run_sync(_get, f"http://{host}:{port}/healthz")
        tg.cancel_scope.cancel()
    assert code == 503 and json.loads(body)["ok"] is False


async def test_metrics_expose_workers_restarts_rollouts_and_version() -> None:
    """/metrics reports workers by state, restarts, rollouts by result with duration, version."""
    board = StatusBoard()
    app, _ = await _serving(board, [False])
    first = _pool(WorkerState.READY, WorkerState.READY, version=4, worker_version=4)
    board.publish(first)
    crashed = first._replace(
        workers=(
            first.workers[0],
            first.workers[1]._replace(state=WorkerState.BACKOFF, restarts=2),
        ),
    )
    board.publish(crashed)
    board.publish(
        crashed._replace(
            rollout=RolloutStatus(
                state=RolloutState.ABORTED, to_version=5, started_at=10.0, finished_at=12.5
            ),
        )
    )
    async with anyio.create_task_group() as tg:
        host, port = await tg.start(serve_asgi, app, bind("127.0.0.1", 0, "--health"))
        code, body = await anyio.to_thread.run_sync(_get, f"http://{host}:{port}/metrics")
        tg.cancel_scope.cancel()
    text = body.decode()
    assert code == 200
    assert 'agent_run_workers{state="ready"} 1.0' in text
    assert 'agent_run_workers{state="backoff"} 1.0' in text
    assert 'agent_run_worker_restarts_total{slot="1"} 2.0' in text
    assert 'agent_run_rollouts_total{result="aborted"} 1.0' in text
    assert 'agent_run_rollouts_total{result="succeeded"} 0.0' in text
    assert 'agent_run_rollout_duration_seconds_sum{result="aborted"} 2.5' in text
    assert "agent_run_secrets_version 4.0" in text
    assert "agent_run_session" not in text  # a worker pool has no sessions to report


def test_busy_port_is_one_clear_error() -> None:
    """A --health port already in use gives OperationFailed naming the address."""
    first = bind("127.0.0.1", 0, "--health")
    port = first.getsockname()[1]
    try:
        with pytest.raises(OperationFailed, match=f"127.0.0.1:{port}"):
            bind("127.0.0.1", port, "--health")
    finally:
        first.close()


@pytest.mark.parametrize("text", ["8080", "host:", "host:http", "h:70000"])
def test_bad_host_port_is_a_usage_error(text: str) -> None:
    """--health takes HOST:PORT; anything else exits 2 with an example."""
    with pytest.raises(UsageError, match="HOST:PORT"):
        parse_host_port(text, "--health")


def _slot(state: WorkerState, restarts: int = 0) -> WorkerStatus:
    return WorkerStatus(slot=0, pid=100, state=state, version=1, restarts=restarts)


@pytest.mark.parametrize(
    ("workers", "expected"),
    [
        ((), Health(True, "starting")),
        ((_slot(WorkerState.STARTING),), Health(True, "starting")),
        ((_slot(WorkerState.READY, restarts=4),), Health(True, "serving")),
        ((_slot(WorkerState.READY), _slot(WorkerState.BACKOFF, 3)), Health(True, "serving")),
        ((_slot(WorkerState.BACKOFF, 1),), Health(False, "crash-looping")),
        ((_slot(WorkerState.STARTING, 2),), Health(False, "crash-looping")),
        (
            (_slot(WorkerState.STARTING), _slot(WorkerState.GAVE_UP, 5)),
            Health(False, "crash-looping"),
        ),
        ((_slot(WorkerState.GAVE_UP, 5), _slot(WorkerState.GAVE_UP, 5)), Health(False, "gave-up")),
        ((_slot(WorkerState.DRAINING),), Health(True, "starting")),
    ],
)
def test_liveness_rule(workers: tuple[WorkerStatus, ...], expected: Health) -> None:
    """Serving or booting is healthy; nothing ready and a slot that failed is a crash loop."""
    status = PoolStatus(name="t", pid=1, secret_set=None, version=1, workers=workers)
    assert pool_health(status) == expected


def test_liveness_while_the_launcher_starts() -> None:
    """Before the first status is published the launcher is starting: healthy."""
    assert pool_health(None) == Health(True, "starting")


async def test_connections_accepted_on_a_bound_socket_send_without_delay() -> None:
    """A connection accepted on `bind()`'s socket has TCP_NODELAY, as asyncio gives its own.

    Without it a response's head and body, two writes, waited for the client's delayed ACK
    (Nagle): a keep-alive client making back-to-back requests got each answer 40 ms late.
    """
    import asyncio
    import socket

    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(
        Probe, sock=bind("127.0.0.1", 0, "--listen")
    )
    async with server:
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        with anyio.fail_after(30):
            assert await accepted != 0
        writer.close()

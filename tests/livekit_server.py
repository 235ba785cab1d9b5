"""A stand-in LiveKit server on 127.0.0.1 for the real livekit-agents worker.

It speaks the worker side of LiveKit's agent protocol (protobufs from `livekit-protocol`) on
the WebSocket path `/agent`: the worker's JWT is verified with the platform secret, the
worker registers, reports its status, answers availability requests, takes job assignments
and reports job status; the server can end a job ("the room closed"). No media: a job's
"call" is an HTTP request from the job process (`POST /calls/{job}`) that the server holds
open until the test ends the call, so a job lasts exactly as long as the test wants.

Every change of who is registered and available (connected, registered, not draining) is
recorded with a monotonic timestamp, so a test can check that the pool never had fewer
available workers than it should at any moment. livekit-agents 1.8 marks a draining worker
with `WS_FULL` and no load (`AgentServer.drain`); the protocol's `draining` flag counts too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from aiohttp import WSMsgType, web
from livekit.protocol import agent, models


@dataclass
class WorkerRecord:
    id: str
    registered_at: float
    agent_name: str = ""
    draining: bool = False
    connected: bool = True
    statuses: list[tuple[float, int, float]] = field(default_factory=list)  # (t, status, load)
    ws: Any = None


@dataclass
class JobRecord:
    id: str
    worker_id: str
    room: str
    statuses: list[int] = field(default_factory=list)
    report: dict[str, Any] | None = None
    reported: threading.Event = field(default_factory=threading.Event)
    release: asyncio.Event | None = None


class StandInServer:
    """Run in a thread: `with StandInServer(key, secret) as server: ... server.url ...`."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        self.api_key = api_key
        self.api_secret = api_secret
        self.workers: dict[str, WorkerRecord] = {}
        self.jobs: dict[str, JobRecord] = {}
        # (monotonic time, ids of available workers) after every change.
        self.timeline: list[tuple[float, frozenset[str]]] = []
        self.rejected_tokens = 0
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._changed = threading.Condition()
        self._pending_availability: dict[str, asyncio.Future[agent.AvailabilityResponse]] = {}
        self.port = 0

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> StandInServer:
        started = threading.Event()
        self._thread = threading.Thread(target=self._serve, args=(started,), daemon=True)
        self._thread.start()
        if not started.wait(30):
            raise RuntimeError("stand-in LiveKit server did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(60)
            loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(60)
        # A connection that arrived while the server shut down (a worker reconnecting) can be
        # left to the garbage collector; collect it now, quietly, not in some later test.
        import gc
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()

    async def _shutdown(self) -> None:
        for record in self.workers.values():
            if record.ws is not None and not record.ws.closed:
                await record.ws.close()
        for job in self.jobs.values():
            if job.release is not None:
                job.release.set()
        if self._runner is not None:
            await self._runner.cleanup()
        # Closed transports release their sockets in callbacks: let those run.
        for _ in range(10):
            await asyncio.sleep(0)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def _serve(self, started: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        app = web.Application()
        app.router.add_get("/agent", self._agent_socket)
        app.router.add_post("/calls/{job}", self._call)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=5)
        loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        self.port = self._runner.addresses[0][1]
        started.set()
        loop.run_forever()
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()

    def _call_in_loop(self, coroutine: Any, timeout: float = 60) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    # --- what the test reads -----------------------------------------------------------------

    def available(self) -> list[WorkerRecord]:
        return [w for w in self.workers.values() if w.connected and not w.draining]

    def _record(self) -> None:
        ids = frozenset(w.id for w in self.available())
        with self._changed:
            self.timeline.append((time.monotonic(), ids))
            self._changed.notify_all()

    def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Block until `condition()` holds (re-checked at every change), or fail the test."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not condition():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"stand-in LiveKit server: no {what} within {timeout}s")
                self._changed.wait(min(remaining, 1.0))

    def wait_available(self, count: int, timeout: float = 90) -> list[WorkerRecord]:
        self.wait_until(
            lambda: len(self.available()) >= count, timeout, f"{count} available worker(s)"
        )
        return self.available()

    def min_available(self, since: float, until: float | None = None) -> int:
        """The fewest available workers at any moment in [since, until]."""
        end = until if until is not None else float("inf")
        current = 0
        lowest: int | None = None
        for at, ids in self.timeline:
            if at <= since:
                current = len(ids)
                continue
            if at > end:
                break
            lowest = min(current if lowest is None else lowest, len(ids))
            current = len(ids)
        return min(current, lowest) if lowest is not None else current

    # --- the agent protocol ----------------------------------------------------------------

    def _verify(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            return False
        try:
            claims = jwt.decode(header[7:], self.api_secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return False
        return claims.get("iss") == self.api_key and bool(claims.get("video", {}).get("agent"))

    async def _agent_socket(self, request: web.Request) -> web.StreamResponse:
        if not self._verify(request):
            self.rejected_tokens += 1
            with self._changed:
                self._changed.notify_all()
            return web.Response(status=401, text="invalid token")
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        record: WorkerRecord | None = None
        try:
            async for message in ws:
                if message.type != WSMsgType.BINARY:
                    continue
                msg = agent.WorkerMessage()
                msg.ParseFromString(message.data)
                which = msg.WhichOneof("message")
                if which == "register" and record is None:
                    record = WorkerRecord(
                        id=f"AW_{next(self._ids)}",
                        registered_at=time.monotonic(),
                        agent_name=msg.register.agent_name,
                        ws=ws,
                    )
                    self.workers[record.id] = record
                    reply = agent.ServerMessage()
                    reply.register.worker_id = record.id
                    reply.register.server_info.version = "stand-in"
                    reply.register.server_info.protocol = 16
                    # Recorded before the worker can log "registered worker".
                    self._record()
                    await ws.send_bytes(reply.SerializeToString())
                elif which == "update_worker" and record is not None:
                    update = msg.update_worker
                    record.statuses.append((time.monotonic(), update.status, update.load))
                    drained = update.draining or (
                        update.status == agent.WorkerStatus.WS_FULL and update.load == 0.0
                    )
                    if drained and not record.draining:
                        record.draining = True
                        self._record()
                elif which == "availability":
                    future = self._pending_availability.pop(msg.availability.job_id, None)
                    if future is not None and not future.done():
                        future.set_result(msg.availability)
                elif which == "update_job":
                    job = self.jobs.get(msg.update_job.job_id)
                    if job is not None:
                        job.statuses.append(msg.update_job.status)
                        with self._changed:
                            self._changed.notify_all()
                elif which == "ping":
                    reply = agent.ServerMessage()
                    reply.pong.last_timestamp = msg.ping.timestamp
                    reply.pong.timestamp = int(time.time() * 1000)
                    await ws.send_bytes(reply.SerializeToString())
        finally:
            if record is not None:
                record.connected = False
                self._record()
        return ws

    async def _dispatch(self, room: str) -> JobRecord:
        for record in list(self.available()):
            job_id = f"AJ_{next(self._ids)}"
            # The job process posts its report to this URL; the call lasts until end_call().
            metadata = json.dumps({"call": f"http://127.0.0.1:{self.port}/calls/{job_id}"})
            job = agent.Job(id=job_id, type=agent.JobType.JT_ROOM, metadata=metadata)
            job.room.CopyFrom(models.Room(sid=f"RM_{job_id}", name=room))
            request = agent.ServerMessage()
            request.availability.job.CopyFrom(job)
            answer = asyncio.get_running_loop().create_future()
            self._pending_availability[job_id] = answer
            await record.ws.send_bytes(request.SerializeToString())
            try:
                response = await asyncio.wait_for(answer, 120)
            except TimeoutError:
                continue
            if not response.available:
                continue
            taken = JobRecord(id=job_id, worker_id=record.id, room=room, release=asyncio.Event())
            self.jobs[job_id] = taken
            assignment = agent.ServerMessage()
            assignment.assignment.job.CopyFrom(job)
            assignment.assignment.url = self.url
            assignment.assignment.token = jwt.encode(
                {"iss": self.api_key, "sub": "agent", "video": {"room": room, "roomJoin": True}},
                self.api_secret,
                algorithm="HS256",
            )
            await record.ws.send_bytes(assignment.SerializeToString())
            return taken
        raise AssertionError("stand-in LiveKit server: no available worker took the job")

    def dispatch(self, room: str = "room") -> JobRecord:
        """Offer a job to the available workers in turn; the record of the one that took it."""
        return self._call_in_loop(self._dispatch(room))  # type: ignore[no-any-return]

    async def _call(self, request: web.Request) -> web.Response:
        job = self.jobs.get(request.match_info["job"])
        if job is None:
            return web.Response(status=404)
        job.report = await request.json()
        job.reported.set()
        with self._changed:
            self._changed.notify_all()
        assert job.release is not None
        await job.release.wait()
        return web.Response(text="call ended")

    def wait_report(self, job: JobRecord, timeout: float = 300) -> dict[str, Any]:
        if not job.reported.wait(timeout):
            raise AssertionError(f"stand-in LiveKit server: job {job.id} never reported")
        assert job.report is not None
        return job.report

    def end_call(self, job: JobRecord) -> None:
        assert self._loop is not None and job.release is not None
        self._loop.call_soon_threadsafe(job.release.set)

    def wait_job_status(self, job: JobRecord, status: int, timeout: float = 300) -> None:
        self.wait_until(lambda: status in job.statuses, timeout, f"job {job.id} status {status}")

"""`--health HOST:PORT`: liveness, readiness and metrics over HTTP for orchestrators.

- `/healthz`: 200 while the pool serves or is still starting for the first time; 503 when no
  worker is ready and a slot is crash-looping (or every slot gave up), for liveness probes
  and Docker's HEALTHCHECK: a crash loop must turn the container red, not look alive.
- `/readyz`: 200 when every slot has a ready worker and the launcher is not shutting down;
  the body counts ready workers on the current secrets version. During a rollout the old
  workers keep serving, so readiness holds.
- `/metrics`: Prometheus text format (metrics.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from launcher.ops.metrics import Metrics
from launcher.ops.status import PoolStatus, WorkerState, WorkerStatus


class Health(NamedTuple):
    ok: bool
    reason: str  # starting | serving | crash-looping | gave-up


def crash_looping(worker: WorkerStatus) -> bool:
    """A slot that has failed and is not serving: waiting to restart, given up, or booting
    again after a failure (a worker that exits at once spends its life in these states)."""
    if worker.state in (WorkerState.BACKOFF, WorkerState.GAVE_UP):
        return True
    return worker.state is WorkerState.STARTING and worker.restarts > 0


def pool_health(status: PoolStatus | None) -> Health:
    """The liveness rule, a pure function of the published status.

    Serving (some worker ready) is healthy even if another slot crash-loops: restarting the
    whole container would drop the calls it serves. Starting for the first time is healthy:
    a slow boot is readiness's business (`/readyz`), and a boot that never completes is
    restarted at --ready-timeout, which counts as a failure. Nothing ready and a slot that
    has failed is a crash loop: unhealthy, so Docker and Kubernetes see it.
    """
    if status is None or not status.workers:
        return Health(True, "starting")
    workers = status.workers
    if any(w.state is WorkerState.READY for w in workers):
        return Health(True, "serving")
    if all(w.state is WorkerState.GAVE_UP for w in workers):
        return Health(False, "gave-up")
    if any(crash_looping(w) for w in workers):
        return Health(False, "crash-looping")
    return Health(True, "starting")


def liveness(status: PoolStatus | None) -> bool:
    return pool_health(status).ok


def readiness(status: PoolStatus | None, stopping: bool) -> bool:
    if status is None or stopping or not status.workers:
        return False
    return all(w.state is WorkerState.READY for w in status.workers)


def create_app(
    current: Callable[[], PoolStatus | None],
    metrics: Metrics,
    stopping: Callable[[], bool],
    ready_when: Callable[[PoolStatus | None, bool], bool] = readiness,
) -> Any:
    """The Starlette app serving the three endpoints (`ready_when` decides /readyz)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route

    def summary(status: PoolStatus | None) -> dict[str, Any]:
        if status is None:
            return {"workers": 0, "ready_workers": 0, "ready_on_current": 0, "version": None}
        return {
            "workers": len(status.workers),
            "ready_workers": sum(1 for w in status.workers if w.state is WorkerState.READY),
            "ready_on_current": status.ready_on_current,
            "version": status.version,
            "rollout": status.rollout.state.value,
        }

    async def healthz(request: Request) -> Response:
        status = current()
        health = pool_health(status)
        body = {"ok": health.ok, "state": health.reason, **summary(status)}
        return JSONResponse(body, status_code=200 if health.ok else 503)

    async def readyz(request: Request) -> Response:
        status = current()
        ok = ready_when(status, stopping())
        body = {"ready": ok, "stopping": stopping(), **summary(status)}
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ]
    )

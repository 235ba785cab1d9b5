"""`--health HOST:PORT`: liveness, readiness and metrics over HTTP for orchestrators.

- `/healthz`: 200 while the supervisor's loop answers and some slot is still being kept
  (503 once every slot has given up), for liveness probes and Docker's HEALTHCHECK.
- `/readyz`: 200 when every slot has a ready worker and the launcher is not shutting down;
  the body counts ready workers on the current secrets version. During a rollout the old
  workers keep serving, so readiness holds.
- `/metrics`: Prometheus text format (metrics.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from launcher.ops.metrics import Metrics
from launcher.ops.status import PoolStatus, WorkerState


def liveness(status: PoolStatus | None) -> bool:
    if status is None:
        return True  # starting up
    return not status.workers or any(w.state is not WorkerState.GAVE_UP for w in status.workers)


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
        ok = liveness(status)
        return JSONResponse({"ok": ok, **summary(status)}, status_code=200 if ok else 503)

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

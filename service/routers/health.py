from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..metrics import render

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: 200 once the model is loaded")
def healthz(request: Request) -> dict:
    ctx = request.app.state.ctx
    m = ctx.model
    return {"status": "ok", "model": {"name": m.spec.name, "version": m.spec.version},
            "models": {c: sm.model_id for c, sm in {m.commodity: m, **ctx.commodity_models}.items()}}


@router.get("/readyz", summary="Readiness: model loaded, database reachable, image store writable (and the MQTT link, when set: degraded without it)")
def readyz(request: Request) -> JSONResponse:
    ctx = request.app.state.ctx
    try:
        ctx.repo.ping()
        db = "ok"
    except Exception as exc:  # any driver error means "not reachable"
        db = f"unreachable: {type(exc).__name__}"
    try:
        ctx.images.probe()
        images = "ok"
    except Exception as exc:  # StorageUnavailable names the cause
        images = str(exc)
    ok = db == "ok" and images == "ok"
    body = {"status": "ready" if ok else "not ready", "database": db, "images": images, "model": ctx.model.spec.version}
    if ctx.sorter is not None:  # grading goes on without the broker: degraded, still ready (decisions wait in the outbox)
        body["mqtt"] = ctx.sorter.health()
        if ok and ctx.sorter.degraded():
            body["status"] = "degraded"
    return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


@router.get("/metrics", summary="Prometheus metrics: requests by route, inference batches and latency, queue depth, flags",
            response_class=Response)
def metrics() -> Response:
    body, ctype = render()
    return Response(body, media_type=ctype)

from __future__ import annotations

import shutil
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..metrics import render

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: 200 once the model is loaded")
def healthz(request: Request) -> dict:
    ctx = request.app.state.ctx
    m = ctx.model
    return {
        "status": "ok",
        "model": {"name": m.spec.name, "version": m.spec.version},
        "models": {c: sm.model_id for c, sm in {m.commodity: m, **ctx.commodity_models}.items()},
    }


def _free_space(path: Path, need: int) -> str:
    """ "ok" when the file system holding ``path`` has room for ``need`` bytes, else why not."""
    try:
        free = shutil.disk_usage(path).free
    except OSError as exc:
        return f"cannot tell free space: {exc.strerror or exc}"
    if free < need:
        return f"full: {free} bytes free under {path}, the largest accepted upload needs {need}"
    return "ok"


@router.get(
    "/readyz",
    summary="Readiness: model loaded, database reachable, image store writable, room for the largest upload "
    "(and the MQTT link, when set: degraded without it)",
)
def readyz(request: Request) -> JSONResponse:
    """Not ready (503) when the database does not answer, an image cannot be written, or the disk
    of the image store (or of a SQLite database) has less free space than the largest upload the
    service accepts (`Settings.largest_upload_bytes`): a camera is then sent elsewhere instead of
    getting 507 for every grade."""
    ctx = request.app.state.ctx
    need = ctx.settings.largest_upload_bytes
    try:
        ctx.repo.ping()
        db = "ok"
    except Exception as exc:  # any driver error means "not reachable"
        db = f"unreachable: {type(exc).__name__}"
    db_file = ctx.repo.engine.url.database if ctx.repo.engine.dialect.name == "sqlite" else None
    if db == "ok" and db_file and db_file != ":memory:":
        db = _free_space(Path(db_file).parent, need)
    try:
        ctx.images.probe()
        images = _free_space(ctx.images.root, need)
    except Exception as exc:  # StorageUnavailable names the cause
        images = str(exc)
    ok = db == "ok" and images == "ok"
    body = {"status": "ready" if ok else "not ready", "database": db, "images": images, "model": ctx.model.spec.version}
    if ctx.sorter is not None:  # grading goes on without the broker: degraded, still ready (decisions wait in the outbox)
        body["mqtt"] = ctx.sorter.health()
        if ok and ctx.sorter.degraded():
            body["status"] = "degraded"
    return JSONResponse(body, status_code=200 if ok else 503, headers=None if ok else {"Retry-After": "5"})


@router.get(
    "/metrics", summary="Prometheus metrics: requests by route, inference batches and latency, queue depth, flags", response_class=Response
)
def metrics() -> Response:
    body, ctype = render()
    return Response(body, media_type=ctype)

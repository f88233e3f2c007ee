"""Model versions: list, read metadata, upload an artifact, promote, roll back — without stopping."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Query, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from .. import shadow
from ..auth import require
from ..registry import version_payload

router = APIRouter(prefix="/v1/models", tags=["models"])


@router.get("", summary="Registered model versions, newest first")
def list_models(request: Request, _=Depends(require("trainer", "inspector"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    return {
        "serving": ctx.model.model_id,
        "serving_by_commodity": {c: m.model_id for c, m in {ctx.model.commodity: ctx.model, **ctx.commodity_models}.items()},
        "models": [version_payload(r) for r in ctx.registry.list()],
    }


@router.get("/shadow", summary="Shadow mode: the candidate judging live traffic beside the serving model, and how they disagree")
def shadow_status(request: Request, limit: int = Query(50, ge=1, le=500), _=Depends(require("trainer", "inspector"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    sh = ctx.shadow
    out: dict[str, Any] = {"active": sh is not None, "serving": ctx.model.model_id}
    if sh is not None:
        out.update({"since": sh.since.isoformat(), **shadow.report(ctx.repo, sh.model_id, limit)})
    return out


@router.delete("/shadow", summary="Stop shadow mode (its stored opinions are kept)")
async def stop_shadow(request: Request, _=Depends(require("trainer"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    return {"stopped": await run_in_threadpool(ctx.registry.stop_shadow, ctx)}


@router.post("/{model_id}/shadow", summary="Run this version in shadow mode: it judges every graded fruit after the reply, never serving")
async def start_shadow(request: Request, model_id: str, _=Depends(require("trainer"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    sh = await run_in_threadpool(ctx.registry.start_shadow, ctx, model_id)
    return {"active": True, "model": sh.model_id, "serving": ctx.model.model_id, "since": sh.since.isoformat()}


@router.get("/{model_id}", summary="One version with its full metadata.json")
def get_model(request: Request, model_id: str, _=Depends(require("trainer", "inspector"))) -> dict[str, Any]:
    row = request.app.state.ctx.registry.get(model_id)
    return {**version_payload(row), "metadata": row.meta}


@router.post("", summary="Upload a model artifact (model.onnx + metadata.json); it is validated, not served", status_code=201)
async def upload_model(
    request: Request,
    model: Annotated[UploadFile, File(description="model.onnx")],
    metadata: Annotated[UploadFile, File(description="metadata.json")],
    _=Depends(require("trainer")),
) -> dict[str, Any]:
    from ..forms import read_limited

    settings = request.app.state.ctx.settings
    onnx_bytes = await read_limited(model, settings.max_model_bytes, "model", "model")
    meta_bytes = await read_limited(metadata, settings.max_metadata_bytes, "metadata", "metadata")
    row = await run_in_threadpool(request.app.state.ctx.registry.upload, onnx_bytes, meta_bytes)
    return version_payload(row)


@router.post("/{model_id}/promote", summary="Serve this version from now on (in-flight requests finish on the old one)")
async def promote(request: Request, model_id: str, _=Depends(require("trainer"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    return version_payload(await run_in_threadpool(ctx.registry.promote, ctx, model_id))


@router.post("/rollback", summary="Serve the version that served a commodity before the current one")
async def rollback(
    request: Request,
    commodity: str | None = Query(None, description="default: the default model's commodity"),
    _=Depends(require("trainer")),
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    return version_payload(await run_in_threadpool(ctx.registry.rollback, ctx, commodity))

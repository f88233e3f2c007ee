"""Stored results and their images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse

from ..auth import require
from ..errors import ApiError
from ..storage import ResultRow

router = APIRouter(prefix="/v1", tags=["results"])


def result_payload(row: ResultRow, replayed: bool = False) -> dict[str, Any]:
    p = row.payload
    return {
        "id": row.id,
        "created_at": row.created_at.isoformat(),
        "replayed": replayed,
        "camera_id": row.camera_id,
        "lot_id": row.lot_id,
        "fruit_id": row.fruit_id,
        "lane": row.lane,
        "mm_per_px": row.mm_per_px,
        "brix": row.brix,
        "n_fruits": row.n_fruits,
        "flagged": row.flagged,
        "fruits": p["fruits"],
        "image_flags": p.get("image_flags", []),
        "image": {"sha256": row.image_sha256, "url": f"/v1/results/{row.id}/image"},
        "model": {"name": row.model_name, "version": row.model_version},
        "standard": {"id": row.standard_id, "version": row.standard_version},
    }


def _get(request: Request, result_id: str) -> ResultRow:
    row = request.app.state.ctx.repo.get_result(result_id)
    if row is None:
        raise ApiError(404, "not_found", f"no result with id {result_id!r}", "result_id")
    return row


@router.get("/results/{result_id}", summary="A stored grading result")
def get_result(request: Request, result_id: str, _=Depends(require("camera", "inspector", "trainer"))) -> dict[str, Any]:
    return result_payload(_get(request, result_id))


@router.get("/results/{result_id}/image", summary="The image a result was graded from", response_class=FileResponse)
def get_result_image(request: Request, result_id: str, _=Depends(require("camera", "inspector", "trainer"))) -> FileResponse:
    row = _get(request, result_id)
    img = request.app.state.ctx.repo.get_image(row.image_sha256)
    if img is None:
        raise ApiError(404, "not_found", f"image of result {result_id!r} is missing", "result_id")
    return FileResponse(img.path, media_type=img.media_type)

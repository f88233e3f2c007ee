"""Stored results and their images."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from grader.measure import measure_image, with_scale
from grader.overlay import draw_overlay, fruit_label

from ..imaging import decode_image

from ..auth import require
from ..errors import ApiError
from ..storage import GradeChangeRow, ResultRow

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
        "calibration": p.get("calibration", {"mm_per_px": row.mm_per_px, "source": "request" if row.mm_per_px else "none"}),
        "references": p.get("references", []),
        "image": {"sha256": row.image_sha256, "url": f"/v1/results/{row.id}/image"},
        "model": {"name": row.model_name, "version": row.model_version},
        "standard": {"id": row.standard_id, "version": row.standard_version},
    }


def _get(request: Request, result_id: str) -> ResultRow:
    row = request.app.state.ctx.repo.get_result(result_id)
    if row is None:
        raise ApiError(404, "not_found", f"no result with id {result_id!r}", "result_id")
    return row


@router.get("/results/{result_id}", summary="A stored grading result, with its later grade changes")
def get_result(request: Request, result_id: str, _=Depends(require("camera", "inspector", "trainer"))) -> dict[str, Any]:
    out = result_payload(_get(request, result_id))
    with request.app.state.ctx.repo.sessions() as s:
        changes = s.scalars(select(GradeChangeRow).where(GradeChangeRow.result_id == result_id).order_by(GradeChangeRow.id)).all()
    out["grade_changes"] = [{"fruit_index": c.fruit_index, "old_grade": c.old_grade, "new_grade": c.new_grade, "old_brix": c.old_brix,
                             "new_brix": c.new_brix, "reason": c.reason, "at": c.created_at.isoformat()} for c in changes]
    return out


@router.get("/results/{result_id}/image", summary="The image a result was graded from", response_class=FileResponse)
def get_result_image(request: Request, result_id: str, _=Depends(require("camera", "inspector", "trainer"))) -> FileResponse:
    row = _get(request, result_id)
    img = request.app.state.ctx.repo.get_image(row.image_sha256)
    if img is None:
        raise ApiError(404, "not_found", f"image of result {result_id!r} is missing", "result_id")
    return FileResponse(img.path, media_type=img.media_type)


@router.get(
    "/results/{result_id}/overlay",
    summary="The result's image with outlines, caliper diameters, blemish outlines and grades drawn on it",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_result_overlay(request: Request, result_id: str, _=Depends(require("camera", "inspector", "trainer"))) -> Response:
    ctx = request.app.state.ctx
    row = _get(request, result_id)
    img = ctx.repo.get_image(row.image_sha256)
    if img is None:
        raise ApiError(404, "not_found", f"image of result {result_id!r} is missing", "result_id")

    def render() -> bytes:
        import cv2
        from pathlib import Path

        rgb, _ = decode_image(Path(img.path).read_bytes(), ctx.settings.max_image_pixels)
        std = ctx.standards.get(row.standard_id)
        commodity = ctx.commodities.get(std.commodity) if std else None
        ms = measure_image(rgb, None, colour_bands=commodity.colour_bands if commodity else (),
                           size_axis=commodity.size_axis if commodity else "major")
        ref_boxes = {tuple(r["bbox"]) for r in row.payload.get("references", [])}
        refs = [m for m in ms if tuple(m.bbox) in ref_boxes]
        fruit = [with_scale(m, row.mm_per_px) for m in ms if tuple(m.bbox) not in ref_boxes]
        stored = {tuple(f["bbox"]): f for f in row.payload["fruits"]}
        labels = [fruit_label(m, stored.get(tuple(m.bbox), {}).get("grade")) for m in fruit]
        flagged = [bool(stored.get(tuple(m.bbox), {}).get("flagged")) for m in fruit]
        over = draw_overlay(rgb, fruit, labels, flagged, refs)
        ok, png = cv2.imencode(".png", cv2.cvtColor(over, cv2.COLOR_RGB2BGR))
        return png.tobytes()

    return Response(await run_in_threadpool(render), media_type="image/png")

"""Stored results: one, a filtered page of them, their images and overlays."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, Response
from sqlalchemy import and_, exists, or_, select
from starlette.concurrency import run_in_threadpool

from grader.errors import InvalidField, MissingImage, UnknownFruit, UnknownResult
from grader.measure import measure_image, with_scale
from grader.overlay import DEFAULT_LAYERS, LAYERS, draw_overlay, fruit_label
from grader.records import FruitMeasurement
from store.tables import FruitRow, GradeChangeRow, ResultRow

from ..auth import Principal, require
from ..errors import Forbidden, InvalidCursor
from ..imaging import decode_image

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
        # candidate regions the model's fruit check said are not fruit: neither graded nor queued
        "rejected_candidates": p.get("rejected_candidates", 0),
        "rejected": p.get("rejected", []),
        "calibration": p.get("calibration", {"mm_per_px": row.mm_per_px, "source": "request" if row.mm_per_px else "none"}),
        "references": p.get("references", []),
        "image": {"sha256": row.image_sha256, "url": f"/v1/results/{row.id}/image"},
        "commodity": p.get("commodity"),
        "model": {"name": row.model_name, "version": row.model_version},
        "standard": {"id": row.standard_id, "version": row.standard_version},
        # an orchard scene: how its fruit were found, its reference spheres, the focal length used
        **({"orchard": p["orchard"]} if "orchard" in p else {}),
    }


@router.get("/results", summary="Stored results, newest first, filtered and paginated")
def list_results(
    request: Request,
    lot_id: str | None = None,
    camera_id: str | None = None,
    grade: str | None = Query(None, description="results with at least one fruit of this grade"),
    flagged: bool | None = None,
    since: dt.datetime | None = Query(None, description="ISO 8601 time; results created at or after it"),
    limit: int = Query(50, ge=1, le=500),
    cursor: str | None = Query(None, description="next_cursor of the previous page"),
    principal: Principal = Depends(require("camera", "inspector", "trainer")),
) -> dict[str, Any]:
    """A camera key sees only the results made with that same key (give each camera a key of its
    own), and may not list by lot: a lot's fruit are for inspectors and trainers, like its report."""
    q = select(ResultRow).order_by(ResultRow.created_at.desc(), ResultRow.id.desc())
    if principal.role == "camera":
        if lot_id:
            raise Forbidden("a camera key may not list a lot's results (inspector or trainer)", field="lot_id")
        q = q.where(ResultRow.api_key_id == principal.key_id)
    if lot_id:
        q = q.where(ResultRow.lot_id == lot_id)
    if camera_id:
        q = q.where(ResultRow.camera_id == camera_id)
    if flagged is not None:
        q = q.where(ResultRow.flagged.is_(flagged))
    if since is not None:
        q = q.where(ResultRow.created_at >= (since if since.tzinfo else since.replace(tzinfo=dt.timezone.utc)))
    if grade:
        q = q.where(exists().where(and_(FruitRow.result_id == ResultRow.id, FruitRow.grade == grade)))
    if cursor:
        try:
            at_raw, _, last_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
            at = dt.datetime.fromisoformat(at_raw)
        except (ValueError, UnicodeDecodeError):
            raise InvalidCursor("cursor is not one this service gave out") from None
        q = q.where(or_(ResultRow.created_at < at, and_(ResultRow.created_at == at, ResultRow.id < last_id)))
    with request.app.state.ctx.repo.sessions() as s:
        rows = s.scalars(q.limit(limit + 1)).all()
    page = rows[:limit]
    nxt = base64.urlsafe_b64encode(f"{page[-1].created_at.isoformat()}|{page[-1].id}".encode()).decode() if len(rows) > limit else None
    return {"items": [result_payload(r) for r in page], "next_cursor": nxt}


def _get(request: Request, result_id: str, principal: Principal | None = None) -> ResultRow:
    """The result, when the key may see it: a camera key sees only the results it made."""
    row = request.app.state.ctx.repo.get_result(result_id)
    if row is None or (principal is not None and principal.role == "camera" and row.api_key_id != principal.key_id):
        raise UnknownResult(f"no result with id {result_id!r}")
    return row


@router.get("/results/{result_id}", summary="A stored grading result, with its later grade changes")
def get_result(
    request: Request, result_id: str, principal: Principal = Depends(require("camera", "inspector", "trainer"))
) -> dict[str, Any]:
    out = result_payload(_get(request, result_id, principal))
    with request.app.state.ctx.repo.sessions() as s:
        changes = s.scalars(select(GradeChangeRow).where(GradeChangeRow.result_id == result_id).order_by(GradeChangeRow.id)).all()
    out["grade_changes"] = [
        {
            "fruit_index": c.fruit_index,
            "old_grade": c.old_grade,
            "new_grade": c.new_grade,
            "old_brix": c.old_brix,
            "new_brix": c.new_brix,
            "reason": c.reason,
            "at": c.created_at.isoformat(),
        }
        for c in changes
    ]
    return out


@router.get("/results/{result_id}/image", summary="The image a result was graded from", response_class=FileResponse)
def get_result_image(
    request: Request, result_id: str, principal: Principal = Depends(require("camera", "inspector", "trainer"))
) -> FileResponse:
    row = _get(request, result_id, principal)
    img = request.app.state.ctx.repo.get_image(row.image_sha256)
    if img is None:
        raise MissingImage(f"image of result {result_id!r} is missing")
    return FileResponse(img.path, media_type=img.media_type)


@router.get(
    "/results/{result_id}/overlay",
    summary="The result's image with outlines, caliper diameters, blemish outlines, a heat map, the defect model's map and grades drawn on it",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}}},
)
async def get_result_overlay(
    request: Request,
    result_id: str,
    layers: str = Query(",".join(DEFAULT_LAYERS), description=f"comma-separated, any of {', '.join(LAYERS)} (empty: the plain image)"),
    fruit_index: int | None = Query(None, ge=0, description="crop the picture around this fruit of the result"),
    principal: Principal = Depends(require("camera", "inspector", "trainer")),
) -> Response:
    ctx = request.app.state.ctx
    wanted = [x.strip() for x in layers.split(",") if x.strip()]
    unknown = sorted(set(wanted) - set(LAYERS))
    if unknown:
        raise InvalidField(f"unknown overlay layers {unknown}; known: {list(LAYERS)}", field="layers", code="invalid_layers")
    row = _get(request, result_id, principal)
    if fruit_index is not None and fruit_index >= len(row.payload["fruits"]):
        raise UnknownFruit(f"result {result_id!r} has {len(row.payload['fruits'])} fruit, no index {fruit_index}", field="fruit_index")
    img = ctx.repo.get_image(row.image_sha256)
    if img is None:
        raise MissingImage(f"image of result {result_id!r} is missing")

    def render() -> bytes:
        from pathlib import Path

        import cv2

        rgb, _ = decode_image(Path(img.path).read_bytes(), ctx.settings.max_image_pixels)
        std = ctx.standards.get(row.standard_id)
        # the commodity that measured the result (a result says which), else its standard's
        commodity = ctx.commodities.get(row.payload.get("commodity") or (std.commodity if std else ""))
        ms = measure_image(
            rgb,
            None,
            commodity.segmentation() if commodity else None,
            colour_bands=commodity.colour_bands if commodity else (),
            size_axis=commodity.size_axis if commodity else "major",
        )
        ref_boxes = {tuple(r["bbox"]) for r in row.payload.get("references", [])}
        refs = [m for m in ms if tuple(m.bbox) in ref_boxes]
        stored = {tuple(f["bbox"]): f for f in row.payload["fruits"]}
        fruit = [with_scale(m, row.mm_per_px) for m in ms if tuple(m.bbox) not in ref_boxes]
        # a size the grading declined (its reason stored with the fruit) stays declined on the overlay
        fruit = [_as_stored_size(m, stored.get(tuple(m.bbox), {})) for m in fruit]
        labels = [fruit_label(m, stored.get(tuple(m.bbox), {}).get("grade")) for m in fruit]
        flagged = [bool(stored.get(tuple(m.bbox), {}).get("flagged")) for m in fruit]
        over = draw_overlay(
            rgb, fruit, labels, flagged, refs, layers=wanted, cnn_maps=[stored_cnn_map(stored.get(tuple(m.bbox), {})) for m in fruit]
        )
        if fruit_index is not None:
            over = crop_around(over, row.payload["fruits"][fruit_index]["bbox"])
        ok, png = cv2.imencode(".png", cv2.cvtColor(over, cv2.COLOR_RGB2BGR))
        return png.tobytes()

    return Response(await run_in_threadpool(render), media_type="image/png", headers={"Cache-Control": "private, max-age=300"})


def _as_stored_size(m: FruitMeasurement, fruit: dict) -> FruitMeasurement:
    """A re-measured fruit with the size its stored result declined left declined."""
    reason = fruit.get("size_declined")
    return m if reason is None else replace(m, diameter_mm=None, minor_diameter_mm=None, area_mm2=None, size_declined=reason)


def stored_cnn_map(fruit: dict):
    """The defect model's map stored with a fruit's result (grid, crop margin), or None."""
    d = fruit.get("defect") or {}
    if not d.get("map") or d.get("map_crop_margin_frac") is None:
        return None
    return d["map"], float(d["map_crop_margin_frac"])


def crop_around(image, bbox, margin_frac: float = 0.3):
    """The part of the picture around one fruit's bbox, with a margin (clipped to the picture)."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = bbox
    mx, my = int((x1 - x0) * margin_frac), int((y1 - y0) * margin_frac)
    return image[max(0, y0 - my) : min(h, y1 + my), max(0, x0 - mx) : min(w, x1 + mx)]

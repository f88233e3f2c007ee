"""POST /v1/grade: a camera's image in, every fruit graded, stored, and returned."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from grader.pipeline import grade_image
from grader.records import SweetnessEvidence
from grader.standards import get_standard

from ..auth import Principal, require
from ..errors import ApiError
from ..imaging import decode_image
from ..storage import FruitRow, ImageRow, ResultRow, utcnow
from .results import result_payload

router = APIRouter(prefix="/v1", tags=["grading"])

GRADE_EXAMPLE = {
    "id": "7f0c1c7e-2a54-4d7e-9c1e-0b9f3b8d2a11",
    "fruits": [
        {
            "bbox": [112, 80, 392, 360],
            "diameter_mm": 70.1,
            "defect": {"label": "sound", "score": 0.04, "probabilities": {"sound": 0.96, "defective": 0.04}},
            "grade": "Class I",
            "reasons": ["blemish 0.41 cm² > 0.25 cm² for Extra"],
            "flagged": False,
            "flags": [],
        }
    ],
    "model": {"name": "apple-defect", "version": "0.1.0"},
}


def _number(name: str, raw: str | None, lo: float, hi: float, lo_open: bool = False) -> float | None:
    """Parse an optional numeric form field; 422 naming the field when it is not a finite number in range."""
    if raw is None or raw.strip() == "":
        return None
    try:
        v = float(raw)
    except ValueError:
        raise ApiError(422, "invalid_value", f"{name} must be a number, got {raw[:40]!r}", name) from None
    if not math.isfinite(v):
        raise ApiError(422, "invalid_value", f"{name} must be a finite number, got {raw[:40]!r}", name)
    if v < lo or v > hi or (lo_open and v == lo):
        raise ApiError(422, "out_of_range", f"{name} must be {'>' if lo_open else '>='} {lo:g} and <= {hi:g}, got {v:g}", name)
    return v


def _text(name: str, raw: str | None, max_len: int = 100) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    if len(raw) > max_len:
        raise ApiError(422, "too_long", f"{name} is longer than {max_len} characters", name)
    return raw.strip()


async def _read_limited(upload: UploadFile, limit: int) -> bytes:
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ApiError(413, "image_too_large", f"image is larger than the limit of {limit} bytes", "image")
    return data


@router.post(
    "/grade",
    summary="Grade the fruit in one image",
    description="Multipart form: `image` (JPEG or PNG) and optional `lot_id`, `camera_id`, `fruit_id`, `lane`, "
    "`brix` (°Brix at 20 °C), `mm_per_px` (camera scale), `standard` (a standard id). The result is stored before "
    "the reply. A retry with the same `Idempotency-Key` header, or the same `camera_id` + `fruit_id`, returns the "
    "first result instead of grading twice.",
    responses={200: {"content": {"application/json": {"example": GRADE_EXAMPLE}}}, 401: {"description": "missing or unknown API key"},
               413: {"description": "image over the byte limit"}, 422: {"description": "bad image or field; the body names the field"}},
)
async def grade(
    request: Request,
    image: Annotated[UploadFile, File(description="JPEG or PNG of one fruit or a frame with several")],
    lot_id: Annotated[str | None, Form()] = None,
    camera_id: Annotated[str | None, Form()] = None,
    fruit_id: Annotated[str | None, Form()] = None,
    lane: Annotated[str | None, Form()] = None,
    brix: Annotated[str | None, Form(description="°Brix at 20 °C, 0-35")] = None,
    mm_per_px: Annotated[str | None, Form(description="millimetres per pixel at the fruit, > 0")] = None,
    standard: Annotated[str | None, Form(description="grade standard id; default from settings")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    principal: Principal = Depends(require("camera")),
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    fields = {
        "lot_id": _text("lot_id", lot_id),
        "camera_id": _text("camera_id", camera_id),
        "fruit_id": _text("fruit_id", fruit_id),
        "lane": _text("lane", lane, 50),
    }
    brix_v = _number("brix", brix, 0.0, 35.0)
    scale = _number("mm_per_px", mm_per_px, 0.0, 10.0, lo_open=True)
    std = ctx.default_standard if not standard else get_standard(ctx.standards, standard)
    key = _text("Idempotency-Key", idempotency_key, 200)
    if key is None and fields["camera_id"] and fields["fruit_id"]:
        key = f"camera:{fields['camera_id']}/fruit:{fields['fruit_id']}"
    if key is not None:
        existing = await run_in_threadpool(ctx.repo.find_by_idempotency_key, key)
        if existing is not None:
            return result_payload(existing, replayed=True)

    data = await _read_limited(image, ctx.settings.max_image_bytes)
    rgb, media_type = await run_in_threadpool(decode_image, data, ctx.settings.max_image_pixels)
    sweetness = SweetnessEvidence(brix=brix_v, source="request") if brix_v is not None else None
    graded = await run_in_threadpool(grade_image, rgb, ctx.model, std, mm_per_px=scale, sweetness=sweetness, policy=ctx.policy)

    def store() -> tuple[ResultRow, bool]:
        sha, path = ctx.images.put(data, media_type)
        payload = graded.to_dict()
        img = ImageRow(sha256=sha, path=str(path), media_type=media_type, width_px=rgb.shape[1], height_px=rgb.shape[0], size_bytes=len(data))
        fruits = graded.fruits
        row = ResultRow(
            created_at=utcnow(),
            idempotency_key=key,
            image_sha256=sha,
            mm_per_px=scale,
            brix=brix_v,
            model_name=ctx.model.spec.name,
            model_version=ctx.model.spec.version,
            standard_id=std.id,
            standard_version=std.version,
            n_fruits=len(fruits),
            flagged=any(f.flagged for f in fruits) or any(fl.code != "no_fruit" for fl in graded.image_flags),
            payload=payload,
            **fields,
        )
        fruit_rows = [
            FruitRow(
                index=i,
                grade=None if f.decision is None else f.decision.grade,
                flagged=f.flagged,
                diameter_mm=f.measurement.diameter_mm,
                defect_score=None if f.defect is None else f.defect.score,
            )
            for i, f in enumerate(fruits)
        ]
        saved = ctx.repo.save_result(img, row, fruit_rows)
        return saved, saved.id != row.id  # a concurrent retry committed first: its result is the answer

    saved, replayed = await run_in_threadpool(store)
    return result_payload(saved, replayed=replayed)

"""POST /v1/grade: a camera's image in, every fruit graded, stored, and returned."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Header, Request, UploadFile
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from grader.pipeline import grade_image
from grader.standards import get_standard

from ..auth import Principal, require
from ..metrics import FLAGS, FRUITS
from ..lots import lot_context, sweetness_fields, sweetness_for
from ..scale import resolve_scale
from ..errors import ApiError
from ..imaging import decode_image
from ..storage import CalibrationRow, FruitRow, ImageRow, LotRow, ResultRow, utcnow
from ..forms import number_field, read_limited, text_field
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
    brix: Annotated[str | None, Form(description="°Brix at 20 °C, 0-35 (else the fruit's stored reading, else its lot's sample)")] = None,
    mm_per_px: Annotated[str | None, Form(description="millimetres per pixel at the fruit, > 0")] = None,
    standard: Annotated[str | None, Form(description="grade standard id; default from settings")] = None,
    reference_diameter_mm: Annotated[str | None, Form(description="reference spheres of this diameter (mm) are in view: "
                                                      "the scale is taken from them and they are not graded")] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    principal: Principal = Depends(require("camera")),
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    # admission control: past max_in_flight concurrent grades a camera is told to retry at once,
    # so latency stays bounded instead of every request queueing behind the backlog
    if ctx.in_flight >= ctx.settings.max_in_flight:
        raise ApiError(503, "overloaded", f"{ctx.in_flight} grades in progress (limit {ctx.settings.max_in_flight}); retry shortly",
                       headers={"Retry-After": "1"})
    ctx.in_flight += 1
    try:
        return await _grade(request, ctx, image, lot_id, camera_id, fruit_id, lane, brix, mm_per_px, standard, reference_diameter_mm,
                            idempotency_key)
    finally:
        ctx.in_flight -= 1


async def _grade(request, ctx, image, lot_id, camera_id, fruit_id, lane, brix, mm_per_px, standard, reference_diameter_mm,
                 idempotency_key) -> dict[str, Any]:
    fields = {
        "lot_id": text_field("lot_id", lot_id),
        "camera_id": text_field("camera_id", camera_id),
        "fruit_id": text_field("fruit_id", fruit_id),
        "lane": text_field("lane", lane, 50),
    }
    brix_v = number_field("brix", brix, 0.0, 35.0)
    scale = number_field("mm_per_px", mm_per_px, 0.0, 10.0, lo_open=True)
    ref_mm = number_field("reference_diameter_mm", reference_diameter_mm, 0.0, 1000.0, lo_open=True)
    key = text_field("Idempotency-Key", idempotency_key, 200)
    if key is None and fields["camera_id"] and fields["fruit_id"]:
        key = f"camera:{fields['camera_id']}/fruit:{fields['fruit_id']}"

    def lookup():
        """Everything the database knows that this grade needs, in one session."""
        with ctx.repo.sessions() as s:
            existing = None if key is None else s.scalar(select(ResultRow).where(ResultRow.idempotency_key == key))
            if existing is not None:
                return existing, None, None, None, None
            lot = None if not fields["lot_id"] else s.get(LotRow, fields["lot_id"])
            cal = None
            if scale is None and ref_mm is None and fields["camera_id"]:
                cal = s.scalar(select(CalibrationRow).where(CalibrationRow.camera_id == fields["camera_id"])
                               .order_by(CalibrationRow.created_at.desc(), CalibrationRow.id.desc()).limit(1))
            return (None, lot, sweetness_for(s, brix_v, fields["fruit_id"], fields["lot_id"]),
                    lot_context(s, fields["lot_id"]), cal)

    existing, lot, sweetness, lot_ctx, camera_cal = await run_in_threadpool(lookup)
    if existing is not None:
        return result_payload(existing, replayed=True)
    if fields["lot_id"]:
        if lot is None:
            raise ApiError(404, "unknown_lot", f"no lot {fields['lot_id']!r}: open it first with POST /v1/lots", "lot_id")
        if lot.status != "open":
            raise ApiError(409, "lot_closed", f"lot {lot.id!r} is closed", "lot_id")
    std_id = standard or (lot.standard_id if lot else None)
    std = ctx.default_standard if not std_id else get_standard(ctx.standards, std_id)
    commodity = ctx.commodities.get(lot.commodity if lot else std.commodity)

    data = await read_limited(image, ctx.settings.max_image_bytes)
    rgb, media_type = await run_in_threadpool(decode_image, data, ctx.settings.max_image_pixels)

    if ctx.registry.due():
        await run_in_threadpool(ctx.registry.follow, ctx)  # a promotion made by another replica
    model = ctx.model  # one model for the whole request, even if a promotion lands meanwhile

    def measure_and_grade():
        scaled = resolve_scale(rgb, commodity, scale, ref_mm, camera_cal, ctx.reference)
        graded = grade_image(rgb, model, std, mm_per_px=scaled.mm_per_px, sweetness=sweetness, policy=ctx.policy,
                             commodity=commodity, measurements=scaled.fruit, lot=lot_ctx)
        graded.image_flags.extend(scaled.flags)
        return scaled, graded

    scaled, graded = await run_in_threadpool(measure_and_grade)

    def store() -> tuple[ResultRow, bool]:
        sha, path = ctx.images.put(data, media_type)
        payload = graded.to_dict()
        for f in payload["fruits"]:
            f.update(sweetness_fields(sweetness))
        payload["calibration"] = {"mm_per_px": scaled.mm_per_px, "source": scaled.source}
        payload["references"] = [{"bbox": list(r.bbox), "diameter_px": round((r.diameter_px + r.minor_diameter_px) / 2, 2)} for r in scaled.references]
        img = ImageRow(sha256=sha, path=str(path), media_type=media_type, width_px=rgb.shape[1], height_px=rgb.shape[0], size_bytes=len(data))
        fruits = graded.fruits
        row = ResultRow(
            created_at=utcnow(),
            idempotency_key=key,
            image_sha256=sha,
            mm_per_px=scaled.mm_per_px,
            brix=brix_v,
            model_name=model.spec.name,
            model_version=model.spec.version,
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
                lot_id=fields["lot_id"],
                fruit_id=fields["fruit_id"],
                grade=None if f.decision is None else f.decision.grade,
                flagged=f.flagged,
                diameter_mm=f.measurement.diameter_mm,
                defect_label=None if f.defect is None else f.defect.label,
                defect_score=None if f.defect is None else f.defect.score,
                brix=None if sweetness is None else sweetness.brix,
                brix_source=None if sweetness is None else sweetness.source,
                priority=min((fl.priority for fl in f.flags), default=None),
            )
            for i, f in enumerate(fruits)
        ]
        saved = ctx.repo.save_result(img, row, fruit_rows)
        return saved, saved.id != row.id  # a concurrent retry committed first: its result is the answer

    saved, replayed = await run_in_threadpool(store)
    if not replayed:
        for f in graded.fruits:
            FRUITS.labels(f.decision.grade if f.decision else "none").inc()
            for fl in f.flags:
                FLAGS.labels(fl.code).inc()
    return result_payload(saved, replayed=replayed)

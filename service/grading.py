"""The grading request path shared by POST /v1/grade and /v1/grade/batch: look up what the
database knows, measure and grade, then store (image first, then the result, one transaction)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from grader.commodities import Commodity
from grader.errors import CommodityMismatch, IdempotencyKeyReused, InvalidCommodity, LotClosed, UnknownLot
from grader.flags import LotContext, review_sample_flag
from grader.pipeline import ImageGrade, grade_image
from grader.records import SweetnessEvidence
from grader.standards import Standard, get_standard
from store.repository import latest_calibration
from store.tables import CalibrationRow, FruitRow, ImageRow, LotRow, ResultRow, utcnow

from .batcher import ServingModel
from .forms import physical_field, text_field
from .lots import lot_context, sweetness_fields, sweetness_for
from .metrics import FLAGS, FRUITS, STORE_SECONDS
from .orchard import parse_boxes, parse_scene, resolve_orchard
from .scale import ScaledFrame, resolve_scale


@dataclass
class GradeRequest:
    """A grade request's parsed fields and everything looked up for it."""

    fields: dict[str, str | None]
    brix: float | None
    mm_per_px: float | None
    reference_diameter_mm: float | None
    key: str | None
    standard_field: str | None
    lot: LotRow | None = None
    standard: Standard | None = None
    commodity: Commodity | None = None
    sweetness: SweetnessEvidence | None = None
    lot_ctx: LotContext | None = None
    camera_cal: CalibrationRow | None = None
    model: ServingModel | None = None
    commodity_field: str | None = None
    extra_payload: dict[str, Any] = field(default_factory=dict)
    #: the fingerprint of the API key making the request
    key_id: str | None = None
    #: SHA-256 over the request's images and fields (see request_hash), stored with its result
    request_sha256: str | None = None
    #: belt or orchard (the request's `scene`, else the camera's, else belt); orchard: `boxes`, `focal_px`
    scene: str = "belt"
    boxes: list | None = None
    focal_px: float | None = None


def scoped_key(key_id: str | None, key: str | None) -> str | None:
    """An idempotency key as stored: prefixed by the fingerprint of the API key that made it, so
    another key can never replay (or block) it."""
    if key is None:
        return None
    raw = f"{key_id or '-'}|{key}"
    return raw if len(raw) <= 200 else f"{key_id or '-'}|sha256:{hashlib.sha256(key.encode()).hexdigest()}"


def request_hash(req: "GradeRequest", images: list[bytes], **extra: Any) -> str:
    """What a request asks for, as one digest: its images' bytes and every field that changes its
    grade. The same idempotency key with a different hash is a different request (422)."""
    h = hashlib.sha256()
    for data in images:
        h.update(hashlib.sha256(data).digest())
    fields = {
        **req.fields,
        "brix": req.brix,
        "mm_per_px": req.mm_per_px,
        "reference_diameter_mm": req.reference_diameter_mm,
        "standard": req.standard_field,
        "commodity": req.commodity_field,
        **extra,
    }
    if req.scene != "belt":
        fields.update(scene=req.scene, boxes=[[o.kind, *o.box_xyxy] for o in req.boxes or []], focal_px=req.focal_px)
    h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    return h.hexdigest()


def check_same_request(req: "GradeRequest", existing: ResultRow) -> None:
    """Refuse a reused idempotency key that stands for a different request."""
    if req.request_sha256 and existing.request_sha256 and existing.request_sha256 != req.request_sha256:
        raise IdempotencyKeyReused(
            "this idempotency key (Idempotency-Key, or camera_id + fruit_id) was used "
            f"for a different request (result {existing.id}): use a new key for a new image or new fields",
            field="Idempotency-Key",
        )


def parse(
    lot_id,
    camera_id,
    fruit_id,
    lane,
    brix,
    mm_per_px,
    standard,
    reference_diameter_mm,
    idempotency_key,
    commodity: str | None = None,
    key_id: str | None = None,
    scene: str | None = None,
    boxes: str | None = None,
    focal_px: str | None = None,
    camera_scenes: dict[str, str] | None = None,
) -> GradeRequest:
    fields = {
        "lot_id": text_field("lot_id", lot_id),
        "camera_id": text_field("camera_id", camera_id),
        "fruit_id": text_field("fruit_id", fruit_id),
        "lane": text_field("lane", lane, 50),
    }
    key = text_field("Idempotency-Key", idempotency_key, 200)
    if key is None and fields["camera_id"] and fields["fruit_id"]:
        key = f"camera:{fields['camera_id']}/fruit:{fields['fruit_id']}"
    return GradeRequest(
        fields=fields,
        brix=physical_field("brix", brix),
        mm_per_px=physical_field("mm_per_px", mm_per_px),
        reference_diameter_mm=physical_field("reference_diameter_mm", reference_diameter_mm),
        key=scoped_key(key_id, key),
        standard_field=standard,
        commodity_field=text_field("commodity", commodity, 50),
        key_id=key_id,
        scene=parse_scene(scene) or (camera_scenes or {}).get(fields["camera_id"] or "", "belt"),
        boxes=parse_boxes(boxes),
        focal_px=physical_field("focal_px", focal_px),
    )


def lookup(ctx, req: GradeRequest) -> ResultRow | None:
    """Fill the request from the database in one session; returns the stored result of a retry."""
    f = req.fields
    with ctx.repo.sessions() as s:
        if req.key is not None:
            existing = s.scalar(select(ResultRow).where(ResultRow.idempotency_key == req.key))
            if existing is not None:
                check_same_request(req, existing)
                return existing
        req.lot = None if not f["lot_id"] else s.get(LotRow, f["lot_id"])
        if req.mm_per_px is None and req.reference_diameter_mm is None and f["camera_id"]:
            req.camera_cal = latest_calibration(s, f["camera_id"])
        req.sweetness = sweetness_for(s, req.brix, f["fruit_id"], f["lot_id"])
        req.lot_ctx = lot_context(s, f["lot_id"])
    if f["lot_id"]:
        if req.lot is None:
            raise UnknownLot(f"no lot {f['lot_id']!r}: open it first with POST /v1/lots", field="lot_id")
        if req.lot.status != "open":
            raise LotClosed(f"lot {req.lot.id!r} is closed", field="lot_id")
    asked = req.commodity_field
    if asked is not None:
        if asked not in ctx.commodities:
            raise InvalidCommodity(f"commodity must be one of {sorted(ctx.commodities)}, got {asked!r}", field="commodity")
        if req.lot is not None and req.lot.commodity != asked:
            raise CommodityMismatch(f"lot {req.lot.id!r} holds {req.lot.commodity}, not {asked}", field="commodity")
    std_id = (
        req.standard_field or (req.lot.standard_id if req.lot else None) or (ctx.commodities[asked].default_standard if asked else None)
    )
    req.standard = ctx.default_standard if not std_id else get_standard(ctx.standards, std_id)
    # the commodity: the request's, else its lot's, else its standard's
    req.commodity = ctx.commodities.get(asked or (req.lot.commodity if req.lot else req.standard.commodity))
    # one model for the whole request, even if a promotion lands meanwhile
    req.model = ctx.model_for(req.commodity.id if req.commodity else None)
    return None


def grade_rgb(ctx, req: GradeRequest, rgb: np.ndarray) -> tuple[ScaledFrame, ImageGrade]:
    if req.scene == "orchard":
        return grade_orchard(ctx, req, rgb)
    with req.model.batcher.expecting():  # the batcher may hold a batch a moment for this request's crops
        scaled = resolve_scale(rgb, req.commodity, req.mm_per_px, req.reference_diameter_mm, req.camera_cal, ctx.reference)
        graded = grade_image(
            rgb,
            req.model,
            req.standard,
            mm_per_px=scaled.mm_per_px,
            sweetness=req.sweetness,
            policy=ctx.policy,
            commodity=req.commodity,
            measurements=scaled.fruit,
            lot=req.lot_ctx,
        )
    graded.image_flags.extend(scaled.flags)
    return scaled, graded


def grade_orchard(ctx, req: GradeRequest, rgb: np.ndarray) -> tuple[ScaledFrame, ImageGrade]:
    """An orchard scene (service/orchard.py): the fruit found by the boxes or the detector, sized from
    their pixels, then graded like any fruit (the fruit check is the detector's or the client's)."""
    camera = req.fields.get("camera_id")
    # the focal length: the request's, else the one the camera's calibration learned, else the setting's
    learned = req.camera_cal.focal_px if req.camera_cal is not None else None
    configured = ctx.settings.camera_focal_px.get(camera) if camera else None
    focal_source, focal = next(
        ((source, f) for source, f in (("request", req.focal_px), ("calibration", learned), ("settings", configured)) if f),
        ("none", None),
    )
    scaled, record = resolve_orchard(
        rgb,
        req.boxes,
        ctx.detector,
        req.mm_per_px,
        req.camera_cal.mm_per_px if req.camera_cal else None,
        focal,
        req.reference_diameter_mm or ctx.settings.orchard_reference_mm,
    )
    with req.model.batcher.expecting():
        graded = grade_image(
            rgb,
            req.model,
            req.standard,
            mm_per_px=scaled.mm_per_px,
            sweetness=req.sweetness,
            policy=ctx.policy,
            commodity=req.commodity,
            measurements=scaled.fruit,
            lot=req.lot_ctx,
            confirmed=True,
        )
    graded.image_flags.extend(scaled.flags)
    record["focal_px"] = None if focal is None else round(float(focal), 1)
    record["focal_source"] = focal_source
    req.extra_payload["orchard"] = record
    return scaled, graded


def grade_and_store(
    ctx, req: GradeRequest, data: bytes, media_type: str, rgb: np.ndarray, key: str | None
) -> tuple[ImageGrade, ResultRow, bool]:
    """grade_rgb then store, in one call: a request hands its work to a thread once, not twice.
    (graded, stored result, replayed)."""
    scaled, graded = grade_rgb(ctx, req, rgb)
    saved, replayed = store(ctx, req, data, media_type, rgb, scaled, graded, key)
    return graded, saved, replayed


def discard_unreferenced(ctx, sha: str, path) -> None:
    """Remove an image file whose result could not be committed, unless a row refers to it."""
    try:
        if ctx.repo.get_image(sha) is not None:
            return
    except Exception:  # noqa: BLE001 - the database is what failed: the file is still nobody's
        pass
    ctx.images.discard(path)


def store(
    ctx, req: GradeRequest, data: bytes, media_type: str, rgb: np.ndarray, scaled: ScaledFrame, graded: ImageGrade, key: str | None
) -> tuple[ResultRow, bool]:
    """Image file, then result + fruit rows in one transaction. (result, replayed)."""
    t0 = time.perf_counter()
    sha, path, wrote = ctx.images.put_new(data, media_type)
    share = ctx.settings.review_sample_share
    for i, f in enumerate(graded.fruits):  # active learning: a few uncertain, unflagged fruit go to review
        if share and not f.flags and f.defect is not None:
            flag = review_sample_flag(f"{sha}:{key}:{i}", f.defect.score, req.model.spec.threshold_defective, share)
            if flag is not None:
                f.flags.append(flag)
    payload = graded.to_dict()
    for f in payload["fruits"]:
        f.update(sweetness_fields(req.sweetness))
    payload["calibration"] = {"mm_per_px": scaled.mm_per_px, "source": scaled.source}
    payload["references"] = [
        {"bbox": list(r.bbox), "diameter_px": round((r.diameter_px + r.minor_diameter_px) / 2, 2)} for r in scaled.references
    ]
    payload["commodity"] = req.commodity.id if req.commodity else None
    payload.update(req.extra_payload)
    img = ImageRow(sha256=sha, path=str(path), media_type=media_type, width_px=rgb.shape[1], height_px=rgb.shape[0], size_bytes=len(data))
    fruits = graded.fruits
    sw = req.sweetness
    row = ResultRow(
        created_at=utcnow(),
        idempotency_key=key,
        api_key_id=req.key_id,
        request_sha256=req.request_sha256,
        image_sha256=sha,
        mm_per_px=scaled.mm_per_px,
        brix=req.brix,
        model_name=req.model.spec.name,
        model_version=req.model.spec.version,
        standard_id=req.standard.id,
        standard_version=req.standard.version,
        n_fruits=len(fruits),
        flagged=any(f.flagged for f in fruits) or any(fl.code != "no_fruit" for fl in graded.image_flags),
        payload=payload,
        **req.fields,
    )
    fruit_rows = [
        FruitRow(
            index=i,
            lot_id=req.fields["lot_id"],
            fruit_id=req.fields["fruit_id"],
            grade=None if f.decision is None else f.decision.grade,
            flagged=f.flagged,
            diameter_mm=f.measurement.diameter_mm,
            defect_label=None if f.defect is None else f.defect.label,
            defect_score=None if f.defect is None else f.defect.score,
            brix=None if sw is None else sw.brix,
            brix_source=None if sw is None else sw.source,
            priority=min((fl.priority for fl in f.flags), default=None),
        )
        for i, f in enumerate(fruits)
    ]
    try:
        saved = ctx.repo.save_result(img, row, fruit_rows)
        replayed = saved.id != row.id  # a concurrent retry committed first: its result is the answer
        if replayed:
            check_same_request(req, saved)
    except BaseException:
        if wrote:  # nothing references the file this request wrote (unless a concurrent request stored it meanwhile)
            discard_unreferenced(ctx, sha, path)
        raise
    STORE_SECONDS.observe(time.perf_counter() - t0)
    if not replayed:
        for f in fruits:
            FRUITS.labels(f.decision.grade if f.decision else "none").inc()
            for fl in f.flags:
                FLAGS.labels(fl.code).inc()
    return saved, replayed

"""POST /v1/grade and /v1/grade/batch: camera images in, every fruit graded, stored, returned."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, BackgroundTasks, Depends, File, Form, Header, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from grader.errors import InvalidField, OutOfRange
from grader.fusion import grade_views
from grader.pipeline import ImageGrade

from .. import grading, shadow
from ..auth import Principal, require
from ..errors import Busy
from ..forms import read_limited
from ..imaging import decode_upload
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
    "model": {"name": "apple-defect", "version": "0.3.0"},
}


@router.post(
    "/grade",
    summary="Grade the fruit in one image",
    description="Multipart form: `image` (JPEG or PNG) and optional `lot_id`, `camera_id`, `fruit_id`, `lane`, "
    "`brix` (°Brix at 20 °C), `mm_per_px` (camera scale), `standard` (a standard id), `commodity` (apple, orange, lemon; "
    "default: the lot's, else the service's; the result says which was used). The result is stored before "
    "the reply. A retry with the same `Idempotency-Key` header, or the same `camera_id` + `fruit_id`, returns the "
    "first result instead of grading twice; the same key with another image or other fields is refused (422 "
    "`idempotency_key_reused`). Keys are scoped to the API key that sent them.",
    responses={
        200: {"content": {"application/json": {"example": GRADE_EXAMPLE}}},
        401: {"description": "missing or unknown API key"},
        413: {"description": "image over the byte limit"},
        422: {"description": "bad image or field; the body names the field"},
    },
)
async def grade(
    request: Request,
    background: BackgroundTasks,
    image: Annotated[UploadFile, File(description="JPEG or PNG of one fruit or a frame with several")],
    lot_id: Annotated[str | None, Form()] = None,
    camera_id: Annotated[str | None, Form()] = None,
    fruit_id: Annotated[str | None, Form()] = None,
    lane: Annotated[str | None, Form()] = None,
    brix: Annotated[str | None, Form(description="°Brix at 20 °C, 0-35 (else the fruit's stored reading, else its lot's sample)")] = None,
    mm_per_px: Annotated[str | None, Form(description="millimetres per pixel at the fruit, > 0")] = None,
    standard: Annotated[str | None, Form(description="grade standard id; default from settings")] = None,
    reference_diameter_mm: Annotated[
        str | None,
        Form(description="reference spheres of this diameter (mm) are in view: the scale is taken from them and they are not graded"),
    ] = None,
    commodity: Annotated[str | None, Form(description="apple, orange, lemon…; default: the lot's, else the service's")] = None,
    scene: Annotated[
        str | None,
        Form(
            description="belt (default, or the camera's) or orchard: fruit on the tree, found by the "
            "detector (or `boxes`) and sized from their pixels, or declined"
        ),
    ] = None,
    boxes: Annotated[
        str | None,
        Form(
            description='orchard scenes: JSON [[x0, y0, x1, y1], …] or [{"box": [...], "kind": '
            '"apple" | "tennis_ball"}, …] in pixels; replaces the detector'
        ),
    ] = None,
    focal_px: Annotated[
        str | None, Form(description="orchard scenes: the camera's focal length in pixels (perspective correction)")
    ] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    principal: Principal = Depends(require("camera")),
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    with admitted(ctx):
        req = grading.parse(
            lot_id,
            camera_id,
            fruit_id,
            lane,
            brix,
            mm_per_px,
            standard,
            reference_diameter_mm,
            idempotency_key,
            commodity,
            principal.key_id,
            scene,
            boxes,
            focal_px,
            ctx.settings.camera_scenes,
        )
        data = await read_limited(image, ctx.settings.max_image_bytes)
        req.request_sha256 = grading.request_hash(req, [data])
        if ctx.registry.due():
            await run_in_threadpool(ctx.registry.follow, ctx)  # a promotion made by another replica
        existing = await run_in_threadpool(grading.lookup, ctx, req)
        if existing is not None:
            return result_payload(existing, replayed=True)
        rgb, media_type = await decode_upload(data, ctx.settings.max_image_pixels, ctx.settings.decode_budget_s)
        graded, saved, replayed = await run_in_threadpool(grading.grade_and_store, ctx, req, data, media_type, rgb, req.key)
        if ctx.shadow is not None and not replayed:  # after the reply: never on the camera's critical path
            background.add_task(shadow.judge, ctx.repo, ctx.shadow, req.model.model_id, saved.id, rgb, graded.fruits)
        return result_payload(saved, replayed=replayed)


class admitted:
    """Admission control: past max_in_flight concurrent grades a camera is told to retry at once
    (503 + Retry-After, its connection closed: errors.OVERLOADED_HEADERS), so latency stays bounded
    instead of every request queueing behind a backlog."""

    def __init__(self, ctx, weight: int = 1) -> None:
        self.ctx, self.weight = ctx, weight

    def __enter__(self):
        ctx = self.ctx
        if ctx.in_flight >= ctx.settings.max_in_flight:
            raise Busy(f"{ctx.in_flight} grades in progress (limit {ctx.settings.max_in_flight}); retry shortly")
        ctx.in_flight += self.weight
        return self

    def __exit__(self, *exc) -> None:
        self.ctx.in_flight -= self.weight


MAX_BATCH_IMAGES = 32


@router.post(
    "/grade/batch",
    summary="Grade several images in one request: separate frames, or several views of one fruit",
    description="Multipart form: `images` (1-32 JPEG/PNG files) and `mode`: `frames` (default; each image is graded and "
    "stored as its own result, in order) or `views` (the images show ONE fruit from several sides: sizes are the "
    "median of the views, blemish areas add up, the worst defect evidence counts; one result, stored with the best "
    "view's image). Other fields as for /v1/grade. Every image is checked before anything is stored: one bad image "
    "refuses the whole request, naming it.",
)
async def grade_batch(
    request: Request,
    background: BackgroundTasks,
    images: Annotated[list[UploadFile], File(description="JPEG or PNG images")],
    mode: Annotated[Literal["frames", "views"], Form()] = "frames",
    lot_id: Annotated[str | None, Form()] = None,
    camera_id: Annotated[str | None, Form()] = None,
    fruit_id: Annotated[str | None, Form(description="with mode=views: the fruit shown")] = None,
    lane: Annotated[str | None, Form()] = None,
    brix: Annotated[str | None, Form()] = None,
    mm_per_px: Annotated[str | None, Form()] = None,
    standard: Annotated[str | None, Form()] = None,
    reference_diameter_mm: Annotated[str | None, Form()] = None,
    commodity: Annotated[str | None, Form()] = None,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
    principal: Principal = Depends(require("camera")),
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    if not 1 <= len(images) <= MAX_BATCH_IMAGES:
        raise OutOfRange("images", "batch_size", f"send between 1 and {MAX_BATCH_IMAGES} images, got {len(images)}")
    if mode == "frames" and fruit_id:
        raise InvalidField("fruit_id names one fruit: use it with mode=views", field="fruit_id", code="invalid_request")
    with admitted(ctx, weight=len(images)):
        req = grading.parse(
            lot_id,
            camera_id,
            fruit_id,
            lane,
            brix,
            mm_per_px,
            standard,
            reference_diameter_mm,
            idempotency_key,
            commodity,
            principal.key_id,
        )
        raw = []
        for i, up in enumerate(images):
            raw.append(await read_limited(up, ctx.settings.max_image_bytes, f"images[{i}]"))
        req.request_sha256 = grading.request_hash(req, raw, mode=mode)
        existing = await run_in_threadpool(grading.lookup, ctx, req)
        if existing is not None and mode == "views":
            return {"mode": mode, "results": [result_payload(existing, replayed=True)]}
        decoded = []
        for i, (up, data) in enumerate(zip(images, raw)):
            try:
                rgb, media_type = await decode_upload(data, ctx.settings.max_image_pixels, ctx.settings.decode_budget_s)
            except Exception as exc:  # name the image that failed, then let the usual mapping answer
                if hasattr(exc, "field"):
                    exc.field = f"images[{i}]"
                    exc.message = f"images[{i}] ({up.filename}): {exc.message}"
                raise
            decoded.append((data, rgb, media_type))
        if mode == "frames":
            out = []
            for i, (data, rgb, media_type) in enumerate(decoded):
                key = None if req.key is None else f"{req.key}#{i}"
                if key is not None:
                    prior = await run_in_threadpool(ctx.repo.find_by_idempotency_key, key)
                    if prior is not None:
                        grading.check_same_request(req, prior)
                        out.append(result_payload(prior, replayed=True))
                        continue
                graded, saved, replayed = await run_in_threadpool(grading.grade_and_store, ctx, req, data, media_type, rgb, key)
                if ctx.shadow is not None and not replayed:
                    background.add_task(shadow.judge, ctx.repo, ctx.shadow, req.model.model_id, saved.id, rgb, graded.fruits)
                out.append(result_payload(saved, replayed=replayed))
            return {"mode": mode, "results": out}

        def fuse():
            per_view = [grading.grade_rgb(ctx, req, rgb) for _, rgb, _ in decoded]
            sound = tuple(c for c in req.model.spec.classes if c not in req.model.spec.defective_classes)
            fruit, best, summary = grade_views([g.fruits for _, g in per_view], req.standard, req.sweetness, ctx.policy, req.lot_ctx, sound)
            if fruit is None:  # no view shows a fruit: stored as such, with the first image
                return per_view[0][0], per_view[0][1], 0, summary
            return per_view[best][0], ImageGrade([fruit], []), best, summary

        scaled, graded, best_frame, summary = await run_in_threadpool(fuse)
        req.extra_payload = {"views": summary, "best_view": best_frame}
        data, rgb, media_type = decoded[best_frame]
        saved, replayed = await run_in_threadpool(grading.store, ctx, req, data, media_type, rgb, scaled, graded, req.key)
        return {"mode": mode, "results": [result_payload(saved, replayed=replayed)]}

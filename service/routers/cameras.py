"""Per-camera calibration: an image of a reference sphere or disc of known size sets mm_per_px."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from grader.calibration import calibrate_from_image
from grader.errors import InvalidField, NoCalibration
from store.tables import CalibrationRow, ImageRow

from ..auth import require
from ..forms import physical_field, read_limited, text_field
from ..imaging import decode_upload

router = APIRouter(prefix="/v1/cameras", tags=["cameras"])


def calibration_payload(row: CalibrationRow) -> dict[str, Any]:
    return {
        "camera_id": row.camera_id,
        "mm_per_px": row.mm_per_px,
        "method": row.method,
        "reference_diameter_mm": row.reference_diameter_mm,
        "reference_diameter_px": None if row.reference_diameter_px is None else round(row.reference_diameter_px, 2),
        "reference_distance_mm": row.reference_distance_mm,
        "focal_px": None if row.focal_px is None else round(row.focal_px, 1),
        "created_at": row.created_at.isoformat(),
    }


@router.post(
    "/{camera_id}/calibration",
    summary="Calibrate a camera from an image of a reference sphere or disc",
    description="Multipart form: `image` showing one round reference (whole, not touching the border) and "
    "`reference_diameter_mm`. Later grades from this camera use the stored mm_per_px unless a request gives its own. "
    "With `reference_distance_mm` (camera to the reference's centre, the reference near the middle of the frame) the "
    "camera's focal length in pixels is learned too: orchard scenes from this camera correct their sizes for perspective with it.",
)
async def calibrate(
    request: Request,
    camera_id: str,
    image: Annotated[UploadFile, File(description="JPEG or PNG of the reference sphere or disc")],
    reference_diameter_mm: Annotated[str, Form(description="true diameter of the reference, mm")],
    reference_distance_mm: Annotated[
        str | None, Form(description="distance from the camera to the reference's centre, mm: the focal length is learned from it")
    ] = None,
    _=Depends(require("camera")),
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    camera = text_field("camera_id", camera_id)
    ref_mm = physical_field("reference_diameter_mm", reference_diameter_mm)
    distance_mm = physical_field("reference_distance_mm", reference_distance_mm)
    if camera is None or ref_mm is None:
        raise InvalidField("camera_id and reference_diameter_mm are required", field="reference_diameter_mm", code="missing_field")
    data = await read_limited(image, ctx.settings.max_image_bytes)
    rgb, media_type = await decode_upload(data, ctx.settings.max_image_pixels, ctx.settings.decode_budget_s)
    cal = await run_in_threadpool(calibrate_from_image, rgb, ref_mm, camera, None, distance_mm)

    def store() -> CalibrationRow:
        from ..grading import discard_unreferenced

        sha, path, wrote = ctx.images.put_new(data, media_type)
        img = ImageRow(
            sha256=sha, path=str(path), media_type=media_type, width_px=rgb.shape[1], height_px=rgb.shape[0], size_bytes=len(data)
        )
        row = CalibrationRow(
            camera_id=camera,
            mm_per_px=cal.mm_per_px,
            method=cal.method,
            reference_diameter_mm=ref_mm,
            reference_diameter_px=cal.reference_diameter_px,
            focal_px=cal.focal_px,
            reference_distance_mm=cal.reference_distance_mm,
            image_sha256=sha,
            created_at=cal.created_at,
        )
        try:
            return ctx.repo.add_calibration(img, row)
        except BaseException:
            if wrote:
                discard_unreferenced(ctx, sha, path)
            raise

    return calibration_payload(await run_in_threadpool(store))


@router.get("/{camera_id}/calibration", summary="The calibration in force for a camera")
def get_calibration(request: Request, camera_id: str, _=Depends(require("camera", "inspector", "trainer"))) -> dict[str, Any]:
    row = request.app.state.ctx.repo.latest_calibration(camera_id)
    if row is None:
        raise NoCalibration(f"camera {camera_id!r} has no calibration")
    return calibration_payload(row)

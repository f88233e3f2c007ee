"""Line cameras' video: a recorded clip (POST) or live frames (websocket), every fruit tracked
along the belt, graded once and stored with its journey."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from grader.errors import GraderError, IdempotencyKeyReused, InvalidFrame, InvalidVideo, OutOfRange, UploadTooLarge

from .. import grading
from ..auth import Principal, require
from ..errors import status_and_code
from ..forms import physical_field
from ..imaging import decode_upload
from ..video import BeltSetup, LineSession, process_clip
from .grade import admitted

router = APIRouter(prefix="/v1/cameras", tags=["video"])

CHUNK = 1 << 20


def _request(
    ctx, camera_id: str, lot_id: str | None, mm_per_px: str | None, commodity: str | None, standard: str | None, key_id: str | None = None
) -> grading.GradeRequest:
    req = grading.parse(lot_id, camera_id, None, None, None, mm_per_px, standard, None, None, commodity, key_id)
    grading.lookup(ctx, req)
    return req


def _belt(lanes: int, belt_speed_mm_s: str | None, direction: str) -> BeltSetup:
    return BeltSetup(
        lanes=lanes, direction=1 if direction == "left_to_right" else -1, speed_mm_s=physical_field("belt_speed_mm_s", belt_speed_mm_s)
    )


@router.post(
    "/{camera_id}/video",
    summary="Grade every fruit in a clip of the belt: tracked across frames, counted and graded once",
    description="Multipart form: `video` (MP4, AVI or MJPEG the camera recorded), optional `mm_per_px` (else the camera's "
    "calibration), `lot_id`, `commodity`, `lanes` (belt lanes, top to bottom), `belt_speed_mm_s` (a prior for tracking) and "
    "`direction`. Each tracked fruit is judged on its most central whole views (worst defect evidence), sized as the median "
    "over every frame that shows it whole (`size_frames`; `diameter_spread_mm`: how far those frames' diameters lie from it), "
    "graded like a posted image and stored with its best frame and its journey (`GET /v1/fruits/{fruit_id}/events`). Posting "
    "the same clip again returns the stored results.",
)
async def post_video(
    request: Request,
    camera_id: str,
    video: Annotated[UploadFile, File(description="the clip")],
    mm_per_px: Annotated[str | None, Form()] = None,
    lot_id: Annotated[str | None, Form()] = None,
    commodity: Annotated[str | None, Form()] = None,
    standard: Annotated[str | None, Form()] = None,
    lanes: Annotated[int, Form(ge=1, le=16)] = 3,
    belt_speed_mm_s: Annotated[str | None, Form()] = None,
    direction: Annotated[Literal["left_to_right", "right_to_left"], Form()] = "left_to_right",
    principal: Principal = Depends(require("camera")),
) -> dict[str, Any]:
    ctx = request.app.state.ctx
    belt = _belt(lanes, belt_speed_mm_s, direction)
    # the clip waits inside the data dir (never the system's temporary folder), removed as the request ends
    with admitted(ctx, weight=4), tempfile.TemporaryDirectory(prefix="video-", dir=ctx.settings.tmp_dir) as tmp:
        path = Path(tmp) / "clip"
        size = 0
        with open(path, "wb") as f:
            while chunk := await video.read(CHUNK):
                size += len(chunk)
                if size > ctx.settings.max_video_bytes:
                    raise UploadTooLarge(
                        f"video is larger than the limit of {ctx.settings.max_video_bytes} bytes", field="video", code="video_too_large"
                    )
                f.write(chunk)
        if size == 0:
            raise InvalidVideo("the video file is empty")
        req = await run_in_threadpool(_request, ctx, camera_id, lot_id, mm_per_px, commodity, standard, principal.key_id)
        return await run_in_threadpool(process_clip, ctx, req, path, belt, ctx.settings.max_video_frames)


@router.websocket("/{camera_id}/stream")
async def stream(
    ws: WebSocket,
    camera_id: str,
    lot_id: str | None = None,
    mm_per_px: str | None = None,
    commodity: str | None = None,
    lanes: int = 3,
    belt_speed_mm_s: str | None = None,
    fps: float = 10.0,
    direction: Literal["left_to_right", "right_to_left"] = "left_to_right",
) -> None:
    """A live camera: send each frame as a binary message (JPEG or PNG), in order, at `fps`; a fruit
    is sent back as `{"type": "fruit", ...}` as soon as it has left the frame and been graded.
    Send the text `end` to close the stream: the fruit still in view are graded and a
    `{"type": "summary", ...}` follows. Authenticate with the `X-API-Key` header (camera role)."""
    ctx = ws.app.state.ctx
    principal = ctx.api_keys.lookup(ws.headers.get("x-api-key") or "")
    if principal is None or principal.role not in ("camera", "admin"):
        await ws.close(code=4401 if principal is None else 4403, reason="camera key required")
        return
    await ws.accept()
    try:
        from ..limits import check

        check("fps", fps)
        if not 1 <= lanes <= 16:
            raise OutOfRange("lanes", "out_of_range", "lanes must be between 1 and 16")
        req = await run_in_threadpool(_request, ctx, camera_id, lot_id, mm_per_px, commodity, None, principal.key_id)
        belt = _belt(lanes, belt_speed_mm_s, direction)
    except GraderError as exc:
        code = status_and_code(exc)[1]
        await ws.send_json({"type": "error", "code": code, "message": exc.message, "field": exc.field})
        await ws.close(code=1008)
        return
    import uuid

    session: LineSession | None = None
    frame = 0
    try:
        while True:
            msg = await ws.receive()
            if msg["type"] == "websocket.disconnect":
                break
            if msg.get("bytes") is not None:
                if frame >= ctx.settings.max_video_frames:
                    await ws.send_json(
                        {
                            "type": "error",
                            "code": "video_too_long",
                            "frame": frame,
                            "message": f"a stream takes at most {ctx.settings.max_video_frames} frames: open a new one",
                        }
                    )
                    break
                try:
                    rgb, _ = await decode_upload(msg["bytes"], ctx.settings.max_image_pixels, ctx.settings.decode_budget_s)
                    if session is None:
                        session = LineSession(ctx, req, f"stream-{uuid.uuid4().hex}", rgb.shape[:2], belt, fps)
                    for f in await run_in_threadpool(session.push, frame, rgb):
                        await ws.send_json({"type": "fruit", **f})
                    frame += 1
                except (InvalidFrame, IdempotencyKeyReused) as exc:  # refused by the service: the error's own code
                    await ws.send_json({"type": "error", "code": status_and_code(exc)[1], "message": exc.message, "frame": frame})
                except Exception as exc:  # a bad frame (GraderError) is reported, the stream goes on
                    await ws.send_json({"type": "error", "code": "invalid_frame", "message": str(exc), "frame": frame})
            elif (msg.get("text") or "").strip() == "end":
                if session is not None:
                    for f in await run_in_threadpool(session.close):
                        await ws.send_json({"type": "fruit", **f})
                await ws.send_json(
                    {
                        "type": "summary",
                        **(session.summary() if session else {"frames": 0, "seen": 0, "graded": 0, "flagged": 0, "not_graded": 0}),
                    }
                )
                await ws.close()
                return
    except WebSocketDisconnect:
        pass
    if session is not None:  # the camera went away (or sent too many frames): grade and keep what it showed
        await run_in_threadpool(session.close)
    try:
        await ws.close()
    except Exception:  # noqa: BLE001 - the client already closed it
        pass


stream.grader_roles = frozenset({"camera", "admin"})  # type: ignore[attr-defined]  # read by the gate

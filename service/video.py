"""A line camera's video: every fruit detected in every frame, tracked along the belt, graded
once from its best views through the same path as a posted image, and stored with its journey.

``LineSession`` works frame by frame, so the same code serves an uploaded clip
(``process_clip``) and a live camera streaming frames over a websocket."""

from __future__ import annotations

import copy
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from grader.fusion import fuse_views
from grader.measure import crop_for_model, measure_segment, segment_fruits
from grader.pipeline import ImageGrade, decide
from grader.tracking import BeltTracker, Detection, Track

from . import grading
from .errors import ApiError
from .scale import ScaledFrame


@dataclass
class BeltSetup:
    lanes: int = 3
    direction: int = 1  # +1 left to right
    speed_mm_s: float | None = None  # the belt's speed, when known (a prior for the tracker)
    views_per_fruit: int = 3  # whole views measured per fruit (the most central ones)


@dataclass
class LineSession:
    """One camera's stream of frames (a clip or a live feed) for one grade request context."""

    ctx: Any
    req: grading.GradeRequest
    clip_id: str
    size: tuple[int, int]  # (height, width)
    belt: BeltSetup
    fps: float
    tracker: BeltTracker = field(init=False)
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # frames some open track still needs
    graded: list[dict[str, Any]] = field(default_factory=list)
    not_graded: list[dict[str, Any]] = field(default_factory=list)
    n_frames: int = 0

    def __post_init__(self) -> None:
        h, w = self.size
        scale = self.scale
        speed = None if self.belt.speed_mm_s is None or scale is None else self.belt.speed_mm_s / scale / self.fps
        self.tracker = BeltTracker(w, h, self.belt.lanes, self.belt.direction, speed)

    @property
    def scale(self) -> float | None:
        req = self.req
        return req.mm_per_px if req.mm_per_px is not None else (req.camera_cal.mm_per_px if req.camera_cal is not None else None)

    def push(self, frame: int, rgb: np.ndarray) -> list[dict[str, Any]]:
        """One frame in; the fruit whose tracks closed with it, graded and stored."""
        if rgb.shape[:2] != self.size:
            raise ApiError(422, "invalid_frame", f"frame {frame} is {rgb.shape[1]}x{rgb.shape[0]}, the stream's frames are "
                                                 f"{self.size[1]}x{self.size[0]}", "frame")
        self.n_frames += 1
        self.frames[frame] = rgb
        dets = [Detection(frame, frame / self.fps, seg.bbox, seg.cut_off, seg) for seg in segment_fruits(rgb)]
        out = [self._grade(t) for t in self.tracker.update(frame, dets)]
        self._forget()
        return [o for o in out if o is not None]

    def close(self) -> list[dict[str, Any]]:
        out = [self._grade(t) for t in self.tracker.finish()]
        self.frames.clear()
        return [o for o in out if o is not None]

    def _forget(self) -> None:
        oldest = min((d.frame for t in self.tracker.open for d in t.detections), default=None)
        for k in [k for k in self.frames if oldest is None or k < oldest]:
            del self.frames[k]

    def _views(self, t: Track) -> list[Detection]:
        whole = t.whole_views()
        centre = self.size[1] / 2
        return sorted(sorted(whole, key=lambda d: abs(d.centre[0] - centre))[: self.belt.views_per_fruit], key=lambda d: d.frame)

    def _grade(self, t: Track) -> dict[str, Any] | None:
        seen = {"track": t.id, "lane": t.lane, "frames": t.frames, "first_seen_s": round(t.detections[0].t_s, 3),
                "last_seen_s": round(t.last.t_s, 3)}
        views = self._views(t)
        if not views:
            self.not_graded.append({**seen, "reason": "never whole in view (cut by the frame edge)"})
            return None
        req, ctx = self.req, self.ctx
        bands = req.commodity.colour_bands if req.commodity else ()
        axis = req.commodity.size_axis if req.commodity else "major"
        scale = self.scale
        ms = [measure_segment(self.frames[d.frame], d.payload, scale, colour_bands=bands, size_axis=axis) for d in views]
        spec = req.model.spec
        crops = [crop_for_model(self.frames[d.frame], m.bbox, spec.crop_margin_frac, m.mask) for d, m in zip(views, ms)]
        evidence = req.model.predict(crops)
        if evidence and sum(ev.is_fruit is False for ev in evidence) * 2 > len(evidence):
            # most views of the track fail the model's fruit check: a piece of background, not graded
            self.not_graded.append({**seen, "reason": "not a fruit (the model's fruit check)",
                                    "fruit_score": round(float(np.median([ev.fruit_score or 0.0 for ev in evidence])), 4)})
            return None
        fused, worst, best = fuse_views(list(zip(ms, evidence)), blemish="median")
        sound = tuple(c for c in spec.classes if c not in spec.defective_classes)
        fruit = decide(fused, worst, req.standard, req.sweetness, ctx.policy, req.lot_ctx, sound)
        rgb = self.frames[views[best].frame]
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        fruit_id = f"{req.fields['camera_id'] or 'camera'}-{self.clip_id[:10]}-{t.id:04d}"
        one = copy.copy(req)
        one.fields = {**req.fields, "fruit_id": fruit_id, "lane": str(t.lane)}
        one.extra_payload = {"video": {"clip_id": self.clip_id, **seen, "views": [d.frame for d in views], "best_view": views[best].frame,
                                       "view_diameters_mm": [None if m.diameter_mm is None else round(m.diameter_mm, 2) for m in ms]}}
        source = "request" if req.mm_per_px is not None else "camera" if scale is not None else "none"
        saved, replayed = grading.store(ctx, one, jpeg.tobytes(), "image/jpeg", rgb, ScaledFrame([fused], scale, source),
                                        ImageGrade([fruit], []), f"video:{self.clip_id}:{t.id}")
        f = saved.payload["fruits"][0]
        entry = {"fruit_id": fruit_id, "result_id": saved.id, "replayed": replayed, **seen, "views": [d.frame for d in views],
                 "diameter_mm": f.get("diameter_mm"), "blemish_area_cm2": f.get("blemish_area_cm2"), "defect": f.get("defect"),
                 "grade": f.get("grade"), "outlet": f.get("outlet"), "flagged": f.get("flagged"), "flags": f.get("flags", [])}
        self.graded.append(entry)
        return entry

    def summary(self) -> dict[str, Any]:
        return {"frames": self.n_frames, "seen": len(self.graded) + len(self.not_graded), "graded": len(self.graded),
                "flagged": sum(1 for f in self.graded if f["flagged"]), "not_graded": len(self.not_graded)}


def read_frames(path: Path, max_frames: int) -> tuple[float, tuple[int, int], Iterator[tuple[int, np.ndarray]]]:
    """(fps, (height, width), frames as RGB) of a clip OpenCV can decode; 422 when it cannot."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ApiError(422, "invalid_video", "not a video OpenCV can decode (send MP4, AVI or MJPEG)", "video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise ApiError(422, "invalid_video", "the video holds no frame that can be decoded", "video")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if count > max_frames:
        cap.release()
        raise ApiError(422, "video_too_long", f"the video has {count} frames, over the limit of {max_frames}", "video")

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        try:
            k, frame = 0, first
            while frame is not None:
                if k >= max_frames:
                    raise ApiError(422, "video_too_long", f"the video has more than {max_frames} frames", "video")
                yield k, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                k += 1
                ok, frame = cap.read()
                if not ok:
                    frame = None
        finally:
            cap.release()

    return (fps if 0 < fps < 1000 else 10.0), first.shape[:2], frames()


def process_clip(ctx, req: grading.GradeRequest, path: Path, belt: BeltSetup, max_frames: int) -> dict[str, Any]:
    clip_id = hashlib.sha256(path.read_bytes()).hexdigest()
    fps, size, frames = read_frames(path, max_frames)
    session = LineSession(ctx, req, clip_id, size, belt, fps)
    for k, rgb in frames:
        session.push(k, rgb)
    session.close()
    fruits = sorted(session.graded, key=lambda f: (f["first_seen_s"], f["lane"]))
    return {"clip": {"id": clip_id, "fps": fps, "frames": session.n_frames, "width_px": size[1], "height_px": size[0],
                     "lanes": belt.lanes}, "counts": session.summary(), "fruits": fruits, "not_graded": session.not_graded}

"""A line camera's video: every fruit detected in every frame, tracked along the belt, graded
once from its best views through the same path as a posted image, and stored with its journey.
Its size is the median over every frame that shows it whole and clear of the frame's edge, not
only over the few views the model sees.

``LineSession`` works frame by frame, so the same code serves an uploaded clip
(``process_clip``) and a live camera streaming frames over a websocket."""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import cv2
import numpy as np

from grader.crop import crop_for_model
from grader.errors import InvalidFrame, InvalidVideo, VideoFrameTooLarge, VideoTooLong, VideoTooSlow
from grader.fusion import ViewSize, fuse_views, size_over_views
from grader.measure import caliper_size_px, measure_segment
from grader.pipeline import ImageGrade, decide
from grader.segment import segment_fruits
from grader.tracking import BeltTracker, Detection, Track

from . import grading
from .scale import ScaledFrame


@dataclass
class BeltSetup:
    lanes: int = 3
    direction: int = 1  # +1 left to right
    speed_mm_s: float | None = None  # the belt's speed, when known (a prior for the tracker)
    views_per_fruit: int = 3  # whole views graded per fruit (the most central ones)
    # a fruit is sized on every whole view at least this far from the frame's edge (pixels): nearer,
    # its outline may run into the border's pixels
    size_edge_margin_px: int = 2


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
            raise InvalidFrame(
                f"frame {frame} is {rgb.shape[1]}x{rgb.shape[0]}, the stream's frames are {self.size[1]}x{self.size[0]}", field="frame"
            )
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

    def _size_views(self, t: Track) -> list[Detection]:
        """The views a track is sized on: every whole one clear of the frame's edge."""
        h, w = self.size
        m = self.belt.size_edge_margin_px
        return [d for d in t.whole_views() if d.bbox[0] >= m and d.bbox[1] >= m and d.bbox[2] <= w - m and d.bbox[3] <= h - m]

    def _grade(self, t: Track) -> dict[str, Any] | None:
        seen = {
            "track": t.id,
            "lane": t.lane,
            "frames": t.frames,
            "first_seen_s": round(t.detections[0].t_s, 3),
            "last_seen_s": round(t.last.t_s, 3),
        }
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
            self.not_graded.append(
                {
                    **seen,
                    "reason": "not a fruit (the model's fruit check)",
                    "fruit_score": round(float(np.median([ev.fruit_score or 0.0 for ev in evidence])), 4),
                }
            )
            return None
        fused, worst, best = fuse_views(list(zip(ms, evidence)), blemish="median")
        # the size: a robust statistic over many frames, not the three graded views (one view's
        # outline is off by a pixel or so with the codec's blocks and the fruit's place in them)
        sizing = self._size_views(t) or views
        fused, spread = size_over_views(
            fused, [ViewSize(*caliper_size_px(d.payload.contour, axis)[:2], float(d.payload.mask.sum())) for d in sizing]
        )
        size = {
            "size_frames": [d.frame for d in sizing],
            "diameter_spread_mm": None if spread is None or fused.diameter_mm is None else round(spread, 2),
        }
        sound = tuple(c for c in spec.classes if c not in spec.defective_classes)
        fruit = decide(fused, worst, req.standard, req.sweetness, ctx.policy, req.lot_ctx, sound)
        rgb = self.frames[views[best].frame]
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
        fruit_id = f"{req.fields['camera_id'] or 'camera'}-{self.clip_id[:10]}-{t.id:04d}"
        one = copy.copy(req)
        one.fields = {**req.fields, "fruit_id": fruit_id, "lane": str(t.lane)}
        one.extra_payload = {
            "video": {
                "clip_id": self.clip_id,
                **seen,
                "views": [d.frame for d in views],
                "best_view": views[best].frame,
                "view_diameters_mm": [None if m.diameter_mm is None else round(m.diameter_mm, 2) for m in ms],
                **size,
            }
        }
        source = "request" if req.mm_per_px is not None else "camera" if scale is not None else "none"
        saved, replayed = grading.store(
            ctx,
            one,
            jpeg.tobytes(),
            "image/jpeg",
            rgb,
            ScaledFrame([fused], scale, source),
            ImageGrade([fruit], []),
            grading.scoped_key(req.key_id, f"video:{self.clip_id}:{t.id}"),
        )
        f = saved.payload["fruits"][0]
        entry = {
            "fruit_id": fruit_id,
            "result_id": saved.id,
            "replayed": replayed,
            **seen,
            "views": [d.frame for d in views],
            "diameter_mm": f.get("diameter_mm"),
            **size,
            "blemish_area_cm2": f.get("blemish_area_cm2"),
            "defect": f.get("defect"),
            "grade": f.get("grade"),
            "outlet": f.get("outlet"),
            "flagged": f.get("flagged"),
            "flags": f.get("flags", []),
        }
        self.graded.append(entry)
        return entry

    def summary(self) -> dict[str, Any]:
        return {
            "frames": self.n_frames,
            "seen": len(self.graded) + len(self.not_graded),
            "graded": len(self.graded),
            "flagged": sum(1 for f in self.graded if f["flagged"]),
            "not_graded": len(self.not_graded),
        }


#: leading bytes of the video containers OpenCV reads: (offset, magic) -> container
CONTAINERS = (
    (0, b"RIFF", "avi"),
    (4, b"ftyp", "mp4"),
    (0, b"\x1a\x45\xdf\xa3", "matroska"),
    (0, b"\x00\x00\x01\xba", "mpeg-ps"),
    (0, b"\x00\x00\x01\xb3", "mpeg"),
    (0, b"OggS", "ogg"),
    (0, b"FLV", "flv"),
    (4, b"moov", "mov"),
    (4, b"mdat", "mov"),
    (4, b"wide", "mov"),
    (4, b"free", "mov"),
)


def sniff_container(head: bytes) -> str:
    """The clip's container from its first bytes; 422 for anything that is not a video container
    (a single JPEG or PNG posted as a clip, a text file...), before any decoder sees it."""
    if head.startswith(b"\xff\xd8") or head.startswith(b"\x89PNG"):
        raise InvalidVideo("this is a still image, not a video: post it to /v1/grade", field="video")
    for offset, magic, name in CONTAINERS:
        if head[offset : offset + len(magic)] == magic:
            if name == "avi" and head[8:12] != b"AVI ":
                break
            return name
    raise InvalidVideo("not a video container OpenCV can decode (send MP4, MOV, AVI/MJPEG or MKV)", field="video")


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size_at(f, start: int, length: int) -> tuple[int, int] | None:
    """(width, height) from the frame header of a JPEG stored at ``start`` in ``f``, reading only
    its marker segments' heads; None when it is not a JPEG or has no frame header before its data."""
    f.seek(start)
    if f.read(2) != b"\xff\xd8":
        return None
    pos, end = start + 2, start + length
    for _ in range(256):  # a JPEG has a handful of segments before its frame header
        if pos + 4 > end:
            return None
        f.seek(pos)
        head = f.read(4)
        if len(head) < 4 or head[0] != 0xFF:
            return None
        marker = head[1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in _SOF:
            sof = f.read(5)
            if len(sof) < 5:
                return None
            return int.from_bytes(sof[3:5], "big"), int.from_bytes(sof[1:3], "big")
        if marker == 0xDA:  # scan data before any frame header
            return None
        pos += 2 + int.from_bytes(head[2:4], "big")
    return None


def check_avi(path: Path, max_pixels: int, max_frames: int) -> None:
    """Walk an AVI's chunks without decoding anything: the declared frame size, then every
    MJPEG frame's own size (a frame may differ from the header) against the image pixel limit,
    and the number of frames against the frame limit. 422 on the first that is over."""
    size = path.stat().st_size

    def chunks(f, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
        pos = start
        while pos + 8 <= end:
            f.seek(pos)
            h = f.read(8)
            if len(h) < 8:
                return
            length = int.from_bytes(h[4:8], "little")
            yield h[:4], pos + 8, min(length, end - pos - 8)
            pos += 8 + length + (length & 1)

    def too_big(w: int, h: int, where: str) -> None:
        if w * h > max_pixels:
            raise VideoFrameTooLarge(f"{where} is {w}x{h} = {w * h} pixels, over the image limit of {max_pixels}", field="video")

    frames = 0
    with open(path, "rb") as f:
        todo = [(12, size)]  # lists in file order: the header list (hdrl) before the frames (movi)
        while todo:
            start, end = todo.pop(0)
            for cid, off, length in chunks(f, start, end):
                if cid == b"LIST":
                    f.seek(off)
                    kind = f.read(4)
                    if kind in (b"hdrl", b"movi", b"rec "):
                        todo.append((off + 4, off + length))
                elif cid == b"avih" and length >= 40:
                    f.seek(off + 32)
                    wh = f.read(8)
                    too_big(int.from_bytes(wh[:4], "little"), int.from_bytes(wh[4:], "little"), "the clip's frame size")
                elif cid[2:4] in (b"dc", b"db"):
                    frames += 1
                    if frames > max_frames:
                        raise VideoTooLong(f"the video has more than {max_frames} frames", field="video")
                    dims = jpeg_size_at(f, off, length)
                    if dims is not None:
                        too_big(*dims, f"frame {frames - 1}")


def read_frames(
    path: Path, max_frames: int, max_pixels: int | None = None
) -> tuple[float, tuple[int, int], Iterator[tuple[int, np.ndarray]]]:
    """(fps, (height, width), frames as RGB) of a clip OpenCV can decode; 422 when it cannot, when
    it is not a video container, or when a frame is over the image pixel limit (checked from the
    container before decoding, and for every decoded frame)."""
    with open(path, "rb") as f:
        container = sniff_container(f.read(16))
    if container == "avi" and max_pixels is not None:
        check_avi(path, max_pixels, max_frames)
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise InvalidVideo("not a video OpenCV can decode (send MP4, AVI or MJPEG)", field="video")
    if max_pixels is not None:
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        if w * h > max_pixels:
            cap.release()
            raise VideoFrameTooLarge(f"the clip's frames are {w}x{h} = {w * h} pixels, over the image limit of {max_pixels}", field="video")
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    ok, first = cap.read()
    if not ok or first is None:
        cap.release()
        raise InvalidVideo("the video holds no frame that can be decoded", field="video")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    if count > max_frames:
        cap.release()
        raise VideoTooLong(f"the video has {count} frames, over the limit of {max_frames}", field="video")
    shape = first.shape

    def frames() -> Iterator[tuple[int, np.ndarray]]:
        try:
            k, frame = 0, first
            while frame is not None:
                if k >= max_frames:
                    raise VideoTooLong(f"the video has more than {max_frames} frames", field="video")
                if frame.shape != shape:
                    raise InvalidVideo(
                        f"frame {k} is {frame.shape[1]}x{frame.shape[0]}, the clip's first is {shape[1]}x{shape[0]}", field="video"
                    )
                yield k, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                k += 1
                ok, frame = cap.read()
                if not ok:
                    frame = None
        finally:
            cap.release()

    return (fps if 0 < fps < 1000 else 10.0), first.shape[:2], frames()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def process_clip(ctx, req: grading.GradeRequest, path: Path, belt: BeltSetup, max_frames: int) -> dict[str, Any]:
    """Decode, track and grade a whole clip, within GRADER_VIDEO_BUDGET_S (422 past it)."""
    clip_id = file_sha256(path)
    budget = ctx.settings.video_budget_s
    t0 = time.monotonic()
    fps, size, frames = read_frames(path, max_frames, ctx.settings.max_image_pixels)
    session = LineSession(ctx, req, clip_id, size, belt, fps)
    for k, rgb in frames:
        if time.monotonic() - t0 > budget:
            raise VideoTooSlow(
                f"the clip took over {budget:g} s to decode and grade (stopped at frame {k}); send shorter clips", field="video"
            )
        session.push(k, rgb)
    session.close()
    fruits = sorted(session.graded, key=lambda f: (f["first_seen_s"], f["lane"]))
    return {
        "clip": {"id": clip_id, "fps": fps, "frames": session.n_frames, "width_px": size[1], "height_px": size[0], "lanes": belt.lanes},
        "counts": session.summary(),
        "fruits": fruits,
        "not_graded": session.not_graded,
    }

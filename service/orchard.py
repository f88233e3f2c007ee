"""Orchard scenes: a frame of fruit on the tree, or a crop of one around one fruit. Every fruit is found
(the request's ``boxes``, else the fruit detector, else a crop's centre fruit), sized from its own
pixels by the orchard method (grader/orchard_scene.py), and scaled by the request's ``mm_per_px``, the
reference spheres in the frame, or the camera's calibration. A fruit whose outline does not hold is
declined (``diameter_mm`` null, ``size_declined`` and a flag naming why), never given a confident
wrong size."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from grader.errors import InvalidField
from grader.orchard_circles import Circle
from grader.orchard_scene import (
    FRUIT,
    REFERENCE,
    SceneObject,
    SizedObject,
    SizedScene,
    apply_scale,
    size_centre_fruit,
    size_scene,
    to_measurement,
)
from grader.records import Flag

from .scale import ScaledFrame

log = logging.getLogger("grader.orchard")

SCENES = ("belt", "orchard")
#: at most this many boxes in one request
MAX_BOXES = 500
#: an image no larger than this (pixels, longer side) may be a crop around one fruit: when nothing is
#: found in it, the fruit at its centre is sized; in a larger image (a whole frame) nothing found is no fruit
CROP_MAX_SIDE_PX = 800
#: a crop is mirrored outwards by this share of its longer side before the detector and the sizing
#: see it. Chosen on the tune dates of the ECOPOM frames among 0, 0.25, 0.5 and 1 (docs/orchard.md)
CROP_CONTEXT_SHARE = 0.25
#: in a crop, a fruit's circle may differ from the detector's box by this share before it is declined
#: (whole frames and a client's boxes: grader/orchard_scene.py MAX_BOX_DISAGREEMENT, 0.12): the
#: detector's boxes on a crop are looser than on a frame. Chosen on the tune dates among 0.12, 0.16
#: and 0.2 (docs/lab/orchard.md)
CROP_MAX_BOX_DISAGREEMENT = 0.16
#: the detector score a crop's own fruit needs when no apple of the crop passes the operating threshold
CROP_FRUIT_MIN_SCORE = 0.05
#: a whole frame whose longer side is over this (pixels) is sized on a copy brought down to
#: FRAME_SIZING_SIDE_PX, and its results are mapped back to its own pixels: the orchard method was
#: measured at that resolution (the ECOPOM frames, 1920 × 1080), and its time grows with the pixels
FRAME_MAX_SIDE_PX = 2400
FRAME_SIZING_SIDE_PX = 1920


def parse_scene(raw: str | None) -> str | None:
    if raw is None or raw == "":
        return None
    if raw not in SCENES:
        raise InvalidField(f"scene must be one of {list(SCENES)}, got {raw!r}", field="scene")
    return raw


def parse_boxes(raw: str | None) -> list[SceneObject] | None:
    """``boxes``: JSON, a list of ``[x0, y0, x1, y1]`` (apples) or of ``{"box": [x0, y0, x1, y1],
    "kind": "apple" | "tennis_ball"}``, in image pixels."""
    if raw is None or raw == "":
        return None
    try:
        items = json.loads(raw)
    except ValueError as exc:
        raise InvalidField(f"boxes must be JSON: {exc}", field="boxes") from None
    if not isinstance(items, list) or len(items) > MAX_BOXES:
        raise InvalidField(f"boxes must be a JSON list of at most {MAX_BOXES} boxes", field="boxes")
    out = []
    for i, it in enumerate(items):
        kind = FRUIT
        if isinstance(it, dict):
            kind, it = it.get("kind", FRUIT), it.get("box")
        ok = isinstance(it, list) and len(it) == 4 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in it)
        if not ok or kind not in (FRUIT, REFERENCE) or not (it[0] < it[2] and it[1] < it[3]) or min(it) < 0:
            raise InvalidField(
                f"boxes[{i}] must be [x0, y0, x1, y1] with x0 < x1, y0 < y1 (pixels, >= 0) and kind {FRUIT} or {REFERENCE}", field="boxes"
            )
        out.append(SceneObject(kind, tuple(float(v) for v in it), "client"))  # type: ignore[arg-type]
    return out


def load_detector(path: Path):
    """The orchard detector (inference/detector.py) from an artifact folder or the newest version in a
    folder of versions; None when there is none (orchard requests then need boxes or a crop)."""
    if not path.exists():
        return None
    candidates = (
        [path]
        if (path / "model.onnx").exists()
        else sorted(
            (p for p in path.iterdir() if (p / "model.onnx").exists()),
            key=lambda p: [int(x) if x.isdigit() else x for x in p.name.split(".")],
        )
    )
    if not candidates:
        return None
    from inference.detector import OnnxDetector

    det = OnnxDetector(candidates[-1], threads=1)
    log.info("orchard detector %s loaded", candidates[-1])
    return det


def objects_in(image_rgb: np.ndarray, boxes: list[SceneObject] | None, detector) -> list[SceneObject]:
    """Where the fruit and reference spheres are: the client's boxes, else the detector's (the whole
    frame brought to the resolution of the frames it was trained on)."""
    if boxes is not None:
        return boxes
    if detector is None:
        return []
    found = detector.detect(image_rgb, scale=detector.frame_scale(image_rgb.shape))
    return [SceneObject(d.kind, tuple(float(v) for v in d.box_xyxy), "detector", float(d.score)) for d in found]


def resolve_orchard(
    image_rgb: np.ndarray,
    boxes: list[SceneObject] | None,
    detector,
    request_mm_per_px: float | None,
    camera_mm_per_px: float | None,
    focal_px: float | None,
    reference_mm: float,
) -> tuple[ScaledFrame, dict[str, Any]]:
    """The orchard scene's fruit as measurements at the scene's scale, and what the result records of
    the scene (how the fruit were found, the reference spheres, the scale's uncertainty)."""
    found_by = "client" if boxes is not None else "detector" if detector is not None else "centre"
    is_crop = boxes is None and max(image_rgb.shape[:2]) <= CROP_MAX_SIDE_PX
    if is_crop and detector is not None:
        scene = _crop_scene(image_rgb, detector, request_mm_per_px, focal_px, reference_mm)
        objects = [s.obj for s in scene.fruits]
    else:
        scene = _frame_scene(image_rgb, boxes, detector, request_mm_per_px, focal_px, reference_mm)
        objects = [s.obj for s in [*scene.fruits, *scene.references]]
    h, w = image_rgb.shape[:2]
    if is_crop and not any(o.kind == FRUIT and _holds(o.box_xyxy, (w - 1) / 2, (h - 1) / 2) for o in objects):
        # a crop around one fruit that the detector did not find (or no detector): the fruit at its
        # centre; beside other fruit found in the crop only when it is sized (a crop cut by its
        # frame's border has its fruit off centre, and leaves at the centre are no fruit)
        centre = size_centre_fruit(image_rgb, focal_px)
        c = centre.circle
        alone = not scene.fruits
        if alone or (
            centre.diameter_px is not None and c is not None and not any(_holds(s.obj.box_xyxy, c.cx_px, c.cy_px) for s in scene.fruits)
        ):
            scene.fruits = [*scene.fruits, centre]
            apply_scale(scene)
        if not objects:
            found_by = "centre"
    if is_crop:
        # a crop is about the fruit at its centre: that one first, then the others by their distance to it
        scene.fruits.sort(key=lambda s: _distance_to(s, (w - 1) / 2, (h - 1) / 2))
    source = scene.scale_source
    if scene.mm_per_px is None and camera_mm_per_px is not None:
        scene.mm_per_px, source = camera_mm_per_px, "camera"
        apply_scale(scene)
    return _frame(image_rgb, scene, source, found_by)


def _inside(box: tuple[float, float, float, float], pad: int, h: int, w: int) -> bool:
    """Whether a box of the padded image has its centre in the original one."""
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return pad <= cx < pad + w and pad <= cy < pad + h


def _distance_to(s: SizedObject, x: float, y: float) -> float:
    """Pixels from a point to a sized object's circle centre (its box's centre when it has none)."""
    c = s.circle
    cx, cy = (
        (c.cx_px, c.cy_px) if c is not None else ((s.obj.box_xyxy[0] + s.obj.box_xyxy[2]) / 2, (s.obj.box_xyxy[1] + s.obj.box_xyxy[3]) / 2)
    )
    return float(np.hypot(cx - x, cy - y))


def _holds(box: tuple[float, float, float, float], x: float, y: float) -> bool:
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def _box_mapped(b: tuple[float, float, float, float], kx: float = 1.0, ky: float = 1.0, dx: float = 0.0, dy: float = 0.0):
    return (b[0] * kx + dx, b[1] * ky + dy, b[2] * kx + dx, b[3] * ky + dy)


def _mapped(s: SizedObject, kx: float = 1.0, ky: float = 1.0, dx: float = 0.0, dy: float = 0.0) -> SizedObject:
    """A sized object in another image's pixels: x → x·kx + dx, y → y·ky + dy (lengths × the mean of
    kx and ky). Millimetres stay as they are."""
    k, m, d = (kx + ky) / 2, np.array([kx, ky]), np.array([dx, dy])
    win = s.window
    window = replace(
        win,
        diameter_px=None if win.diameter_px is None else win.diameter_px * k,
        circle=None if win.circle is None else Circle(win.circle.cx_px * kx + dx, win.circle.cy_px * ky + dy, win.circle.radius_px * k),
        contour_px=None if win.contour_px is None else np.round(win.contour_px * m + d).astype(np.int32),
        edge_px=None if win.edge_px is None else win.edge_px * m + d,
    )
    return replace(
        s,
        obj=replace(s.obj, box_xyxy=_box_mapped(s.obj.box_xyxy, kx, ky, dx, dy)),
        window=window,
        diameter_px=None if s.diameter_px is None else s.diameter_px * k,
        radius_se_px=None if s.radius_se_px is None else s.radius_se_px * k,
    )


def _frame_scene(
    image_rgb: np.ndarray, boxes: list[SceneObject] | None, detector, mm_per_px: float | None, focal_px: float | None, reference_mm: float
) -> SizedScene:
    """A whole frame (or any image with the client's boxes) found and sized; one larger than
    :data:`FRAME_MAX_SIDE_PX` on a copy brought down to :data:`FRAME_SIZING_SIDE_PX`, its results
    mapped back to the frame's own pixels (scale, focal length and boxes converted both ways)."""
    h, w = image_rgb.shape[:2]
    if max(h, w) <= FRAME_MAX_SIDE_PX:
        return size_scene(image_rgb, objects_in(image_rgb, boxes, detector), mm_per_px, focal_px, reference_mm)
    f = FRAME_SIZING_SIDE_PX / max(h, w)
    small = cv2.resize(image_rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    fx, fy = small.shape[1] / w, small.shape[0] / h
    small_boxes = None if boxes is None else [replace(b, box_xyxy=_box_mapped(b.box_xyxy, fx, fy)) for b in boxes]
    k = (fx + fy) / 2
    scene = size_scene(
        small,
        objects_in(small, small_boxes, detector),
        None if mm_per_px is None else mm_per_px / k,
        None if focal_px is None else focal_px * k,
        reference_mm,
    )
    scene.fruits = [_mapped(s, 1 / fx, 1 / fy) for s in scene.fruits]
    scene.references = [_mapped(s, 1 / fx, 1 / fy) for s in scene.references]
    if boxes is not None:  # the client's own boxes back, exactly as posted
        scene.fruits = [replace(s, obj=b) for s, b in zip(scene.fruits, [b for b in boxes if b.kind != REFERENCE])]
        scene.references = [replace(s, obj=b) for s, b in zip(scene.references, [b for b in boxes if b.kind == REFERENCE])]
    if scene.mm_per_px is not None:
        scene.mm_per_px *= k
    return scene


def _crop_scene(image_rgb: np.ndarray, detector, mm_per_px: float | None, focal_px: float | None, reference_mm: float) -> SizedScene:
    """A crop around one fruit, found and sized with surroundings: the crop is mirrored outwards by
    :data:`CROP_CONTEXT_SHARE` of its longer side first (a fruit filling a tight crop is otherwise
    missed by the detector, and its colour model's background ring falls outside the image). The
    objects centred in the crop itself are sized; their mirror images only keep out of the
    background. A crop says a fruit is at its centre: when no apple box passing the detector's
    threshold holds it, the best apple down to :data:`CROP_FRUIT_MIN_SCORE` whose box does is
    taken. No fruit: the scene's fruits are empty (the caller sizes the crop's centre, as when no
    fruit holds it)."""
    h, w = image_rgb.shape[:2]
    pad = int(round(CROP_CONTEXT_SHARE * max(h, w)))
    src = cv2.copyMakeBorder(image_rgb, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    # one pass at the crop's lower apple score: the boxes at or over the operating thresholds are the
    # ones a pass at those thresholds gives (a weaker box never suppresses a stronger one)
    operating = dict(zip(detector.classes, detector.thresholds))
    dets = detector.detect(src, {**operating, FRUIT: min(operating[FRUIT], CROP_FRUIT_MIN_SCORE)})
    found = [
        SceneObject(d.kind, tuple(float(v) for v in d.box_xyxy), "detector", float(d.score)) for d in dets if d.score >= operating[d.kind]
    ]
    cx, cy = pad + (w - 1) / 2, pad + (h - 1) / 2
    if not any(o.kind == FRUIT and _holds(o.box_xyxy, cx, cy) for o in found):
        weak = [d for d in dets if d.kind == FRUIT and d.score < operating[FRUIT] and _holds(d.box_xyxy, cx, cy)]
        if weak:
            found.append(SceneObject(FRUIT, tuple(float(v) for v in weak[0].box_xyxy), "detector", float(weak[0].score)))
    inside = [o for o in found if _inside(o.box_xyxy, pad, h, w)]
    outside = [o.box_xyxy for o in found if not _inside(o.box_xyxy, pad, h, w)]
    scene = size_scene(src, inside, mm_per_px, focal_px, reference_mm, others=outside, max_box_disagreement=CROP_MAX_BOX_DISAGREEMENT)
    scene.fruits = [_mapped(s, dx=-pad, dy=-pad) for s in scene.fruits]
    scene.references = [_mapped(s, dx=-pad, dy=-pad) for s in scene.references]
    return scene


def _frame(image_rgb: np.ndarray, scene: SizedScene, source: str, found_by: str) -> tuple[ScaledFrame, dict[str, Any]]:
    fruits = [to_measurement(s, image_rgb.shape, scene.mm_per_px) for s in scene.fruits]
    refs = [to_measurement(s, image_rgb.shape, scene.mm_per_px) for s in scene.references if s.diameter_px is not None]
    flags = []
    if source == "none":
        flags.append(Flag("uncalibrated", "no scale: no mm_per_px, no reference sphere sized in the frame, no camera calibration", 30))
    record = {
        "scene": "orchard",
        "found_by": found_by,
        "scale_rel_uncertainty": round(2 * scene.scale_rel_se, 4),
        "references": [
            {
                "bbox": [round(v, 1) for v in s.obj.box_xyxy],
                "diameter_px": None if s.diameter_px is None else round(s.diameter_px, 2),
                "declined": None if s.reason == "ok" else s.reason,
            }
            for s in scene.references
        ],
        "declined": sum(1 for s in scene.fruits if s.reason != "ok"),
    }
    return ScaledFrame(fruits, scene.mm_per_px, source, refs, flags), record

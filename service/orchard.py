"""Orchard scenes: a frame of fruit on the tree, or a crop of one around one fruit. Every fruit is found
(the request's ``boxes``, else the fruit detector, else a crop's centre fruit), sized from its own
pixels by the orchard method (grader/orchard_scene.py), and scaled by the request's ``mm_per_px``, the
reference spheres in the frame, or the camera's calibration. A fruit whose outline does not hold is
declined (``diameter_mm`` null, ``size_declined`` and a flag naming why), never given a confident
wrong size."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from grader.errors import InvalidField
from grader.orchard_scene import FRUIT, REFERENCE, SceneObject, SizedScene, apply_scale, size_centre_fruit, size_scene, to_measurement
from grader.records import Flag

from .scale import ScaledFrame

log = logging.getLogger("grader.orchard")

SCENES = ("belt", "orchard")
#: at most this many boxes in one request
MAX_BOXES = 500
#: an image no larger than this (pixels, longer side) may be a crop around one fruit: when nothing is
#: found in it, the fruit at its centre is sized; in a larger image (a whole frame) nothing found is no fruit
CROP_MAX_SIDE_PX = 800


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
    """Where the fruit and reference spheres are: the client's boxes, else the detector's."""
    if boxes is not None:
        return boxes
    if detector is None:
        return []
    return [SceneObject(d.kind, tuple(float(v) for v in d.box_xyxy), "detector", float(d.score)) for d in detector.detect(image_rgb)]


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
    objects = objects_in(image_rgb, boxes, detector)
    found_by = "client" if boxes is not None else "detector" if detector is not None else "centre"
    fruit_objects = [o for o in objects if o.kind == FRUIT]
    if not fruit_objects and boxes is None and max(image_rgb.shape[:2]) <= CROP_MAX_SIDE_PX:
        # a crop around one fruit that the detector did not find (or no detector): the fruit at its centre
        centre = size_centre_fruit(image_rgb, focal_px)
        scene = size_scene(image_rgb, [o for o in objects if o.kind == REFERENCE], request_mm_per_px, focal_px, reference_mm)
        scene.fruits = [centre]
        apply_scale(scene)
        found_by = "centre"
    else:
        scene = size_scene(image_rgb, objects, request_mm_per_px, focal_px, reference_mm)
    source = scene.scale_source
    if scene.mm_per_px is None and camera_mm_per_px is not None:
        scene.mm_per_px, source = camera_mm_per_px, "camera"
        apply_scale(scene)
    return _frame(image_rgb, scene, source, found_by)


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

"""The orchard fruit detector at serving time: ONNX Runtime on a whole frame, centre-heatmap decoding.

    det = OnnxDetector(Path("models/orchard-detector/0.1.0"), threads=1)
    for d in det.detect(image_rgb):          # uint8 H x W x 3, RGB
        d.kind, d.box_xyxy, d.score          # "apple" | "tennis_ball", image pixels, 0..1

Everything the preprocessing and the decoding need is read from the artifact's ``metadata.json``
(training/detector/ writes it): the frame is resized by ``preprocessing.scale`` (cv2 INTER_AREA
when shrinking), padded on the bottom and right to a multiple of ``preprocessing.pad_multiple``,
normalised ``(x/255 - mean) / std`` on RGB, and run as one NCHW batch of one. The graph returns,
at ``preprocessing.stride``:

* ``heatmap`` (1, n_classes, h, w): sigmoid centre scores per class;
* ``size`` (1, 2, h, w): box width and height in network-input pixels;
* ``offset`` (1, 2, h, w): the centre's sub-cell position (x, y) in cells.

A detection is a local maximum of a class heatmap (3 x 3) at or above that class's threshold
(``thresholds.score``); overlapping boxes are suppressed greedily (``thresholds.nms_iou``, across
classes when ``decode.class_agnostic_nms``). The box says where a fruit is, never how big it is:
sizing is done from the pixels by grader.orchard.

Imports only numpy, cv2 and onnxruntime (and grader's errors): nothing of service, training or cli.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import cv2
import numpy as np

os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
import onnxruntime as ort  # noqa: E402

from grader.errors import InvalidModelArtifact  # noqa: E402

INPUT_NAME = "input"
OUTPUT_NAMES = ("heatmap", "size", "offset")


@dataclass(frozen=True)
class Detection:
    kind: str  # "apple" | "tennis_ball"
    box_xyxy: tuple[float, float, float, float]  # image pixels
    score: float


@dataclass(frozen=True)
class Prepared:
    """A frame as the graph takes it, and how to map its cells back to the frame."""

    tensor: np.ndarray  # (1, 3, H, W) float32
    scale_xy: tuple[float, float]  # network-input pixels per frame pixel, x and y


def prepare(image_rgb: np.ndarray, scale: float, mean: Sequence[float], std: Sequence[float], pad_multiple: int = 32) -> Prepared:
    """Resize by ``scale``, normalise, pad bottom/right with zeros (the mean colour) to ``pad_multiple``."""
    if image_rgb.ndim != 3 or image_rgb.shape[2] != 3 or image_rgb.dtype != np.uint8:
        raise ValueError(f"expected an H x W x 3 uint8 RGB image, got {image_rgb.shape} {image_rgb.dtype}")
    h, w = image_rgb.shape[:2]
    nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    if (nw, nh) != (w, h):
        image_rgb = cv2.resize(image_rgb, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    x = (image_rgb.astype(np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    ph, pw = -(-nh // pad_multiple) * pad_multiple, -(-nw // pad_multiple) * pad_multiple
    out = np.zeros((1, 3, ph, pw), np.float32)
    out[0, :, :nh, :nw] = x.transpose(2, 0, 1)
    return Prepared(out, (nw / w, nh / h))


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of ``a`` (N, 4) with every box of ``b`` (M, 4), xyxy."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    ix0 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy0 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix1 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix1 - ix0, 0, None) * np.clip(iy1 - iy0, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy non-maximum suppression; the kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = order[0]
        keep.append(int(i))
        if order.size == 1:
            break
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest])[0] <= iou]
    return np.asarray(keep, np.int64)


def decode(
    heatmap: np.ndarray,
    size: np.ndarray,
    offset: np.ndarray,
    stride: int,
    scale_xy: tuple[float, float],
    thresholds: Sequence[float],
    nms_iou: float,
    class_agnostic_nms: bool = True,
    max_detections: int = 500,
    image_hw: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The graph's outputs of one image (batch dimension dropped: (C, h, w), (2, h, w), (2, h, w)) ->
    boxes (N, 4) in frame pixels, scores (N,), class indices (N,), best first. ``thresholds``: one per class."""
    boxes, scores, classes = [], [], []
    sx, sy = scale_xy
    kernel = np.ones((3, 3), np.uint8)
    for c in range(heatmap.shape[0]):
        hm = np.ascontiguousarray(heatmap[c], np.float32)
        peak = (hm == cv2.dilate(hm, kernel)) & (hm >= float(thresholds[c]))
        ys, xs = np.nonzero(peak)
        if not len(ys):
            continue
        cx = (xs + offset[0, ys, xs]) * stride / sx
        cy = (ys + offset[1, ys, xs]) * stride / sy
        bw = size[0, ys, xs] / sx
        bh = size[1, ys, xs] / sy
        boxes.append(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1))
        scores.append(hm[ys, xs])
        classes.append(np.full(len(ys), c, np.int64))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    b, s, k = np.concatenate(boxes).astype(np.float64), np.concatenate(scores).astype(np.float64), np.concatenate(classes)
    if image_hw is not None:
        h, w = image_hw
        b[:, [0, 2]] = b[:, [0, 2]].clip(0, w)
        b[:, [1, 3]] = b[:, [1, 3]].clip(0, h)
    if class_agnostic_nms:
        keep = nms(b, s, nms_iou)
    else:
        keep = np.concatenate([np.nonzero(k == c)[0][nms(b[k == c], s[k == c], nms_iou)] for c in np.unique(k)])
        keep = keep[np.argsort(-s[keep], kind="stable")]
    keep = keep[:max_detections]
    return b[keep], s[keep], k[keep]


class OnnxDetector:
    """A detection artifact (model.onnx + metadata.json with task "detection") on ONNX Runtime."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        self.model_dir = Path(model_dir)
        meta_path, onnx_path = self.model_dir / "metadata.json", self.model_dir / "model.onnx"
        if not meta_path.exists() or not onnx_path.exists():
            raise InvalidModelArtifact(f"no detection artifact at {self.model_dir}: expected model.onnx + metadata.json")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as exc:
            raise InvalidModelArtifact(f"{meta_path}: not valid JSON: {exc}") from exc
        if meta.get("task") != "detection":
            raise InvalidModelArtifact(f"{meta_path}: task is {meta.get('task')!r}, not 'detection'")
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        pre: Mapping = meta["preprocessing"]
        self.scale = float(pre["scale"])
        # the longer side of the frames it was trained on: a whole frame of another resolution is
        # resized to it, so that fruit reach the network at the size it learned (None: the fixed scale)
        side = pre.get("frame_long_side_px")
        self.frame_long_side_px = float(side) if side else None
        self.stride = int(pre["stride"])
        self.pad_multiple = int(pre.get("pad_multiple", 32))
        self.mean, self.std = tuple(pre["mean"]), tuple(pre["std"])
        th: Mapping = meta["thresholds"]
        score = th["score"]
        self.thresholds = [float(score[c]) for c in self.classes] if isinstance(score, Mapping) else [float(score)] * len(self.classes)
        self.nms_iou = float(th["nms_iou"])
        dec: Mapping = meta.get("decode", {})
        self.class_agnostic_nms = bool(dec.get("class_agnostic_nms", True))
        self.max_detections = int(dec.get("max_detections", 500))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(onnx_path.read_bytes(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise InvalidModelArtifact(f"{onnx_path} cannot be loaded: {exc}") from exc
        names = {o.name for o in self.session.get_outputs()}
        if not set(OUTPUT_NAMES) <= names:
            raise InvalidModelArtifact(f"{onnx_path}: outputs {sorted(names)}, expected {list(OUTPUT_NAMES)}")

    def frame_scale(self, shape: tuple[int, ...]) -> float:
        """The network-input scale for a whole frame of this shape: the artifact's scale, times the
        training frames' longer side over this frame's. A photo of a tree taken at another resolution
        holds its fruit at another size in pixels; its framing, not its pixel count, is what the
        training frames share with it. A crop around one fruit keeps the artifact's scale instead
        (its pixels are its frame's)."""
        if not self.frame_long_side_px:
            return self.scale
        return self.scale * self.frame_long_side_px / max(shape[:2])

    def raw(self, image_rgb: np.ndarray, scale: float | None = None) -> tuple[list[np.ndarray], Prepared]:
        """The graph's outputs (heatmap, size, offset) for one frame, and the prepared input."""
        prep = prepare(image_rgb, self.scale if scale is None else scale, self.mean, self.std, self.pad_multiple)
        return self.session.run(list(OUTPUT_NAMES), {INPUT_NAME: prep.tensor}), prep

    def detect(self, image_rgb: np.ndarray, min_scores: Mapping[str, float] | None = None, scale: float | None = None) -> list[Detection]:
        """Detections best first, in the image's pixels; ``min_scores`` (per class name) replaces the
        artifact's operating thresholds for this call (a class left out is not reported); ``scale``
        replaces the artifact's network-input scale (:meth:`frame_scale` for a whole frame)."""
        (heat, size, offset), prep = self.raw(image_rgb, scale)
        thresholds = self.thresholds if min_scores is None else [float(min_scores.get(c, np.inf)) for c in self.classes]
        boxes, scores, classes = decode(
            heat[0],
            size[0],
            offset[0],
            self.stride,
            prep.scale_xy,
            thresholds,
            self.nms_iou,
            self.class_agnostic_nms,
            self.max_detections,
            image_hw=image_rgb.shape[:2],
        )
        return [Detection(self.classes[int(k)], tuple(float(v) for v in b), float(s)) for b, s, k in zip(boxes, scores, classes)]

"""Scoring the orchard detector: whole frames through the network (decoded as served), greedy
matching to the boxes, AP50, the operating threshold per class, the figures of a split, and the
sweep of an artifact over input scales."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from inference.detector import box_iou, decode, prepare
from training.detector.config import STRIDE
from training.detector.frames import Frame, data_root, load_ecopom
from training.detector.model import CentreNet, Exported


@dataclass
class FrameDetections:
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def predict_frames(
    model: nn.Module, frames: Sequence[Frame], cfg: dict[str, Any], scale: float | None = None, desc: str = "detect"
) -> list[FrameDetections]:
    """Torch inference of whole frames, preprocessed and decoded as inference/detector.py does, at the
    low ``decode.min_score`` (the figures then sweep the threshold)."""
    model.eval()
    dec = cfg["decode"]
    scale = float(cfg["input"]["scale"]) if scale is None else scale
    n = len(cfg["data"]["classes"])
    out = []
    with torch.no_grad():
        for fr in tqdm(frames, desc=desc, unit="frame", file=sys.stderr, leave=False):
            prep = prepare(fr.image, scale, cfg["model"]["mean"], cfg["model"]["std"], int(cfg["input"]["pad_multiple"]))
            heat, size, off = (
                Exported(model)(torch.from_numpy(prep.tensor)) if isinstance(model, CentreNet) else model(torch.from_numpy(prep.tensor))
            )
            b, s, k = decode(
                heat[0].numpy(),
                size[0].numpy(),
                off[0].numpy(),
                STRIDE,
                prep.scale_xy,
                [float(dec["min_score"])] * n,
                float(dec["nms_iou"]),
                bool(dec["class_agnostic_nms"]),
                int(dec["max_detections"]),
                fr.image.shape[:2],
            )
            out.append(FrameDetections(b, s, k))
    return out


def match(
    dets: Sequence[FrameDetections], frames: Sequence[Frame], c: int, iou: float
) -> tuple[np.ndarray, np.ndarray, int, list[tuple[np.ndarray, np.ndarray]]]:
    """Greedy matching by score within each frame: per detection of class ``c`` its score and whether it
    matches a box of class ``c`` (IoU >= iou, each box once); the number of boxes; per frame (scores, flags)."""
    scores, tp, per_frame = [], [], []
    n_gt = 0
    for d, fr in zip(dets, frames):
        gt = fr.boxes[fr.labels == c]
        n_gt += len(gt)
        sel = np.nonzero(d.classes == c)[0]
        sel = sel[np.argsort(-d.scores[sel], kind="stable")]
        used = np.zeros(len(gt), bool)
        flags = np.zeros(len(sel), bool)
        if len(gt) and len(sel):
            ious = box_iou(d.boxes[sel], gt)
            for j in range(len(sel)):
                cand = np.where(~used, ious[j], -1)
                best = int(np.argmax(cand))
                if cand[best] >= iou:
                    used[best], flags[j] = True, True
        scores.append(d.scores[sel])
        tp.append(flags)
        per_frame.append((d.scores[sel], flags))
    return np.concatenate(scores) if scores else np.zeros(0), np.concatenate(tp) if tp else np.zeros(0, bool), n_gt, per_frame


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP (VOC 2010+) of one class."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(np.float64)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-9)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def at_threshold(scores: np.ndarray, tp: np.ndarray, n_gt: int, thr: float) -> dict[str, float]:
    keep = scores >= thr
    n_tp, n_det = int(tp[keep].sum()), int(keep.sum())
    return {
        "recall": n_tp / n_gt if n_gt else float("nan"),
        "precision": n_tp / n_det if n_det else float("nan"),
        "tp": n_tp,
        "detections": n_det,
        "boxes": int(n_gt),
    }


def choose_threshold(scores: np.ndarray, tp: np.ndarray, n_gt: int, rule: dict[str, Any], floor: float) -> tuple[float, str]:
    """A threshold at one of the detection scores. ``rule: f1``: the best F1 (ties: the lower); ``rule: recall, target: r``: the
    highest threshold keeping recall >= r (if never reached: the one with the most recall)."""
    cands = np.unique(scores[scores >= floor]) if (scores >= floor).any() else np.array([floor])  # thresholds at scores
    if rule["rule"] == "f1":
        best, best_f1 = floor, -1.0
        for t in cands:
            r = at_threshold(scores, tp, n_gt, t)
            p, rc = r["precision"], r["recall"]
            f1 = 0.0 if not (p == p and rc == rc) or p + rc == 0 else 2 * p * rc / (p + rc)
            if f1 > best_f1 + 1e-12:
                best, best_f1 = float(t), f1
        return best, f"best F1 on val ({best_f1:.3f})"
    if rule["rule"] == "recall":
        target = float(rule["target"])
        ok = [float(t) for t in cands if at_threshold(scores, tp, n_gt, t)["recall"] >= target]
        if ok:
            return max(ok), f"highest threshold with recall >= {target} of the val boxes"
        return floor, f"recall {target} never reached on val: the lowest threshold"
    raise ValueError(f"unknown threshold rule {rule!r}")


def evaluate(
    dets: Sequence[FrameDetections], frames: Sequence[Frame], cfg: dict[str, Any], thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    classes = cfg["data"]["classes"]
    out: dict[str, Any] = {"frames": len(frames)}
    iou = float(cfg["eval"]["iou"])
    for c, name in enumerate(classes):
        scores, tp, n_gt, per_frame = match(dets, frames, c, iou)
        rec: dict[str, Any] = {
            "ap50": average_precision(scores, tp, n_gt),
            "boxes": int(n_gt),
            "max_recall": float(tp.sum() / n_gt) if n_gt else float("nan"),
        }
        if thresholds is not None:
            thr = thresholds[name]
            rec.update({"threshold": thr, **at_threshold(scores, tp, n_gt, thr)})
            if name == "tennis_ball":
                holding = [i for i, fr in enumerate(frames) if (fr.labels == c).any()]
                found = [i for i in holding if (per_frame[i][1] & (per_frame[i][0] >= thr)).any()]
                rec["frames_holding"] = len(holding)
                rec["frames_found"] = len(found)
                rec["frames_found_share"] = len(found) / len(holding) if holding else float("nan")
        out[name] = rec
    return out


def scale_sweep(model_dir: Path, scales: Sequence[float], threads: int = 1) -> dict[str, Any]:
    """The artifact through ONNX Runtime with the frame resized by each of ``scales`` instead of its own:
    AP50 per class on val and held-out dates, and ms per frame. A scale of 1.0 is what running
    full-resolution tiles would see (the graph takes any multiple of 32, so no tiling is needed)."""
    from inference.detector import OnnxDetector

    meta = json.loads((model_dir / "metadata.json").read_text())
    cfg = meta["config"]
    root = data_root(cfg)
    classes = meta["classes"]
    dates = meta["training_data"]["dates"]
    det = OnnxDetector(model_dir, threads=threads)
    det.thresholds = [float(cfg["decode"]["min_score"])] * len(classes)
    out: dict[str, Any] = {}
    for split in ("val", "held_out"):
        frames = load_ecopom(root, classes, set(dates[split]))
        for sc in scales:
            det.scale = float(sc)
            dets, ms = [], []
            for fr in tqdm(frames, desc=f"scale {sc}: {split}", unit="frame", file=sys.stderr, leave=False):
                t = time.perf_counter()
                ds = det.detect(fr.image)
                ms.append((time.perf_counter() - t) * 1000)
                dets.append(
                    FrameDetections(
                        np.array([d.box_xyxy for d in ds]).reshape(-1, 4),
                        np.array([d.score for d in ds]),
                        np.array([classes.index(d.kind) for d in ds], np.int64),
                    )
                )
            ev = evaluate(dets, frames, cfg)
            out.setdefault(str(sc), {})[split] = {
                **{c: {"ap50": ev[c]["ap50"], "max_recall": ev[c]["max_recall"]} for c in classes},
                "median_ms": float(np.median(ms)),
            }
    return out

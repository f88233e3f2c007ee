"""The audit of an orchard-detector artifact: only tagged apples are boxed, so its unmatched held-out
apple detections are sampled onto a contact sheet for a person to judge, and the judged sample is
folded back into metadata.json as an audited precision."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from inference.detector import box_iou
from training.detector.augment import TileGeom, crop_resize
from training.detector.export import json_safe
from training.detector.frames import data_root, load_ecopom


def audit_sheet(model_dir: Path, cfg: dict[str, Any], sample: int = 120, seed: int = 0, threads: int = 1) -> dict[str, Any]:
    """Only tagged apples are boxed, so an apple detection on a held-out frame that matches no box may
    well be an untagged apple. Run the artifact (ONNX Runtime) on the held-out frames, collect those
    unmatched detections at the operating threshold, and draw a seeded sample of ``sample`` of them on
    a numbered contact sheet (``audit_sheet.png``) for a person to judge; ``audit.json`` lists them with
    ``verdict: null`` to fill in ("apple", "not_apple", "unsure"). Detections that overlap a tennis-ball
    box are counted as false positives outright."""
    from inference.detector import OnnxDetector

    meta = json.loads((model_dir / "metadata.json").read_text())
    root = data_root(cfg)
    classes = meta["classes"]
    frames = load_ecopom(root, classes, set(meta["training_data"]["dates"]["held_out"]))
    det = OnnxDetector(model_dir, threads=threads)
    apple, ball = classes.index("apple"), classes.index("tennis_ball")
    iou = float(cfg["eval"]["iou"])
    items, n_det, n_tp, n_on_ball = [], 0, 0, 0
    for fr in tqdm(frames, desc="audit: held-out frames", unit="frame", file=sys.stderr):
        ds = [d for d in det.detect(fr.image) if d.kind == "apple"]
        ds.sort(key=lambda d: -d.score)
        n_det += len(ds)
        gt = fr.boxes[fr.labels == apple]
        balls = fr.boxes[fr.labels == ball]
        used = np.zeros(len(gt), bool)
        for d in ds:
            b = np.array([d.box_xyxy])
            if len(gt):
                cand = np.where(~used, box_iou(b, gt)[0], -1)
                j = int(np.argmax(cand))
                if cand[j] >= iou:
                    used[j] = True
                    n_tp += 1
                    continue
            if len(balls) and box_iou(b, balls).max() >= 0.3:
                n_on_ball += 1
                continue
            items.append({"frame": fr.name, "box": [round(v, 1) for v in d.box_xyxy], "score": round(d.score, 4), "verdict": None})
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(items), size=min(sample, len(items)), replace=False).tolist()) if items else []
    sampled = [{"id": k, **items[i]} for k, i in enumerate(pick)]
    images = {fr.name: fr.image for fr in frames}
    cell, cols = 112, 12
    rows = -(-len(sampled) // cols) if sampled else 1
    sheet = np.full((rows * cell, cols * cell, 3), 255, np.uint8)
    for k, it in enumerate(sampled):
        x0, y0, x1, y1 = it["box"]
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 2.2
        g = TileGeom(0, int(cx - side / 2), int(cy - side / 2), max(8, int(side)), cell - 16, False)
        crop = crop_resize(images[it["frame"]], g)
        bb = g.boxes(np.array([it["box"]]))[0]
        cv2.rectangle(crop, (int(bb[0]), int(bb[1])), (int(bb[2]), int(bb[3])), (255, 255, 0), 1)
        r, c = divmod(k, cols)
        sheet[r * cell + 14 : r * cell + 14 + crop.shape[0], c * cell + 8 : c * cell + 8 + crop.shape[1]] = crop
        cv2.putText(sheet, str(k), (c * cell + 8, r * cell + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.imwrite(str(model_dir / "audit_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    rec = {
        "what": "held-out apple detections at the operating threshold that match no apple box (IoU < "
        f"{iou}) and overlap no tennis-ball box; a seeded sample judged by eye on audit_sheet.png",
        "threshold": det.thresholds[apple],
        "detections": n_det,
        "matched_boxes": n_tp,
        "on_tennis_balls": n_on_ball,
        "unmatched": len(items),
        "sample_seed": seed,
        "sampled": sampled,
    }
    (model_dir / "audit.json").write_text(json.dumps(rec, indent=1))
    return rec


def apply_audit(model_dir: Path) -> dict[str, Any]:
    """Fold the judged audit.json into metadata.json (metrics.held_out.apple.audit): the share of
    unmatched detections that are apples (Wilson 95 % interval over the sample) and the precision it implies."""
    from training.metrics import wilson_interval as wilson

    rec = json.loads((model_dir / "audit.json").read_text())
    verdicts = [it["verdict"] for it in rec["sampled"]]
    if any(v not in ("apple", "not_apple", "unsure") for v in verdicts):
        raise ValueError("audit.json: every sampled detection needs a verdict: apple, not_apple or unsure")
    n = len(verdicts)
    n_apple, n_not, n_unsure = verdicts.count("apple"), verdicts.count("not_apple"), verdicts.count("unsure")
    share, lo, hi = (n_apple / n, *wilson(n_apple, n)) if n else (float("nan"), float("nan"), float("nan"))
    det, tp, un = rec["detections"], rec["matched_boxes"], rec["unmatched"]

    def precision(sh: float) -> float:
        return (tp + sh * un) / det if det else float("nan")

    out = {
        "judged": n,
        "apple": n_apple,
        "not_apple": n_not,
        "unsure": n_unsure,
        "unmatched": un,
        "detections": det,
        "matched_boxes": tp,
        "on_tennis_balls": rec["on_tennis_balls"],
        "apple_share_of_unmatched": share,
        "apple_share_ci95": [lo, hi],
        "precision_audited": precision(share),
        "precision_audited_ci95": [precision(lo), precision(hi)],
        "rule": "precision = (detections matching an apple box + unmatched detections x share judged apple) / detections; "
        "unsure counted as not apple; detections on tennis balls count as false",
    }
    meta = json.loads((model_dir / "metadata.json").read_text())
    meta["metrics"]["held_out"]["apple"]["audit"] = out
    (model_dir / "metadata.json").write_text(json.dumps(json_safe(meta), indent=2))
    return out

"""The orchard detector's artifact: model.onnx (checked against torch), its speed through ONNX
Runtime, and metadata.json (what inference/detector.py reads and how the model was made)."""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from inference.detector import INPUT_NAME, OUTPUT_NAMES
from training.detector.config import REPO, STRIDE
from training.detector.model import CentreNet, Exported


def export(model: CentreNet, path: Path, probe: np.ndarray, opset: int = 17) -> dict[str, Any]:
    """ONNX with dynamic height and width (multiples of 32), checked against torch on ``probe``."""
    import onnxruntime as ort

    wrapped = Exported(model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapped,
        (torch.from_numpy(probe),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: {2: "height", 3: "width"}, **{o: {2: "h", 3: "w"} for o in OUTPUT_NAMES}},
        opset_version=opset,
        dynamo=False,
    )
    with torch.no_grad():
        ref = [t.numpy() for t in wrapped(torch.from_numpy(probe))]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: probe})
    diffs = {f"max_abs_diff_{n}": float(np.abs(r - o).max()) for n, r, o in zip(OUTPUT_NAMES, ref, got)}
    rec = {
        "opset": opset,
        "probe_shape": list(probe.shape),
        **diffs,
        "tolerance_heatmap": 1e-4,
        "passed": diffs["max_abs_diff_heatmap"] < 1e-4,
    }
    if not rec["passed"]:
        raise RuntimeError(f"ONNX export disagrees with torch on the heatmap: {rec}")
    return rec


def time_onnx(path: Path, image: np.ndarray, meta: dict[str, Any], repeats: int = 5) -> dict[str, float]:
    """Milliseconds per frame of inference/detector.OnnxDetector (1 thread), preprocessing and decoding included."""
    from inference.detector import OnnxDetector

    det = OnnxDetector(path, threads=1)
    det.detect(image)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        det.detect(image)
        ts.append((time.perf_counter() - t) * 1000)
    return {
        "median_ms": float(np.median(ts)),
        "min_ms": float(np.min(ts)),
        "frame": list(image.shape[:2]),
        "threads": 1,
        "repeats": repeats,
    }


def json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def artifact_metadata(
    cfg: dict[str, Any],
    thresholds: dict[str, float],
    rules: dict[str, str],
    metrics: dict[str, Any],
    parity: dict[str, Any],
    training_data: dict[str, Any],
    pretrained: dict[str, Any] | None,
    history: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metadata.json of a detection artifact: what inference/detector.py reads (classes, preprocessing,
    decode, thresholds) and the record of how it was made."""
    dates = (training_data.get("dates") or {}).get("val")
    return {
        "name": cfg["name"],
        "version": str(cfg["version"]),
        "task": "detection",
        "architecture": f"centre-heatmap head on {cfg['model']['backbone']} (stride-{STRIDE} and stride-16 features)",
        "classes": list(cfg["data"]["classes"]),
        "input_name": INPUT_NAME,
        "outputs": {
            "heatmap": "(1, n_classes, H/8, W/8) sigmoid centre score per class",
            "size": "(1, 2, H/8, W/8) box width, height in network-input pixels",
            "offset": "(1, 2, H/8, W/8) centre's sub-cell position x, y in cells",
        },
        "preprocessing": {
            "mode": "resize",
            "scale": float(cfg["input"]["scale"]),
            **({"frame_long_side_px": int(training_data["frame_long_side_px"])} if training_data.get("frame_long_side_px") else {}),
            "resize": "cv2 INTER_AREA (shrink) / INTER_LINEAR",
            "pad_multiple": int(cfg["input"]["pad_multiple"]),
            "pad": "bottom/right, zeros after normalisation",
            "stride": STRIDE,
            "layout": "NCHW",
            "colour": "RGB",
            "scale_pixels": "1/255",
            "mean": list(cfg["model"]["mean"]),
            "std": list(cfg["model"]["std"]),
        },
        "decode": {
            "peaks": "3x3 local maxima of each class heatmap at or above its threshold",
            "class_agnostic_nms": bool(cfg["decode"]["class_agnostic_nms"]),
            "max_detections": int(cfg["decode"]["max_detections"]),
        },
        "thresholds": {
            "score": {k: float(v) for k, v in thresholds.items()},
            "nms_iou": float(cfg["decode"]["nms_iou"]),
            "chosen_on": f"val dates {dates}" if dates else "given",
            "rules": rules,
        },
        "metrics": metrics,
        "parity": parity,
        "training_data": training_data,
        "pretrained": pretrained,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": _code_version(),
        "config": cfg,
        "history": history or {},
    }


def _code_version() -> str:
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "training", "inference"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"

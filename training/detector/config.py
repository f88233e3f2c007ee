"""The orchard detector's configuration: every key with its default (``DEFAULTS``), read from a YAML
file and ``--set key.sub=value`` overrides; the config is saved with the artifact."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Sequence

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "orchard_detector.yaml"

#: every key a config may set, with its default (a config file or --set overrides them)
DEFAULTS: dict[str, Any] = {
    "name": "orchard-detector",
    "version": "0.0.0",
    "seed": 0,
    "threads": 1,
    "data": {"kind": "ecopom", "root": "../shared/data/ecopom-apple-size", "classes": ["apple", "tennis_ball"], "val_dates": 2},
    "model": {
        "backbone": "efficientnet_lite0",
        "s8_block": 4,
        "last_block": 10,
        "tune_from": 8,
        "width": 64,
        "mean": [127.0 / 255.0] * 3,
        "std": [128.0 / 255.0] * 3,
    },
    "input": {"scale": 0.5, "pad_multiple": 32},
    "augment": {
        "tile": 256,
        "scale_jitter": [0.7, 1.7],
        "centre_on_object": 0.7,
        "hflip": 0.5,
        "brightness": 0.3,
        "contrast": 0.3,
        "saturation": 0.3,
        "hue_deg": 10.0,
        "gamma": 0.25,
        "blur_p": 0.3,
        "blur_sigma": 1.5,
        "noise_p": 0.3,
        "noise_sigma": 6.0,
        "jpeg_p": 0.3,
        "recolour_p": 0.5,
    },
    "train": {
        "tiles": 1600,
        "epochs": 30,
        "batch_size": 16,
        "lr": 2e-3,
        "backbone_lr": 2e-4,
        "weight_decay": 1e-4,
        "size_weight": 1.0,
        "offset_weight": 1.0,
        "max_objects": 64,
        "apple_neg_weight": 1.0,
        "pseudo": {"rounds": 1, "score": 0.3, "match_iou": 0.1, "as": "ignore", "cross_fit": 0, "report_round0": True},
    },
    "decode": {"min_score": 0.05, "nms_iou": 0.4, "class_agnostic_nms": True, "max_detections": 500},
    "thresholds": {"apple": {"rule": "recall", "target": 0.9}, "tennis_ball": {"rule": "f1"}},
    "eval": {"iou": 0.5},
}

#: the output stride of the centre heatmap (both backbones): a cell is 8 x 8 network-input pixels
STRIDE = 8


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """DEFAULTS, then the YAML file, then ``key.sub=value`` overrides (values parsed as YAML)."""
    cfg = merge(DEFAULTS, yaml.safe_load(Path(path).read_text()) if path else {})
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return cfg

"""The orchard detector's data: ecopom frames with their boxes, split by date, and the record of
which files each split held (kept in the artifact's metadata)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np

from training.detector.config import REPO


@dataclass
class Frame:
    name: str
    date: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    boxes: np.ndarray  # (N, 4) float xyxy, frame pixels
    labels: np.ndarray  # (N,) class index
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # apple-channel boxes left out of the loss


def tune_dates(dates: Sequence[str]) -> list[str]:
    """The first half of the sorted dates, as bench/size_accuracy.py's ``tune_dates``."""
    ds = sorted(set(dates))
    return ds[: len(ds) // 2]


def split_dates(dates: Sequence[str], val_dates: int) -> dict[str, list[str]]:
    ds = sorted(set(dates))
    tune = tune_dates(ds)
    return {"train": tune[: len(tune) - val_dates], "val": tune[len(tune) - val_dates :], "held_out": [d for d in ds if d not in tune]}


def data_root(cfg: dict[str, Any]) -> Path:
    root = Path(cfg["data"]["root"])
    return root if root.is_absolute() else (REPO / root).resolve()


def load_ecopom(root: Path, classes: Sequence[str], dates: set[str] | None = None) -> list[Frame]:
    ann = json.loads((root / "annotations.json").read_text())
    frames = []
    for f in ann:
        if dates is not None and f["date"] not in dates:
            continue
        bgr = cv2.imread(str(root / f["image"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(root / f["image"])
        objs = [o for o in f["objects"] if o["kind"] in classes]
        boxes = np.array([[o["box"][0][0], o["box"][0][1], o["box"][1][0], o["box"][1][1]] for o in objs], np.float64).reshape(-1, 4)
        labels = np.array([classes.index(o["kind"]) for o in objs], np.int64)
        frames.append(Frame(f["image"], f["date"], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), boxes, labels))
    return frames


def data_record(root: Path, splits: dict[str, list[str]]) -> dict[str, Any]:
    """What the artifact keeps of its data: sha256 of annotations.json and of every image of each split."""
    ann = json.loads((root / "annotations.json").read_text())
    files: dict[str, dict[str, str]] = {k: {} for k in splits}
    for f in ann:
        for k, ds in splits.items():
            if f["date"] in ds:
                files[k][f["image"]] = hashlib.sha256((root / f["image"]).read_bytes()).hexdigest()
    h = hashlib.sha256((root / "annotations.json").read_bytes())
    for k in sorted(files):
        for name in sorted(files[k]):
            h.update(f"{k}:{name}:{files[k][name]}\n".encode())
    return {
        "source": f"ecopom-apple-size ({root.name}; never copied into the repo)",
        "annotations_sha256": hashlib.sha256((root / "annotations.json").read_bytes()).hexdigest(),
        "sha256": h.hexdigest(),
        "split_rule": "by date: tune dates = first half of the sorted dates "
        "(bench/size_accuracy.tune_dates); of them the last data.val_dates dates are val, the rest train; later dates held out",
        "dates": splits,
        "frames": {k: sorted(v) for k, v in files.items()},
    }

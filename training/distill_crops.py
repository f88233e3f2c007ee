"""The crops training/distill.py learns from, cut as the service cuts them: labelled FruitNet single
photos per session, and unlabelled apples of the FruitNet group photos and of the ECOPOM orchard
frames of the tune dates (never the held-out ones), cached under the run's folder."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datasets import fruitnet
from grader.crop import crop_for_model
from grader.segment import segment_fruits
from training.crops import fruit_crop, group_fruit_crops, load_rgb, measurement_code_hash

#: sources of the crops in the table
SINGLE, GROUP, ORCHARD = "single", "group", "orchard"


@dataclass
class CropTable:
    """Every crop of a run: uint8 (N, S, S, 3), the label (0 sound, 1 defective, -1 none), the split
    (train / val / test; unlabelled crops are train), the capture session or date and the source."""

    crops: np.ndarray
    label: np.ndarray
    split: np.ndarray
    session: np.ndarray
    source: np.ndarray

    def where(self, mask: np.ndarray) -> np.ndarray:
        return np.flatnonzero(mask)


def orchard_tune_dates(frames: list[dict]) -> set[str]:
    """The ECOPOM dates bench/size_accuracy.py tunes on: the first half of the sorted dates."""
    dates = sorted({f["date"] for f in frames})
    return set(dates[: len(dates) // 2])


def box_ellipse_mask(box: tuple[int, int, int, int]) -> np.ndarray:
    """The ellipse inscribed in a box, as a box-sized bool mask."""
    w, h = max(1, box[2] - box[0]), max(1, box[3] - box[1])
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, h // 2), (max(1, w // 2), max(1, h // 2)), 0, 0, 360, 1, -1)
    return m.astype(bool)


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ix, iy = max(0, min(a[2], b[2]) - max(a[0], b[0])), max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def orchard_crops(ecopom: Path, margin: float, size: int) -> tuple[list[np.ndarray], list[str], list[bool]]:
    """A model crop of each annotated apple of the tune dates' frames: the fruit finder's largest
    segment overlapping the box (IoU >= 0.3) in a window three times the box around it, as
    datasets/regions.py cuts orchard windows; where the finder misses the apple, the box itself with
    the ellipse inscribed in it as the fruit mask. Returns the crops, their dates and whether each
    came from a segment."""
    frames = json.loads((ecopom / "annotations.json").read_text())
    tune = orchard_tune_dates(frames)
    crops, dates, segmented = [], [], []
    for frame in frames:
        if frame["date"] not in tune:
            continue
        rgb = load_rgb(ecopom / frame["image"])
        h, w = rgb.shape[:2]
        for o in frame["objects"]:
            box = tuple(int(v) for v in (*o["box"][0], *o["box"][1]))
            if o["kind"] != "apple" or min(box[2] - box[0], box[3] - box[1]) < 4:
                continue
            side = 3 * max(box[2] - box[0], box[3] - box[1])
            wx0, wy0 = max(0, (box[0] + box[2] - side) // 2), max(0, (box[1] + box[3] - side) // 2)
            window = np.ascontiguousarray(rgb[wy0 : min(h, wy0 + side), wx0 : min(w, wx0 + side)])
            local = (box[0] - wx0, box[1] - wy0, box[2] - wx0, box[3] - wy0)
            fruit = [s for s in segment_fruits(window) if _iou(s.bbox, local) >= 0.3] if min(window.shape[:2]) >= 32 else []
            if fruit:
                s = max(fruit, key=lambda s: int(s.mask.sum()))
                c = crop_for_model(window, s.bbox, margin, s.mask)
            else:
                c = crop_for_model(rgb, box, margin, box_ellipse_mask(box))
            crops.append(cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA if c.shape[0] > size else cv2.INTER_LINEAR))
            dates.append(frame["date"])
            segmented.append(bool(fruit))
    return crops, dates, segmented


def _cut(job: tuple[str, str, int, float]) -> list[np.ndarray]:
    path, kind, size, margin = job
    rgb = load_rgb(Path(path))
    crops = [fruit_crop(rgb, margin)] if kind == SINGLE else group_fruit_crops(rgb, margin)
    return [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA if c.shape[0] > size else cv2.INTER_LINEAR) for c in crops]


def collect_crops(data_root: Path, splits: dict[str, list[str]], margin: float, size: int, cache_dir: Path, workers: int = 2) -> CropTable:
    """The crop table (see the module doc), cached as a compressed .npz keyed by the files, the crop
    geometry and the code that cuts crops. Group photos of sessions outside train are never read."""
    root, ecopom = data_root / "fruitnet-apples", data_root / "ecopom-apple-size"
    single = fruitnet.build_manifest(root, splits, "single")
    train = set(splits["train"])
    groups = [
        p
        for folder in ("good", "bad", "mixed")
        if (root / "group" / folder).is_dir()
        for p in sorted((root / "group" / folder).iterdir())
        if p.suffix.lower() in fruitnet.IMAGE_SUFFIXES and fruitnet.session_of(p.name) in train
    ]
    has_orchard = (ecopom / "annotations.json").exists()
    key_text = "\n".join(
        [*(f"{it.path}\t{it.split}\t{it.sha256}" for it in single), *map(str, groups), f"orchard={has_orchard}|{size}|{margin}"]
    )
    # the key covers the code that cuts crops, this module's orchard cuts included
    code = measurement_code_hash() + hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    key = hashlib.sha256((key_text + code).encode()).hexdigest()[:16]
    cache = cache_dir / f"distill-crops-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        return CropTable(z["crops"], z["label"], z["split"], z["session"], z["source"])
    jobs = [(str(root / it.path), SINGLE, size, margin) for it in single] + [(str(p), GROUP, size, margin) for p in groups]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        cut = list(pool.map(_cut, jobs, chunksize=8))
    crops: list[np.ndarray] = []
    label, split, session, source = [], [], [], []
    for it, cs in zip(single, cut[: len(single)]):
        crops += cs
        label.append(int(it.label == "defective"))
        split.append(it.split)
        session.append(it.session)
        source.append(SINGLE)
    for p, cs in zip(groups, cut[len(single) :]):
        crops += cs
        n = len(cs)
        label += [-1] * n
        split += ["train"] * n
        session += [fruitnet.session_of(p.name)] * n
        source += [GROUP] * n
    if has_orchard:
        oc, dates, _segmented = orchard_crops(ecopom, margin, size)
        crops += oc
        label += [-1] * len(oc)
        split += ["train"] * len(oc)
        session += [f"ecopom-{d}" for d in dates]
        source += [ORCHARD] * len(oc)
    table = CropTable(
        np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8),
        np.array(label, dtype=int),
        np.array(split),
        np.array(session),
        np.array(source),
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(cache, crops=table.crops, label=table.label, split=table.split, session=table.session, source=table.source)
    return table


# ------------------------------------------------------------------ teacher

"""Candidate regions labelled fruit / not fruit: what the fruit check learns from.

The belt segmentation (grader.measure.segment_fruits) proposes every blob that stands out from its
background; on real photos many are not fruit (a dark wall, leaves, a rail, a piece of the table).
This module runs that same segmentation over real and synthetic photos and labels each proposal,
cut exactly as serving cuts a model crop (grader.measure.crop_for_model with the mask):

- one-fruit photos (FruitNet single apples, lemons, oranges): the largest proposal is the fruit;
  every other proposal, a piece of the fruit included, is not;
- empty belt frames (lemons/empty): every proposal is not fruit;
- orchard frames (ECOPOM): a window around each annotated apple, as a grower's app posts it;
  proposals overlapping the apple's box are fruit, proposals touching no annotated object are not;
- synthetic fruit (datasets.synthetic) are fruit; synthetic clutter (stripes, checks, text, noise,
  flat patches painted in a blob) is not.

Each region keeps the split of the photo it came from, by the same rules as the defect models'
data (FruitNet by capture session, citrus by near-duplicate group, orchard frames by date), so the
fruit check is chosen on val and measured on test photos it never saw.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np
from tqdm import tqdm

from grader.crop import crop_for_model
from grader.segment import SegmentationParams, segment_fruits

from . import citrus, fruitnet
from .synthetic import random_fruit_image


@dataclass(frozen=True)
class Region:
    source: str  # fruitnet | lemon | orange | ecopom | synthetic
    path: str  # the photo (relative to the data root), or a synthetic name
    split: str
    is_fruit: bool
    bbox: tuple[int, int, int, int]


def _iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _load(path: Path) -> np.ndarray | None:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _crop(rgb: np.ndarray, seg, size: int, margin: float) -> np.ndarray:
    c = crop_for_model(rgb, seg.bbox, margin, seg.mask)
    return cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA if c.shape[0] > size else cv2.INTER_LINEAR)


def one_fruit_regions(rgb: np.ndarray, params: SegmentationParams | None, empty: bool = False):
    """(segment, is_fruit) of a one-fruit photo (the largest proposal is the fruit) or of an empty frame."""
    segs = segment_fruits(rgb, params)
    if not segs:
        return []
    if empty:
        return [(s, False) for s in segs]
    largest = max(range(len(segs)), key=lambda i: int(segs[i].mask.sum()))
    return [(s, i == largest) for i, s in enumerate(segs)]


def orchard_windows(frame: dict, rgb: np.ndarray, params: SegmentationParams | None, scale: float = 3.0):
    """(window image, [(segment, is_fruit)]) for each annotated apple of an ECOPOM frame: a square
    window ``scale`` times the apple's box around it, as a grower's app posts one apple."""
    objects = [(o["kind"], tuple(int(v) for v in (*o["box"][0], *o["box"][1]))) for o in frame["objects"]]
    h, w = rgb.shape[:2]
    for kind, (x0, y0, x1, y1) in objects:
        if kind != "apple":
            continue
        side = int(max(x1 - x0, y1 - y0) * scale)
        cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
        wx0, wy0 = max(0, cx - side // 2), max(0, cy - side // 2)
        wx1, wy1 = min(w, wx0 + side), min(h, wy0 + side)
        window = np.ascontiguousarray(rgb[wy0:wy1, wx0:wx1])
        if min(window.shape[:2]) < 32:
            continue
        shifted = [(k, (a - wx0, b - wy0, c - wx0, d - wy0)) for k, (a, b, c, d) in objects]
        apple = (x0 - wx0, y0 - wy0, x1 - wx0, y1 - wy0)
        out = []
        for s in segment_fruits(window, params):
            if _iou(s.bbox, apple) >= 0.3:
                out.append((s, True))
            elif all(_iou(s.bbox, box) < 0.05 for _, box in shifted):
                out.append((s, False))
        yield window, out


def clutter_image(seed: int, size: int = 160) -> np.ndarray:
    """A synthetic non-fruit crop: a textured blob (stripes, checks, text, noise, a flat colour, a
    gradient) on the crop fill, as the segmentation would hand a piece of background to the model."""
    from grader.crop_fill import CROP_FILL_RGB

    rng = np.random.default_rng(seed)
    kind = int(rng.integers(0, 6))
    yy, xx = np.mgrid[0:size, 0:size]
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    if kind == 0:  # stripes
        period = rng.uniform(6, 40)
        angle = rng.uniform(0, np.pi)
        t = ((xx * np.cos(angle) + yy * np.sin(angle)) // period % 2)[..., None]
        img = np.where(t > 0, c1, c2)
    elif kind == 1:  # checks
        p = int(rng.integers(6, 40))
        t = (((xx // p) + (yy // p)) % 2)[..., None]
        img = np.where(t > 0, c1, c2)
    elif kind == 2:  # printed text
        img = np.empty((size, size, 3), np.int64)
        img[:] = c1
        img = img.astype(np.uint8)
        for line in range(int(rng.integers(3, 9))):
            txt = "".join(chr(int(rng.integers(65, 91))) for _ in range(int(rng.integers(4, 12))))
            cv2.putText(
                img,
                txt,
                (int(rng.integers(0, 40)), 20 + line * 18),
                cv2.FONT_HERSHEY_SIMPLEX,
                rng.uniform(0.4, 0.9),
                tuple(int(v) for v in c2),
                1 + int(rng.integers(0, 2)),
            )
    elif kind == 3:  # noise
        img = rng.integers(0, 256, (size, size, 3))
    elif kind == 4:  # flat colour
        img = np.broadcast_to(c1, (size, size, 3))
    else:  # gradient
        t = (xx / size)[..., None]
        img = c1 * (1 - t) + c2 * t
    img = np.clip(img, 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    if rng.random() < 0.5:
        cv2.ellipse(
            mask, (size // 2, size // 2), (int(rng.integers(30, 75)), int(rng.integers(30, 75))), float(rng.uniform(0, 180)), 0, 360, 1, -1
        )
    else:
        pts = rng.integers(10, size - 10, (int(rng.integers(3, 7)), 2)).astype(np.int32)
        cv2.fillConvexPoly(mask, cv2.convexHull(pts), 1)
    out = np.empty_like(img)
    out[:] = CROP_FILL_RGB
    out[mask > 0] = img[mask > 0]
    return out


def _split_of_hash(key: str, fractions=(0.6, 0.2, 0.2)) -> str:
    v = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "train" if v < fractions[0] else "val" if v < fractions[0] + fractions[1] else "test"


def build(
    data_root: Path,
    apple_splits: dict[str, list[str]],
    size: int = 160,
    margin: float = 0.08,
    params: SegmentationParams | None = None,
    work_dir: Path | None = None,
    n_synthetic: int = 400,
    limit: int | None = None,
    seed: int = 7,
) -> tuple[np.ndarray, np.ndarray, list[Region]]:
    """Every labelled region of the shared data under ``data_root`` and of the synthetic generators:
    (crops N×size×size×3 uint8, is_fruit N, regions). Sources absent under ``data_root`` are skipped.
    Cached in ``work_dir`` (keyed by the arguments and this module's source)."""
    key = hashlib.sha256(
        json.dumps(
            [
                str(data_root.resolve()),
                apple_splits,
                size,
                margin,
                repr(params),
                n_synthetic,
                limit,
                seed,
                Path(__file__).read_text(),
                Path(segment_fruits.__code__.co_filename).read_text(),
            ]
        ).encode()
    ).hexdigest()[:16]
    cache = None if work_dir is None else work_dir / f"regions-{key}.npz"
    if cache is not None and cache.exists():
        z = np.load(cache, allow_pickle=False)
        regions = [Region(r["source"], r["path"], r["split"], bool(r["is_fruit"]), tuple(r["bbox"])) for r in json.loads(str(z["regions"]))]
        return z["crops"], z["is_fruit"], regions
    crops: list[np.ndarray] = []
    regions: list[Region] = []

    def add(rgb, segs, source, path, split):
        for s, fruit in segs:
            crops.append(_crop(rgb, s, size, margin))
            regions.append(Region(source, path, split, fruit, tuple(int(v) for v in s.bbox)))

    jobs: list[tuple[str, Path, str, str, bool]] = []  # (source, file, relative path, split, empty)
    apples = data_root / "fruitnet-apples"
    if apples.exists():
        for it in fruitnet.build_manifest(apples, apple_splits, "single"):
            jobs.append(("fruitnet", apples / it.path, f"fruitnet-apples/{it.path}", it.split, False))
    for commodity in ("lemon", "orange"):
        folders = [data_root / src for (src, _f) in citrus.FOLDERS[commodity]]
        if not all(f.exists() for f in folders):
            continue
        for it in citrus.build_manifest(data_root, commodity, seed=seed, cache_dir=work_dir):
            jobs.append((commodity, data_root / it.path, it.path, it.split, it.label == "empty"))
    if limit:
        jobs = jobs[:: max(1, len(jobs) // limit)]
    for source, file, rel, split, empty in tqdm(jobs, desc="candidate regions", unit="photo"):
        rgb = _load(file)
        if rgb is not None:
            add(rgb, one_fruit_regions(rgb, params, empty), source, rel, split)

    ecopom = data_root / "ecopom-apple-size"
    if (ecopom / "annotations.json").exists():
        frames = json.loads((ecopom / "annotations.json").read_text())
        dates = sorted({f["date"] for f in frames})
        # the later dates are the orchard sizing's held-out ones: val and test here
        n = len(dates)
        split_of = {d: ("train" if i < n // 2 else "val" if i < (3 * n) // 4 else "test") for i, d in enumerate(dates)}
        for frame in tqdm(frames[:: max(1, len(frames) // limit)] if limit else frames, desc="orchard windows", unit="frame"):
            rgb = _load(ecopom / frame["image"])
            if rgb is None:
                continue
            for k, (window, segs) in enumerate(orchard_windows(frame, rgb, params)):
                add(window, segs, "ecopom", f"ecopom-apple-size/{frame['image']}#{k}", split_of[frame["date"]])

    for i in range(n_synthetic):
        split = _split_of_hash(f"synthetic-{i}")
        img, _bad = random_fruit_image(50_000 + i, size_px=size)
        segs = one_fruit_regions(img, params)
        add(img, [(s, f) for s, f in segs if f], "synthetic", f"synthetic/fruit/{i}", split)
        crops.append(clutter_image(60_000 + i, size))
        regions.append(Region("synthetic", f"synthetic/clutter/{i}", split, False, (0, 0, size, size)))

    arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    is_fruit = np.array([r.is_fruit for r in regions], bool)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, crops=arr, is_fruit=is_fruit, regions=json.dumps([r.__dict__ for r in regions]))
    return arr, is_fruit, regions


def counts(regions: Iterable[Region]) -> dict[str, dict[str, int]]:
    """{source/split: {fruit: n, not_fruit: n}}"""
    out: dict[str, dict[str, int]] = {}
    for r in regions:
        k = out.setdefault(f"{r.source}/{r.split}", {"fruit": 0, "not_fruit": 0})
        k["fruit" if r.is_fruit else "not_fruit"] += 1
    return out

"""Fruit crops for training, made by the same measurement stage the service runs, so the model
sees in training what it sees on the line."""

from __future__ import annotations

import ast
import hashlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
from tqdm import tqdm

from grader import measure as measure_module
from grader.crop import crop_for_model
from grader.segment import SegmentationParams, segment_fruits


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def fruit_crop(
    image_rgb: np.ndarray, margin_frac: float, min_area_frac: float = 0.02, params: SegmentationParams | None = None
) -> np.ndarray:
    """The largest segmented fruit's square crop, background painted out; the centred square when
    none is found (a photo whose background defeats segmentation still trains on its middle).
    ``params``: the fruit finder's settings (a commodity's :meth:`~grader.commodities.Commodity.segmentation`);
    None: the defaults."""
    h, w = image_rgb.shape[:2]
    segs = [s for s in segment_fruits(image_rgb, params) if s.mask.sum() >= min_area_frac * h * w]
    if segs:
        seg = max(segs, key=lambda s: s.mask.sum())
        return crop_for_model(image_rgb, seg.bbox, margin_frac, seg.mask)
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return image_rgb[y0 : y0 + side, x0 : x0 + side]


def is_whole_fruit(image_rgb: np.ndarray, seg) -> bool:
    """A segment of a group photo that is one whole apple: clear of the frame edge, at least 1 % of
    the frame, convex and roundish (solidity >= 0.9, caliper ratio >= 0.7, roundness >= 0.75: two
    touching apples, a cut half, a cloth or a table edge fail), and fruit-coloured (median hue red
    to green, not the teal table or a black strip)."""
    h, w = image_rgb.shape[:2]
    area = float(seg.mask.sum())
    if seg.cut_off or area < 0.01 * h * w:
        return False
    major, minor, perimeter = measure_module.caliper_widths_px(seg.contour)
    hull_area = cv2.contourArea(cv2.convexHull(seg.contour.reshape(-1, 1, 2)))
    if area / max(hull_area, 1.0) < 0.9 or minor / max(major, 1.0) < 0.7 or 4 * np.pi * area / perimeter**2 < 0.75:
        return False
    x0, y0, x1, y1 = seg.bbox
    hsv = cv2.cvtColor(np.ascontiguousarray(image_rgb[y0:y1, x0:x1]), cv2.COLOR_RGB2HSV_FULL)[seg.mask]
    hue_deg = float(np.median(hsv[:, 0])) * 360.0 / 256.0
    return (hue_deg <= 110 or hue_deg >= 300) and float(np.median(hsv[:, 1])) >= 50


def group_fruit_crops(image_rgb: np.ndarray, margin_frac: float) -> list[np.ndarray]:
    """Every whole apple of a photo with several (:func:`is_whole_fruit`), as model crops."""
    return [crop_for_model(image_rgb, s.bbox, margin_frac, s.mask) for s in segment_fruits(image_rgb) if is_whole_fruit(image_rgb, s)]


def _group(args: tuple[str, int, float]) -> list[np.ndarray]:
    path, size, margin = args
    return [cv2.resize(c, (size, size), interpolation=cv2.INTER_AREA) for c in group_fruit_crops(load_rgb(Path(path)), margin)]


#: the grader modules a crop is made by: the fruit finder, the measurement and the model crop
CROP_MODULES = ("segment.py", "measure.py", "crop.py")


def measurement_sources(module_file: Path | None = None) -> list[Path]:
    """The source files a crop depends on: the grader modules that cut it (:data:`CROP_MODULES`, beside
    ``module_file``, default grader/measure.py) and every grader module they import, followed
    transitively (relative and ``grader.`` imports)."""
    start = Path(module_file or measure_module.__file__).resolve()
    package = start.parent
    seen: list[Path] = []
    todo = [package / m for m in CROP_MODULES]
    while todo:
        f = todo.pop()
        if f in seen or not f.exists():
            continue
        seen.append(f)
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1 and node.module:
                    todo.append(package / (node.module.replace(".", "/") + ".py"))
                elif node.level == 1:
                    todo += [package / f"{a.name}.py" for a in node.names]
                elif node.level == 0 and node.module and node.module.startswith(package.name + "."):
                    todo.append(package / (node.module.split(".", 1)[1].replace(".", "/") + ".py"))
            elif isinstance(node, ast.Import):
                todo += [
                    package / (a.name.split(".", 1)[1].replace(".", "/") + ".py")
                    for a in node.names
                    if a.name.startswith(package.name + ".")
                ]
    return sorted(seen)


def measurement_code_hash(module_file: Path | None = None) -> str:
    """sha256 over :func:`measurement_sources` and this file: any change to how a crop is cut
    changes every crop cache key, so nothing trains or evaluates on stale crops."""
    h = hashlib.sha256()
    for f in [*measurement_sources(module_file), Path(__file__).resolve()]:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def group_crop_cache(
    paths: Sequence[Path], size: int, margin_frac: float, cache_dir: Path, workers: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """(N, size, size, 3) uint8 crops of every whole apple in the photos, and each crop's photo index."""
    code = measurement_code_hash()
    key = hashlib.sha256(("\n".join(map(str, paths)) + f"|group|{size}|{margin_frac}|{code}").encode()).hexdigest()[:16]
    cache = cache_dir / f"group-crops-{key}.npz"
    if cache.exists():
        z = np.load(cache)
        return z["crops"], z["photo"]
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), size, margin_frac) for p in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        per_photo = list(tqdm(pool.map(_group, jobs, chunksize=8), total=len(jobs), desc="group fruit crops", unit="img"))
    crops = [c for cs in per_photo for c in cs]
    photo = np.array([i for i, cs in enumerate(per_photo) for _ in cs], dtype=int)
    arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    np.savez(cache, crops=arr, photo=photo)
    return arr, photo


def _one(args: tuple[str, int, float, SegmentationParams | None]) -> np.ndarray:
    path, size, margin, params = args
    crop = fruit_crop(load_rgb(Path(path)), margin, params=params)
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_AREA)


def crop_cache(
    paths: Sequence[Path], size: int, margin_frac: float, cache_dir: Path, workers: int = 2, params: SegmentationParams | None = None
) -> np.ndarray:
    """(N, size, size, 3) uint8 crops, cached on disk by the list of files, size, margin and the
    fruit finder's settings (``params``, None: the defaults)."""
    # the key covers the files, the crop geometry, the segmentation settings and the measurement
    # code itself, so a change to segmentation never trains or evaluates on stale crops
    code = measurement_code_hash()
    seg = "" if params is None or params == SegmentationParams() else f"|{params!r}"
    key = hashlib.sha256(("\n".join(map(str, paths)) + f"|{size}|{margin_frac}|{code}{seg}").encode()).hexdigest()[:16]
    cache = cache_dir / f"crops-{key}.npy"
    if cache.exists():
        return np.load(cache)
    cache_dir.mkdir(parents=True, exist_ok=True)
    jobs = [(str(p), size, margin_frac, params) for p in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        crops = list(tqdm(pool.map(_one, jobs, chunksize=16), total=len(jobs), desc="fruit crops", unit="img"))
    arr = np.stack(crops) if crops else np.zeros((0, size, size, 3), np.uint8)
    np.save(cache, arr)
    return arr

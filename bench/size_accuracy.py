"""Caliper-vs-camera size accuracy: synthetic fruit, then real apples on the tree (ecopom).

    .venv/bin/python bench/size_accuracy.py [--data DIR] [--plot docs/img/size_scatter.png] \
        [--overlay docs/img/orchard_overlay.png]

Table 1 renders seeded synthetic fruit (datasets/synthetic.py) of known diameter and measures them
with grader.measure.measure_image. Table 2 sizes every calipered apple of the ecopom orchard
frames (../shared/data/ecopom-apple-size, never copied into the repo) two ways, in the same run:

* baseline: the annotated box's mean side × (65.46 mm / median mean side of the frame's
  tennis-ball boxes);
* ours (default ``--method grabcut``): grader.orchard.measure_by_probability, a colour model
  trained on each fruit's own surroundings (GrabCut in Lab, sure-fruit disc at the box centre,
  sure-background annulus well outside the box), a coarse RANSAC circle through the points where
  rays from the centre leave the fruit region, then the refined circle through the strongest
  colour edge of the image near it on each ray, corrected for perspective (``--focal-px``). The
  box places the seed disc and the background annulus and bounds the radius search (0.2-0.85 x
  its side); the diameter comes from the pixels. ``--method watershed``: the previous
  grader.orchard_watershed.measure_in_window. Either way the scale comes from the tennis balls measured by
  the same function.

Perspective: a sphere off the optical axis images as an ellipse stretched radially by
sqrt(1 + rho^2 / f^2) (rho: distance from the image centre), so off-centre fruit and balls look
larger than central ones at the same depth. Ours un-stretches the outline before the final circle
fit. The focal length f is not fitted to the calipers: the frames are shot 1.5 m from the row
(file names ``1_5m_...``), so f = 1500 mm x (median diameter in px of the tennis balls of the tune
frames, measured without the correction) / 65.46 mm (``focal_from_references``). ``--focal-px F``
uses F instead, ``--focal-px 0`` turns the correction off. For context only (not the target's
baseline) the run also prints the box baseline with the same correction applied to the boxes.

Frames without a tennis ball are skipped (each date/plant has only one frame, so there is no
same-date scale to borrow). The method's knobs were chosen on the first half of the dates
("tune"); the second half ("held-out") was not looked at while choosing them. Both are reported.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datasets.synthetic import FruitSpec, make_frame  # noqa: E402
from grader.calibration import scale_from_references  # noqa: E402
from grader.measure import measure_image  # noqa: E402
from grader.orchard import (  # noqa: E402
    TENNIS_BALL_DIAMETER_MM,
    TREE_PARAMS,
    WindowMeasurement,
    box_scale_mm_per_px,
    measure_by_probability,
)
from grader.orchard_perspective import perspective_stretch  # noqa: E402
from grader.orchard_watershed import measure_in_window  # noqa: E402

#: distance from the camera to the tree row in the ecopom frames (file names "1_5m_..."), mm
CAMERA_DISTANCE_MM = 1500.0
METHODS = ("grabcut", "watershed")


def measure_fruit(image: np.ndarray, box, frame_boxes, method: str = "grabcut", focal_px: float | None = None) -> WindowMeasurement:
    """One fruit (or ball) by the chosen method; ``frame_boxes`` are all boxes of the frame (other
    fruit are kept out of the background samples); ``focal_px`` None or 0: no perspective correction."""
    if method == "watershed":
        return measure_in_window(image, box)
    return measure_by_probability(image, box, frame_boxes, TREE_PARAMS, focal_px=focal_px or None)


DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ecopom-apple-size"


# ----------------------------------------------------------------------------------------------
# Table 1: synthetic
# ----------------------------------------------------------------------------------------------

SHAPES = [(1.0, 0.0), (0.9, 30.0), (0.8, 60.0)]  # (aspect, angle_deg)
COLOURS = ["red", "green", "yellow"]


def synthetic_table() -> list[tuple[str, int, float, float, float]]:
    rows = []
    all_err: list[float] = []
    for mm_per_px in (0.1, 0.2, 0.3, 0.4, 0.5):
        errs = []
        k = 0
        for ai, (aspect, angle) in enumerate(SHAPES):
            for ci, colour in enumerate(COLOURS):
                for blem in ((), (1.2, 0.4)):
                    k += 1
                    # big images at 0.1 mm/px are slow to render: a third of the cases there
                    if mm_per_px == 0.1 and (ai + ci + len(blem)) % 3:
                        continue
                    diameter = 55.0 + 7.0 * ((k * 7) % 5) if mm_per_px > 0.1 else 55.0
                    side = int(math.ceil(diameter / mm_per_px * 1.6)) + 16
                    img, truth = make_frame(
                        [FruitSpec(diameter_mm=diameter, colour=colour, aspect=aspect, angle_deg=angle, blemishes_cm2=blem)],
                        mm_per_px=mm_per_px,
                        size_px=(side, side),
                        background="belt" if k % 2 else "cup",
                        seed=k + int(mm_per_px * 100),
                    )
                    ms = measure_image(img, mm_per_px)
                    if len(ms) != 1 or ms[0].diameter_mm is None:
                        errs.append(float("nan"))
                        continue
                    errs.append(ms[0].diameter_mm - truth.fruits[0].diameter_mm)
        e = np.array(errs)
        all_err.extend(errs)
        rows.append((f"{mm_per_px:.1f}", len(e), _mae(e), _rmse(e), float(np.nanmax(np.abs(e)))))
    e = np.array(all_err)
    rows.append(("all", len(e), _mae(e), _rmse(e), float(np.nanmax(np.abs(e)))))
    return rows


def _mae(e: np.ndarray) -> float:
    return float(np.nanmean(np.abs(e))) if len(e) else float("nan")


def _rmse(e: np.ndarray) -> float:
    return float(np.sqrt(np.nanmean(e**2))) if len(e) else float("nan")


# ----------------------------------------------------------------------------------------------
# Table 2: ecopom orchard frames
# ----------------------------------------------------------------------------------------------


@dataclass
class AppleResult:
    frame: str
    part: str  # "tune" or "held-out"
    caliper_mm: float
    baseline_mm: float
    ours_mm: float | None
    reason: str
    measurement: WindowMeasurement
    box: tuple[int, int, int, int]
    baseline_persp_mm: float | None = None  # context only: the baseline with ours' perspective correction


def _box(obj: dict) -> tuple[int, int, int, int]:
    (x0, y0), (x1, y1) = obj["box"]
    return int(x0), int(y0), int(x1), int(y1)


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise FileNotFoundError(path)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def tune_dates(frames: list[dict]) -> set[str]:
    """The first half of the dates (sorted): the only frames looked at when choosing the knobs."""
    dates = sorted({f["date"] for f in frames})
    return set(dates[: len(dates) // 2])


def box_side_unstretched_px(box, focal_px: float, principal_xy: tuple[float, float]) -> float:
    """Context only, not the baseline: a box's mean side with the perspective stretch of
    grader.orchard_perspective.perspective_stretch taken out. The box of an ellipse stretched by s along the unit
    radial direction (c, n) from a circle of diameter d has sides w = d sqrt(c^2 s^2 + n^2) and
    h = d sqrt(n^2 s^2 + c^2); the mean of the two estimates of d is returned."""
    x0, y0, x1, y1 = box
    (c, n), s = perspective_stretch(((x0 + x1) / 2, (y0 + y1) / 2), focal_px, principal_xy)
    return ((x1 - x0) / math.sqrt(c * c * s * s + n * n) + (y1 - y0) / math.sqrt(n * n * s * s + c * c)) / 2


def evaluate_ecopom(
    data: Path, frames: list[dict] | None = None, method: str = "grabcut", focal_px: float | None = None
) -> tuple[list[AppleResult], list[str]]:
    """Size every calipered apple; returns the results and the names of skipped frames."""
    annotations = json.loads((data / "annotations.json").read_text())
    tune = tune_dates(annotations)
    results: list[AppleResult] = []
    skipped: list[str] = []
    for frame in frames if frames is not None else annotations:
        balls = [o for o in frame["objects"] if o["kind"] == "tennis_ball"]
        apples = [o for o in frame["objects"] if o["kind"] == "apple" and o.get("caliper_diameter_mm") is not None]
        if not apples:
            continue
        if not balls:
            skipped.append(frame["image"])
            continue
        image = load_rgb(data / frame["image"])
        frame_boxes = [_box(o) for o in frame["objects"]]
        base_scale = box_scale_mm_per_px([_box(b) for b in balls])
        our_scale = scale_from_references(
            [measure_fruit(image, _box(b), frame_boxes, method, focal_px).diameter_px for b in balls], TENNIS_BALL_DIAMETER_MM
        )
        part = "tune" if frame["date"] in tune else "held-out"
        principal = ((image.shape[1] - 1) / 2, (image.shape[0] - 1) / 2)
        persp_scale = None
        if focal_px:
            persp_scale = TENNIS_BALL_DIAMETER_MM / float(np.median([box_side_unstretched_px(_box(b), focal_px, principal) for b in balls]))
        for a in apples:
            box = _box(a)
            side = ((box[2] - box[0]) + (box[3] - box[1])) / 2
            m = measure_fruit(image, box, frame_boxes, method, focal_px)
            ours = None
            reason = m.reason
            if our_scale is None:
                reason = "no_reference_measured"
            elif m.diameter_px is not None:
                ours = m.diameter_px * our_scale
            persp = box_side_unstretched_px(box, focal_px, principal) * persp_scale if persp_scale else None
            results.append(
                AppleResult(frame["image"], part, float(a["caliper_diameter_mm"]), side * base_scale, ours, reason, m, box, persp)
            )
    return results, skipped


def focal_from_references(data: Path, method: str = "grabcut") -> tuple[float, float, int]:
    """Focal length (px) of the ecopom camera, from the tune frames only: the camera stands
    ``CAMERA_DISTANCE_MM`` from the row, so f = distance x (median tennis-ball diameter in px,
    measured without perspective correction) / 65.46 mm. Returns (f, median diameter px, balls)."""
    annotations = json.loads((data / "annotations.json").read_text())
    tune = tune_dates(annotations)
    diameters: list[float] = []
    for frame in annotations:
        balls = [o for o in frame["objects"] if o["kind"] == "tennis_ball"]
        if frame["date"] not in tune or not balls:
            continue
        image = load_rgb(data / frame["image"])
        frame_boxes = [_box(o) for o in frame["objects"]]
        for b in balls:
            d = measure_fruit(image, _box(b), frame_boxes, method, None).diameter_px
            if d is not None:
                diameters.append(d)
    median_px = float(np.median(diameters))
    return CAMERA_DISTANCE_MM * median_px / TENNIS_BALL_DIAMETER_MM, median_px, len(diameters)


def ecopom_rows(results: list[AppleResult]) -> list[tuple]:
    rows = []
    for part in ("tune", "held-out", "all"):
        rs = [r for r in results if part == "all" or r.part == part]
        if not rs:
            continue
        base = np.array([r.baseline_mm - r.caliper_mm for r in rs])
        sized = [r for r in rs if r.ours_mm is not None]
        ours = np.array([r.ours_mm - r.caliper_mm for r in sized]) if sized else np.array([])
        base_same = np.array([r.baseline_mm - r.caliper_mm for r in sized]) if sized else np.array([])
        rows.append(
            (
                part,
                len(rs),
                _mae(base),
                _rmse(base),
                len(sized) / len(rs),
                _mae(ours),
                _rmse(ours),
                float(np.mean(ours)) if len(ours) else float("nan"),
                _mae(base_same),
                _mae(ours) / _mae(base) if len(ours) else float("nan"),
            )
        )
    return rows


# ----------------------------------------------------------------------------------------------
# Pictures (OpenCV only)
# ----------------------------------------------------------------------------------------------


def draw_scatter(results: list[AppleResult], path: Path, mae_base: float, mae_ours: float, sized: float) -> None:
    size, m = 640, 70
    lo, hi = 30.0, 100.0
    img = np.full((size, size, 3), 255, np.uint8)

    def xy(cal: float, cam: float) -> tuple[int, int]:
        x = m + (cal - lo) / (hi - lo) * (size - 1.5 * m)
        y = size - m - (cam - lo) / (hi - lo) * (size - 1.5 * m)
        return int(round(x)), int(round(y))

    for v in range(30, 101, 10):
        cv2.line(img, xy(v, lo), xy(v, hi), (230, 230, 230), 1)
        cv2.line(img, xy(lo, v), xy(hi, v), (230, 230, 230), 1)
        cv2.putText(img, str(v), (xy(v, lo)[0] - 10, size - m + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(img, str(v), (m - 35, xy(lo, v)[1] + 5), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, xy(lo, hi), xy(hi, lo), (0, 0, 0), 1)
    cv2.line(img, xy(lo, lo), xy(hi, hi), (0, 0, 0), 1, cv2.LINE_AA)
    orange, blue = (0, 140, 255), (200, 90, 20)  # BGR
    for r in results:
        cv2.circle(img, xy(r.caliper_mm, r.baseline_mm), 3, orange, 1, cv2.LINE_AA)
    for r in results:
        if r.ours_mm is not None:
            cv2.circle(img, xy(r.caliper_mm, min(max(r.ours_mm, lo - 5), hi + 5)), 3, blue, -1, cv2.LINE_AA)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, "caliper diameter (mm)", (size // 2 - 90, size - 22), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    label = np.full((30, 260, 3), 255, np.uint8)
    cv2.putText(label, "camera diameter (mm)", (5, 20), font, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
    rot = cv2.rotate(label, cv2.ROTATE_90_COUNTERCLOCKWISE)
    img[size // 2 - 130 : size // 2 + 130, 2:32] = rot
    cv2.putText(img, "ecopom apples on the tree: camera vs caliper", (m, 25), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    lx, ly = m + 10, m - 5 + 20
    cv2.rectangle(img, (lx - 5, ly - 15), (lx + 330, ly + 45), (255, 255, 255), -1)
    cv2.rectangle(img, (lx - 5, ly - 15), (lx + 330, ly + 45), (120, 120, 120), 1)
    cv2.circle(img, (lx + 5, ly), 4, blue, -1, cv2.LINE_AA)
    cv2.putText(
        img, f"ours (segmentation): MAE {mae_ours:.2f} mm, {sized:.0%} sized", (lx + 15, ly + 5), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA
    )
    cv2.circle(img, (lx + 5, ly + 22), 4, orange, 1, cv2.LINE_AA)
    cv2.putText(img, f"baseline (box side): MAE {mae_base:.2f} mm", (lx + 15, ly + 27), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "line: y = x", (lx + 15, ly + 42), font, 0.4, (80, 80, 80), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)


def draw_overlay(data: Path, results: list[AppleResult], path: Path) -> str:
    """One frame (the one with the most apples sized), cropped around its apples, with our circles."""
    by_frame: dict[str, list[AppleResult]] = {}
    for r in results:
        by_frame.setdefault(r.frame, []).append(r)
    frame = max(sorted(by_frame), key=lambda f: sum(r.ours_mm is not None for r in by_frame[f]))
    rs = by_frame[frame]
    bgr = cv2.cvtColor(load_rgb(data / frame), cv2.COLOR_RGB2BGR)
    # crop to the densest cluster: the 520 x 340 px window (centred on one of the apples) that
    # holds the most apple boxes whole
    w, h = 520, 340

    def origin(cx: float, cy: float) -> tuple[int, int]:
        return int(min(max(cx - w / 2, 0), bgr.shape[1] - w)), int(min(max(cy - h / 2, 0), bgr.shape[0] - h))

    def inside(o: tuple[int, int]) -> int:
        return sum(r.box[0] >= o[0] and r.box[2] <= o[0] + w and r.box[1] >= o[1] + 20 and r.box[3] <= o[1] + h for r in rs)

    x0, y0 = max((origin((r.box[0] + r.box[2]) / 2, (r.box[1] + r.box[3]) / 2) for r in rs), key=inside)
    scale = 1.3
    out = cv2.resize(bgr[y0 : y0 + h, x0 : x0 + w], None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)

    def p(x: float, y: float) -> tuple[int, int]:
        return int(round((x - x0) * scale)), int(round((y - y0) * scale))

    font = cv2.FONT_HERSHEY_SIMPLEX
    for r in rs:
        m = r.measurement
        if m.contour_px is not None and r.ours_mm is not None:
            pts = np.array([p(x, y) for x, y in m.contour_px], np.int32).reshape(-1, 1, 2)
            cv2.polylines(out, [pts], True, (255, 0, 255), 1, cv2.LINE_AA)
        colour = (0, 255, 0) if r.ours_mm is not None else (0, 0, 255)
        if m.circle is not None:
            cv2.circle(out, p(m.circle.cx_px, m.circle.cy_px), int(round(m.circle.radius_px * scale)), colour, 1, cv2.LINE_AA)
        if m.edge_px is not None and r.ours_mm is not None:  # the edge points the circle was fitted to
            for x, y in m.edge_px:
                cv2.circle(out, p(x, y), 1, (0, 255, 255), -1, cv2.LINE_AA)
        bx, by = p(r.box[0], r.box[1] - 4)
        if by < 40:  # no room above the fruit: label it below
            bx, by = p(r.box[0], r.box[3] + 14)
        text = f"{r.ours_mm:.1f} ({r.caliper_mm:.1f})" if r.ours_mm is not None else f"{r.reason} ({r.caliper_mm:.1f})"
        cv2.putText(out, text, (bx, by), font, 0.5, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(out, text, (bx, by), font, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    legend = f"{Path(frame).stem}: ours (caliper) mm; green sized, red declined, magenta region, yellow edges"
    cv2.rectangle(out, (0, 0), (out.shape[1], 26), (0, 0, 0), -1)
    cv2.putText(out, legend, (6, 18), font, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), out, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    return frame


# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ecopom-apple-size folder")
    ap.add_argument("--plot", type=Path, help="write a camera-vs-caliper scatter plot (PNG)")
    ap.add_argument("--overlay", type=Path, help="write one orchard frame with our circles (PNG)")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--method", choices=METHODS, default="grabcut", help="our on-tree sizing method")
    ap.add_argument(
        "--focal-px",
        type=float,
        default=None,
        help="camera focal length in px for the perspective correction (default: from the tune frames'"
        " tennis balls and the 1.5 m camera distance; 0 = off)",
    )
    args = ap.parse_args(argv)

    if not args.skip_synthetic:
        t = time.perf_counter()
        print("Table 1 - synthetic fruit, grader.measure.measure_image vs drawn diameter (mm)")
        print("  shapes: aspect 1.0/0.9/0.8 at 0/30/60 deg; colours red/green/yellow; with and without blemishes")
        print(f"  {'mm_per_px':>9} {'n':>4} {'MAE':>6} {'RMSE':>6} {'max':>6}")
        for name, n, mae, rmse, mx in synthetic_table():
            print(f"  {name:>9} {n:>4} {mae:6.3f} {rmse:6.3f} {mx:6.3f}")
        print(f"  ({time.perf_counter() - t:.0f} s)\n")

    print("Table 2 - ecopom Fuji apples on the tree vs caliper (mm)")
    if not (args.data / "annotations.json").is_file():
        print(f"  skipped: no ecopom data at {args.data}")
        return 0
    t = time.perf_counter()
    focal_note = ""
    focal_px = args.focal_px
    if focal_px is None and args.method == "grabcut":
        focal_px, ball_px, n_balls = focal_from_references(args.data, args.method)
        focal_note = (
            f"  focal length: {CAMERA_DISTANCE_MM:g} mm x {ball_px:.2f} px (median of {n_balls} tune-frame tennis"
            f" balls, uncorrected) / {TENNIS_BALL_DIAMETER_MM} mm = {focal_px:.0f} px"
        )
    results, skipped = evaluate_ecopom(args.data, method=args.method, focal_px=focal_px or None)
    dates = sorted(tune_dates(json.loads((args.data / "annotations.json").read_text())))
    p = TREE_PARAMS
    print(
        f"  ours: {args.method}"
        + (
            f" (GrabCut in Lab; sure-fruit disc {p.pos_frac} x box side, background annulus"
            f" {p.neg_inner}-{p.neg_outer} x side; coarse RANSAC circle on {p.n_angles} rays,"
            f" tolerance {p.inlier_tol_px} px; refined on the strongest colour edge within"
            f" +-{p.refine_band} x r, tolerance {p.refine_tol_px} px; perspective: " + (f"f = {focal_px:.0f} px)" if focal_px else "off)")
            if args.method == "grabcut"
            else ""
        )
    )
    if focal_note:
        print(focal_note)
    print(f"  scale: {TENNIS_BALL_DIAMETER_MM} mm tennis balls; baseline from their boxes, ours from our segmentation of them")
    print(f"  skipped {len(skipped)} frames without a tennis ball: {', '.join(Path(s).stem for s in skipped)}")
    print(f"  tune = dates {dates[0]}..{dates[-1]} (knobs chosen on these); held-out = later dates")
    print(
        f"  {'part':>8} {'apples':>6} | {'base MAE':>8} {'RMSE':>6} | {'sized':>6} {'ours MAE':>8} {'RMSE':>6} {'bias':>6}"
        f" | {'base MAE on sized':>17} {'ours/base':>9}"
    )
    rows = ecopom_rows(results)
    for part, n, bmae, brmse, share, omae, ormse, obias, bsame, ratio in rows:
        print(
            f"  {part:>8} {n:>6} | {bmae:8.2f} {brmse:6.2f} | {share:6.1%} {omae:8.2f} {ormse:6.2f} {obias:+6.2f}"
            f" | {bsame:17.2f} {ratio:9.2f}"
        )
    reasons: dict[str, int] = {}
    for r in results:
        if r.ours_mm is None:
            reasons[r.reason] = reasons.get(r.reason, 0) + 1
    print(f"  declined: {', '.join(f'{k} {v}' for k, v in sorted(reasons.items())) or 'none'}")
    if focal_px:
        maes = []
        for part in ("tune", "held-out", "all"):
            e = np.array(
                [
                    r.baseline_persp_mm - r.caliper_mm
                    for r in results
                    if r.baseline_persp_mm is not None and (part == "all" or r.part == part)
                ]
            )
            maes.append(f"{part} {_mae(e):.2f}")
        print(f"  context, not the target: box baseline with the same perspective correction, MAE {', '.join(maes)} mm")
    all_row = rows[-1]
    target = 1.1 * all_row[2]
    met = all_row[5] <= target and all_row[4] >= 0.9
    print(f"  target (all): ours MAE <= 1.1 x baseline = {target:.2f} mm with >= 90 % sized: {'MET' if met else 'NOT MET'}")
    print(f"  ({time.perf_counter() - t:.0f} s)")
    if args.plot:
        draw_scatter(results, args.plot, all_row[2], all_row[5], all_row[4])
        print(f"  wrote {args.plot}")
    if args.overlay:
        frame = draw_overlay(args.data, results, args.overlay)
        print(f"  wrote {args.overlay} ({Path(frame).name})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

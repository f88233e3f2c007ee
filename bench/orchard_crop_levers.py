"""Orchard crops (one apple, 2.5x its box, the frame's scale given): what moves their sizes, measured
in-process on the same calipered apples as ``bench/orchard_http.py --ways crops``.

    .venv/bin/python bench/orchard_crop_levers.py [--dates tune|held-out]     # about 4 min a split
    .venv/bin/python bench/orchard_crop_levers.py --box-ratios [--dates tune]  # about 1 min

``--box-ratios`` prints instead how the method's diameters compare with the annotators' box sides on
whole frames (every tennis ball and apple sized from its annotated box), at the radius bias in use
and 1 px more: a scale read from hand boxes is consistent with the method only where they agree.
Both modes size as the service did before it added a whole pixel to every size (``EDGE_PX`` 0).

Levers, each against the served path (the detector's boxes on the crop, else the crop's centre):

* ``client box``: the annotated box posted with the crop (what a better detector would reach);
* ``mirrored for detection``: the crop mirrored outwards (64 px) before the detector runs, so a fruit
  near the crop's middle is seen with surroundings as in a whole frame;
* ``mirrored for sizing``: the crop mirrored outwards by a box side before sizing, so the colour
  model's background annulus is not clipped by the crop;
* ``radius +0.5 px`` / ``+1.0 px``: ProbParams.radius_bias_px raised (crops read smaller than frames);
* ``centre cross-check``: declined when the detector-seeded size and the centre-seeded one differ by
  more than 10 %.

The tune dates are also the orchard detector's training frames: a lever that wins there only may
be the detector remembering its frames. Read the held-out split before shipping one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from grader.orchard import TENNIS_BALL_DIAMETER_MM, box_scale_mm_per_px  # noqa: E402
from grader.orchard_scene import FRUIT, TREE_PARAMS, SceneObject, size_centre_fruit, size_scene  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "ecopom-apple-size"
DETECT_PAD_PX = 64


def nearest_size(image, objects, scale, params, offset=0.0):
    """mm of the fruit nearest the crop's centre sized from ``objects`` (None: declined or none)."""
    h, w = image.shape[:2]
    fruit = [o for o in objects if o.kind == FRUIT]
    if not fruit:
        return None
    scene = size_scene(image, objects, scale, params=params)
    s = min(
        scene.fruits,
        key=lambda s: np.hypot((s.obj.box_xyxy[0] + s.obj.box_xyxy[2]) / 2 - w / 2, (s.obj.box_xyxy[1] + s.obj.box_xyxy[3]) / 2 - h / 2),
    )
    return s.diameter_mm


def detected(det, image, pad: int = 0) -> list[SceneObject]:
    h, w = image.shape[:2]
    src = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101) if pad else image
    out = []
    for d in det.detect(src):
        x0, y0, x1, y1 = (v - pad for v in d.box_xyxy)
        if 0 <= (x0 + x1) / 2 < w and 0 <= (y0 + y1) / 2 < h:
            out.append(SceneObject(d.kind, (max(0.0, x0), max(0.0, y0), min(float(w), x1), min(float(h), y1)), "detector", float(d.score)))
    return out


def box_ratios(data: Path, dates: str) -> dict:
    """Median method diameter over annotated box side, for balls and apples, at +0 and +1 px radius."""
    from size_accuracy import tune_dates

    from grader.orchard_scene import REFERENCE

    ann = json.loads((data / "annotations.json").read_text())
    tune = tune_dates(ann)
    ratios: dict[str, dict[str, list[float]]] = {b: {"tennis_ball": [], "apple": []} for b in ("+0 px", "+1 px")}
    for fr in ann:
        if (fr["date"] in tune) != (dates == "tune") or not any(o["kind"] == "tennis_ball" for o in fr["objects"]):
            continue
        img = cv2.cvtColor(cv2.imread(str(data / fr["image"])), cv2.COLOR_BGR2RGB)
        objs = [
            SceneObject(FRUIT if o["kind"] == "apple" else REFERENCE, (*map(float, o["box"][0]), *map(float, o["box"][1])), "client")
            for o in fr["objects"]
        ]
        for name, extra in (("+0 px", 0.0), ("+1 px", 1.0)):
            params = dataclasses.replace(TREE_PARAMS, radius_bias_px=TREE_PARAMS.radius_bias_px + extra)
            scene = size_scene(img, objs, 1.0, params=params)
            for s in [*scene.references, *scene.fruits]:
                if s.diameter_px is not None:
                    b = s.obj.box_xyxy
                    ratios[name][s.obj.kind].append(s.diameter_px / (((b[2] - b[0]) + (b[3] - b[1])) / 2))
        print(fr["image"], flush=True)
    return {
        name: {kind: {"n": len(v), "median_diameter_over_box_side": round(float(np.median(v)), 4)} for kind, v in by.items()}
        for name, by in ratios.items()
    }


def run(data: Path, dates: str) -> dict:
    from size_accuracy import tune_dates

    from service.orchard import load_detector

    det = load_detector(REPO / "models" / "detectors" / "orchard-detector")
    ann = json.loads((data / "annotations.json").read_text())
    tune = tune_dates(ann)
    levers = [
        "served",
        "client box",
        "mirrored for detection",
        "mirrored for sizing",
        "radius +0.5 px",
        "radius +1.0 px",
        "centre cross-check",
    ]
    err: dict[str, list] = {k: [] for k in levers}
    base: list[float] = []
    for fr in ann:
        if (fr["date"] in tune) != (dates == "tune"):
            continue
        balls = [[*o["box"][0], *o["box"][1]] for o in fr["objects"] if o["kind"] == "tennis_ball"]
        apples = [o for o in fr["objects"] if o["kind"] == "apple" and o.get("caliper_diameter_mm")]
        if not balls or not apples:
            continue
        img = cv2.cvtColor(cv2.imread(str(data / fr["image"])), cv2.COLOR_BGR2RGB)
        H, W = img.shape[:2]
        scale = box_scale_mm_per_px(balls, TENNIS_BALL_DIAMETER_MM)
        for a in apples:
            (x0, y0), (x1, y1) = a["box"]
            side = ((x1 - x0) + (y1 - y0)) / 2
            cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, side * 1.25
            X0, Y0 = int(max(0, cx - half)), int(max(0, cy - half))
            crop = np.ascontiguousarray(img[Y0 : int(min(H, cy + half)), X0 : int(min(W, cx + half))])
            cal = float(a["caliper_diameter_mm"])
            base.append(side * scale - cal)
            objs = detected(det, crop)
            centre = size_centre_fruit(crop)
            centre_mm = None if centre.diameter_px is None else centre.diameter_px * scale
            served = nearest_size(crop, objs, scale, TREE_PARAMS) if any(o.kind == FRUIT for o in objs) else centre_mm
            got = {"served": served}
            got["client box"] = nearest_size(crop, [SceneObject(FRUIT, (x0 - X0, y0 - Y0, x1 - X0, y1 - Y0), "client")], scale, TREE_PARAMS)
            padded = detected(det, crop, DETECT_PAD_PX)
            got["mirrored for detection"] = (
                nearest_size(crop, padded, scale, TREE_PARAMS) if any(o.kind == FRUIT for o in padded) else centre_mm
            )
            p = int(side)
            mirrored = cv2.copyMakeBorder(crop, p, p, p, p, cv2.BORDER_REFLECT_101)
            shifted = [dataclasses.replace(o, box_xyxy=tuple(v + p for v in o.box_xyxy)) for o in objs]
            got["mirrored for sizing"] = (
                nearest_size(mirrored, shifted, scale, TREE_PARAMS) if any(o.kind == FRUIT for o in objs) else centre_mm
            )
            for b in (0.5, 1.0):
                params = dataclasses.replace(TREE_PARAMS, radius_bias_px=TREE_PARAMS.radius_bias_px + b)
                if any(o.kind == FRUIT for o in objs):
                    got[f"radius +{b} px"] = nearest_size(crop, objs, scale, params)
                else:
                    c2 = size_centre_fruit(crop, params=params)
                    got[f"radius +{b} px"] = None if c2.diameter_px is None else c2.diameter_px * scale
            cross = served
            if any(o.kind == FRUIT for o in objs) and served is not None and centre_mm is not None and abs(served / centre_mm - 1) > 0.10:
                cross = None
            got["centre cross-check"] = cross
            for k in levers:
                err[k].append(None if got[k] is None else got[k] - cal)
        print(fr["image"], len(base), flush=True)
    bmae = float(np.mean(np.abs(base)))
    out = {"dates": dates, "apples": len(base), "baseline_mae_mm": round(bmae, 2), "levers": {}}
    for k in levers:
        e = np.array([x for x in err[k] if x is not None])
        out["levers"][k] = {
            "sized_share": round(len(e) / max(1, len(err[k])), 3),
            "mae_mm": round(float(np.abs(e).mean()), 2),
            "mae_over_baseline": round(float(np.abs(e).mean()) / bmae, 2),
            "bias_mm": round(float(e.mean()), 2),
            "off_by_10mm_share": round(float((np.abs(e) > 10).mean()), 3),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--dates", choices=["tune", "held-out"], default="tune")
    p.add_argument("--json", type=Path)
    p.add_argument("--box-ratios", action="store_true", help="the method's diameters against the box sides on whole frames")
    a = p.parse_args(argv)
    if not (a.data / "annotations.json").exists():
        print(f"no ECOPOM data at {a.data}", file=sys.stderr)
        return 2
    # the sizing as it was when these levers were measured: before the whole pixel every size now
    # adds (grader/orchard_scene.py EDGE_PX; its own table: bench/orchard_http.py --edge-px)
    import grader.orchard_scene

    grader.orchard_scene.EDGE_PX = 0.0
    if a.box_ratios:
        ratios = box_ratios(a.data, a.dates)
        print(json.dumps(ratios, indent=1))
        if a.json:
            a.json.write_text(json.dumps(ratios, indent=1))
        return 0
    out = run(a.data, a.dates)
    print(f"{'lever':26s} sized   MAE mm  x base  bias   off>10mm   ({out['apples']} apples, baseline MAE {out['baseline_mae_mm']})")
    for k, v in out["levers"].items():
        print(
            f"{k:26s} {v['sized_share']:.3f}  {v['mae_mm']:5.2f}   {v['mae_over_baseline']:.2f}   {v['bias_mm']:+.2f}  {v['off_by_10mm_share']:.3f}"
        )
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

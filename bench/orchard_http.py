"""Orchard sizing through ``POST /v1/grade`` (``scene=orchard``), as a grower's app posts: the ECOPOM
frames of apples on the tree against their calipers.

    .venv/bin/python bench/orchard_http.py [--dates held-out|tune|all] [--crop-mult 2.5] [--crop-context 0.25] [--crop-box-tolerance 0.16]
        [--edge-px 1] [--outline-rel-se 0.08] [--frame-resize 1] [--details] [--json out.json]

Three ways, on the same calipered apples (frames holding a tennis ball):

* **crops**: a square crop of the frame around each apple (``--crop-mult`` × its annotated box side),
  posted alone with the frame's scale as ``mm_per_px`` (the median tennis-ball box side over 65.46 mm,
  the baseline's scale), no boxes: the service finds the fruit (detector, else the crop's centre);
* **belt-crops** (not run unless asked): the same crops posted as a belt photo (``scene=belt``), as a
  client that does not say it is an orchard would: the belt path must decline what it cannot
  separate from the leaves rather than size it wrong;
* **frames + boxes**: the whole frame with the annotators' boxes as ``boxes`` (the balls give the scale);
* **frames**: the whole frame alone: the detector finds apples and balls, the balls give the scale.

Per way: the share of apples sized (the rest declined, or not found); over the sized ones, MAE, the
share off by more than 10 mm and the share whose caliper lies within the size's ±
(``within_uncertainty_share``); against the hand-box baseline (box side × the balls' box scale) on
the same apples. Frames also report detection: recall of the calipered (and of all boxed) apples, the
share of detections that match a boxed apple, and the share of frames whose scale came from their balls.
Held-out dates are the later half (bench/size_accuracy.py: tune_dates); the method's knobs were
chosen on the first half only.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from grader.orchard import TENNIS_BALL_DIAMETER_MM, box_scale_mm_per_px  # noqa: E402

DATA = REPO.parent / "shared" / "data" / "ecopom-apple-size"
KEY = "bench-camera-key-0123456789abcdef"


def _box(o: dict) -> tuple[float, float, float, float]:
    (x0, y0), (x1, y1) = o["box"]
    return float(x0), float(y0), float(x1), float(y1)


def _centre_in(f: dict, box) -> bool:
    x0, y0, x1, y1 = f["bbox"]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return box[0] <= cx <= box[2] and box[1] <= cy <= box[3]


def draw_overlay(
    img_rgb: np.ndarray,
    body: dict,
    path: Path,
    calipers: list[tuple[tuple[float, float, float, float], float]],
    window: tuple[int, int, int, int] | None = None,
) -> None:
    """The frame as the service saw it: each fruit's fitted circle with its size ± uncertainty (green),
    declined fruit with their reason (orange), the reference spheres (blue), and the caliper reading
    of each calipered apple (white, small) for comparison. ``window`` (x0, y0, x1, y1): only that
    part is written; a ``.jpg`` path is written as JPEG (quality 85)."""
    out = cv2.cvtColor(img_rgb, cv2.COLOR_RGB2BGR).copy()
    font = cv2.FONT_HERSHEY_SIMPLEX
    for r in body.get("references", []):
        x0, y0, x1, y1 = r["bbox"]
        cv2.circle(out, (int((x0 + x1) / 2), int((y0 + y1) / 2)), int((x1 - x0) / 2), (255, 160, 0), 2, cv2.LINE_AA)
        cv2.putText(out, "ref", (int(x0), int(y0) - 4), font, 0.5, (255, 160, 0), 1, cv2.LINE_AA)
    for f in body["fruits"]:
        x0, y0, x1, y1 = f["bbox"]
        c, rad = (int((x0 + x1) / 2), int((y0 + y1) / 2)), max(1, int((x1 - x0) / 2))
        if f.get("diameter_mm") is not None:
            cv2.circle(out, c, rad, (60, 220, 60), 2, cv2.LINE_AA)
            cv2.putText(
                out,
                f"{f['diameter_mm']:.0f}+-{f.get('diameter_uncertainty_mm') or 0:.0f}",
                (c[0] - rad, c[1] - rad - 4),
                font,
                0.45,
                (60, 220, 60),
                1,
                cv2.LINE_AA,
            )
        else:
            cv2.rectangle(out, (int(x0), int(y0)), (int(x1), int(y1)), (0, 140, 255), 2)
            cv2.putText(out, f.get("size_declined") or "declined", (int(x0), int(y0) - 4), font, 0.45, (0, 140, 255), 1, cv2.LINE_AA)
    for (x0, y0, x1, y1), cal in calipers:
        cv2.putText(out, f"cal {cal:.0f}", (int(x0), int(y1) + 14), font, 0.4, (255, 255, 255), 1, cv2.LINE_AA)
    if window is not None:
        x0, y0, x1, y1 = window
        out = out[y0:y1, x0:x1]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), out, [cv2.IMWRITE_JPEG_QUALITY, 85] if path.suffix.lower() in (".jpg", ".jpeg") else [])


def _detail(image: str, box, caliper_mm: float, fruit: dict | None, baseline_mm: float) -> dict[str, Any]:
    """One calipered apple as the service answered for it (``--details``)."""
    return {
        "image": image,
        "box": [round(v, 1) for v in box],
        "caliper_mm": caliper_mm,
        "diameter_mm": fruit["diameter_mm"] if fruit else None,
        "uncertainty_mm": fruit.get("diameter_uncertainty_mm") if fruit else None,
        "found_by": fruit.get("found_by") if fruit else None,
        "size_declined": fruit.get("size_declined") if fruit else "not_found",
        "baseline_mm": round(baseline_mm, 2),
    }


def summary(errors: list[float | None], baseline: list[float], uncertainty: list[float | None] | None = None) -> dict[str, Any]:
    sized = np.array([e for e in errors if e is not None])
    # of the sized apples, those whose caliper lies within the size's ± (diameter_uncertainty_mm)
    held = [abs(e) <= u for e, u in zip(errors, uncertainty or []) if e is not None and u is not None]
    n = len(errors)
    # of the sized apples off by more than 10 mm, those whose hand box is off by more than 10 mm the
    # same way: the caliper and the visible width disagree (an apple nearer the camera than the
    # balls, a caliper read across another axis), not the outline
    far = [(e, b) for e, b in zip(errors, baseline) if e is not None and abs(e) > 10]
    return {
        "off_by_10mm_with_the_box_too": sum(1 for e, b in far if abs(b) > 10 and np.sign(b) == np.sign(e)),
        "off_by_10mm": len(far),
        "apples": n,
        "sized_share": round(len(sized) / max(1, n), 3),
        "mae_mm": None if not len(sized) else round(float(np.abs(sized).mean()), 2),
        "bias_mm": None if not len(sized) else round(float(sized.mean()), 2),
        "within_uncertainty_share": round(float(np.mean(held)), 3) if held else None,
        "off_by_10mm_share": None if not len(sized) else round(float((np.abs(sized) > 10).mean()), 3),
        "baseline_mae_mm": round(float(np.mean(np.abs(baseline))), 2) if baseline else None,
        "baseline_bias_mm": round(float(np.mean(baseline)), 2) if baseline else None,
        "baseline_off_by_10mm_share": round(float((np.abs(baseline) > 10).mean()), 3) if baseline else None,
    }


def run(
    data: Path,
    dates: str,
    crop_mult: float,
    ways: list[str],
    overlay: Path | None = None,
    fmt: str = "png",
    details: bool = False,
    overlay_window: tuple[int, int, int, int] | None = None,
    frame_resize: float = 1.0,
) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    sys.path.insert(0, str(REPO / "bench"))
    from size_accuracy import tune_dates

    ann = json.loads((data / "annotations.json").read_text())
    tune = tune_dates(ann)
    frames = [f for f in ann if dates == "all" or (f["date"] in tune) == (dates == "tune")]
    out: dict[str, Any] = {"dates": dates, "frames": len(frames), "crop_mult": crop_mult, "frame_resize": frame_resize}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), api_keys=f"camera:{KEY}", rate_limit_per_min=0, review_sample_share=0.0)
        with TestClient(create_app(settings)) as client:
            out["detector"] = client.app.state.ctx.detector is not None

            def post(img: np.ndarray, scene: str = "orchard", **form) -> dict:
                ok, enc = cv2.imencode(f".{fmt}", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
                r = client.post(
                    "/v1/grade",
                    headers={"X-API-Key": KEY},
                    files={"image": (f"i.{fmt}", enc.tobytes(), "image/png" if fmt == "png" else "image/jpeg")},
                    data={"scene": scene, "commodity": "apple", **{k: str(v) for k, v in form.items()}},
                )
                r.raise_for_status()
                return r.json()

            res: dict[str, dict[str, list]] = {w: {"err": [], "base": [], "unc": [], "apples": []} for w in ways}
            det = {
                "calipered": 0,
                "calipered_found": 0,
                "boxed": 0,
                "boxed_found": 0,
                "detections": 0,
                "detections_matched": 0,
                "frames_with_ball": 0,
                "frames_scaled_by_balls": 0,
            }
            t0 = time.time()
            for fr in frames:
                balls = [_box(o) for o in fr["objects"] if o["kind"] == "tennis_ball"]
                apples = [o for o in fr["objects"] if o["kind"] == "apple" and o.get("caliper_diameter_mm") is not None]
                if not balls or not apples:
                    continue
                img = cv2.cvtColor(cv2.imread(str(data / fr["image"])), cv2.COLOR_BGR2RGB)
                if frame_resize != 1.0:
                    # the frame as a camera of another resolution would take it, boxes and all
                    shrink = cv2.INTER_AREA if frame_resize < 1 else cv2.INTER_CUBIC
                    img = cv2.resize(img, None, fx=frame_resize, fy=frame_resize, interpolation=shrink)
                    fr = {**fr, "objects": [{**o, "box": [[v * frame_resize for v in pt] for pt in o["box"]]} for o in fr["objects"]]}
                    balls = [_box(o) for o in fr["objects"] if o["kind"] == "tennis_ball"]
                    apples = [o for o in fr["objects"] if o["kind"] == "apple" and o.get("caliper_diameter_mm") is not None]
                scale = box_scale_mm_per_px(balls, TENNIS_BALL_DIAMETER_MM)
                H, W = img.shape[:2]
                for way in [w for w in ("crops", "belt-crops") if w in ways]:
                    for a in apples:
                        x0, y0, x1, y1 = _box(a)
                        side = ((x1 - x0) + (y1 - y0)) / 2
                        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, side * crop_mult / 2
                        X0, Y0 = int(max(0, cx - half)), int(max(0, cy - half))
                        X1, Y1 = int(min(W, cx + half)), int(min(H, cy + half))
                        scene = "belt" if way == "belt-crops" else "orchard"
                        body = post(np.ascontiguousarray(img[Y0:Y1, X0:X1]), scene, mm_per_px=scale)
                        cal = float(a["caliper_diameter_mm"])
                        # the fruit of the crop: the one whose box holds the crop's centre, else the nearest
                        c = ((X1 - X0) / 2, (Y1 - Y0) / 2)
                        fr_ = sorted(
                            body["fruits"],
                            key=lambda f: np.hypot((f["bbox"][0] + f["bbox"][2]) / 2 - c[0], (f["bbox"][1] + f["bbox"][3]) / 2 - c[1]),
                        )
                        d = fr_[0]["diameter_mm"] if fr_ else None
                        res[way]["err"].append(None if d is None else d - cal)
                        res[way]["base"].append(side * scale - cal)
                        res[way]["unc"].append(fr_[0].get("diameter_uncertainty_mm") if fr_ else None)
                        if details:
                            res[way]["apples"].append(_detail(fr["image"], (x0, y0, x1, y1), cal, fr_[0] if fr_ else None, side * scale))
                if "frames+boxes" in ways or "frames" in ways:
                    for way in [w for w in ("frames+boxes", "frames") if w in ways]:
                        form = {}
                        if way == "frames+boxes":
                            form["boxes"] = json.dumps([{"box": list(_box(o)), "kind": o["kind"]} for o in fr["objects"]])
                        body = post(img, **form)
                        fruits = body["fruits"]
                        if overlay is not None and way == ways[-1] and not overlay.exists():
                            draw_overlay(img, body, overlay, [(_box(a), float(a["caliper_diameter_mm"])) for a in apples], overlay_window)
                        if way == "frames":
                            det["frames_with_ball"] += 1
                            det["frames_scaled_by_balls"] += int(body["calibration"]["source"] == "reference")
                            boxed = [o for o in fr["objects"] if o["kind"] == "apple"]
                            det["boxed"] += len(boxed)
                            det["boxed_found"] += sum(any(_centre_in(f, _box(o)) for f in fruits) for o in boxed)
                            det["detections"] += len(fruits)
                            det["detections_matched"] += sum(any(_centre_in(f, _box(o)) for o in boxed) for f in fruits)
                        for a in apples:
                            box = _box(a)
                            side = ((box[2] - box[0]) + (box[3] - box[1])) / 2
                            hit = [f for f in fruits if _centre_in(f, box)]
                            if way == "frames":
                                det["calipered"] += 1
                                det["calipered_found"] += int(bool(hit))
                            d = hit[0]["diameter_mm"] if hit else None
                            res[way]["err"].append(None if d is None else d - float(a["caliper_diameter_mm"]))
                            res[way]["base"].append(side * scale - float(a["caliper_diameter_mm"]))
                            res[way]["unc"].append(hit[0].get("diameter_uncertainty_mm") if hit else None)
                            if details:
                                res[way]["apples"].append(
                                    _detail(fr["image"], box, float(a["caliper_diameter_mm"]), hit[0] if hit else None, side * scale)
                                )
                print(f"{fr['image']}: {time.time() - t0:.0f}s", flush=True)
            for w in ways:
                out[w] = summary(res[w]["err"], res[w]["base"], res[w]["unc"])
                if details and res[w]["apples"]:
                    out[w]["per_apple"] = res[w]["apples"]
            if "frames" in ways:
                out["detection"] = {
                    **det,
                    "recall_calipered": round(det["calipered_found"] / max(1, det["calipered"]), 3),
                    "recall_boxed": round(det["boxed_found"] / max(1, det["boxed"]), 3),
                    "precision_vs_boxed": round(det["detections_matched"] / max(1, det["detections"]), 3),
                    "balls_used_share": round(det["frames_scaled_by_balls"] / max(1, det["frames_with_ball"]), 3),
                }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--dates", choices=["held-out", "tune", "all"], default="held-out", help="tune: the first half, where knobs are chosen")
    p.add_argument("--crop-mult", type=float, default=2.5, help="crop side as a multiple of the annotated box side")
    p.add_argument("--ways", default="crops,frames+boxes,frames")
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--format", choices=["png", "jpg"], default="png", help="how images are encoded for the request (jpg: OpenCV's quality 95)"
    )
    p.add_argument(
        "--crop-context",
        type=float,
        help="crops are mirrored outwards by this share of their longer side before detection and sizing (default: the service's)",
    )
    p.add_argument(
        "--crop-box-tolerance",
        type=float,
        help="on a crop, how far (a share) a circle may differ from the detector's box before it is declined (default: the service's)",
    )
    p.add_argument("--edge-px", type=float, help="pixels added to each fitted circle's diameter (default: grader.orchard_scene.EDGE_PX)")
    p.add_argument(
        "--outline-rel-se",
        type=float,
        help="the outline's relative standard error as a caliper reading, part of every ± (default: grader.orchard_scene.OUTLINE_REL_SE)",
    )
    p.add_argument(
        "--frame-resize",
        type=float,
        default=1.0,
        help="resize every frame (and its boxes) by this factor first: another camera's resolution",
    )
    p.add_argument("--overlay-window", help="x0,y0,x1,y1: write only this part of the overlay's frame")
    p.add_argument("--details", action="store_true", help="per apple: its size and uncertainty, how it was found, why declined")
    p.add_argument("--overlay", type=Path, help="draw the first held-out frame as the service sized it (the last of --ways)")
    a = p.parse_args(argv)
    if not (a.data / "annotations.json").exists():
        print(f"no ECOPOM data at {a.data}", file=sys.stderr)
        return 2
    if a.overlay is not None and a.overlay.exists():
        a.overlay.unlink()
    import grader.orchard_scene
    import service.orchard

    if a.crop_context is not None:
        service.orchard.CROP_CONTEXT_SHARE = a.crop_context
    if a.crop_box_tolerance is not None:
        service.orchard.CROP_MAX_BOX_DISAGREEMENT = a.crop_box_tolerance
    if a.edge_px is not None:
        grader.orchard_scene.EDGE_PX = a.edge_px
    if a.outline_rel_se is not None:
        grader.orchard_scene.OUTLINE_REL_SE = a.outline_rel_se
    out = run(
        a.data,
        a.dates,
        a.crop_mult,
        a.ways.split(","),
        a.overlay,
        a.format,
        a.details,
        tuple(int(v) for v in a.overlay_window.split(",")) if a.overlay_window else None,
        a.frame_resize,
    )
    print(json.dumps(out, indent=1))
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

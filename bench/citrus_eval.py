"""Citrus defect models against their targets, on held-out photos, the way the service sees them.

    .venv/bin/python bench/citrus_eval.py [--lemon models/lemon-defect/0.1.0] \
        [--orange models/orange-defect/0.3.0] [--data ../shared/data] [--split test|val] [--json out.json] [--no-leak-check]

Each artifact's own ``manifest.json`` names its test photos (whole near-duplicate groups the model
never saw; datasets/citrus.py); every file is checked against its recorded sha256. Every photo
goes through the service's path: ``grader.measure.segment_fruits`` with the commodity profile's
settings (``Commodity.segmentation``) → the largest fruit →
``grader.measure.crop_for_model(..., mask)`` (background painted out) →
``service.onnx_model.OnnxDefectModel.predict`` (the shipped model.onnx, its metadata's threshold).
A photo in which no fruit is found gets no grade: it counts as wrong for its class.

Figures and targets:

* lemons: balanced accuracy, sound vs defective (>= 0.95);
* empty lemon frames: ``grader.measure.measure_image(rgb, None)`` finds no fruit (>= 98 %), over all
  384 frames (never a training class) and over the test split alone;
* oranges, per source: fresh vs rotten on oranges-fresh-rotten (>= 0.95), fresh vs diseased on
  orange-diseases (>= 0.95), and the defect type among the diseased fruit (accuracy >= 0.90): the
  model's most probable defective class against the folder (``type_probabilities``), and end to
  end (called defective *and* the right type).

Source-bias checks for the oranges (every diseased photo is a lab shot, most sound ones stock photos):

* within one source: oranges-fresh-rotten holds stock photos of both labels;
* colour-statistics swap: each test fruit gets the other source's colour statistics (per-channel
  Lab mean and spread over the fruit pixels, Reinhard transfer; target statistics from the *train*
  crops: lab-shot diseased vs stock-photo sound) and is scored again. A decision that followed
  the photographic source would flip; the share still right is printed per class;
* segmentation per source: share of photos with a fruit found and the fruit's share of the crop;
* leak check: test photos with a train photo within 160 bits of 1023 of the perceptual hash
  (the grouping threshold is 128), which would be copies the grouping missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datasets import citrus  # noqa: E402
from datasets.fruitnet import file_sha256  # noqa: E402
from grader.commodities import load_commodities  # noqa: E402
from grader.crop import crop_for_model  # noqa: E402
from grader.measure import measure_image  # noqa: E402
from grader.segment import SegmentationParams, segment_fruits  # noqa: E402
from inference.onnx_model import OnnxDefectModel  # noqa: E402
from training.colour import colour_transfer, fruit_pixels, mean_colour_stats  # noqa: E402
from training.metrics import intervals  # noqa: E402

TARGETS = {
    "lemon_balanced_accuracy": 0.95,
    "empty_no_fruit_share": 0.98,
    "orange_fresh_vs_rotten_balanced_accuracy": 0.95,
    "orange_fresh_vs_diseased_balanced_accuracy": 0.95,
    "orange_type_accuracy": 0.90,
}
DISEASES = ("blackspot", "canker", "greening")
#: the manifest split scored (--split): test for the figures, val to choose between models
SPLIT = "test"


def load_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_manifest(artifact: Path, data: Path, check: bool = True) -> list[dict[str, Any]]:
    items = json.loads((artifact / "manifest.json").read_text())["items"]
    if check:
        bad = [it["path"] for it in items if it["split"] == SPLIT and file_sha256(data / it["path"]) != it["sha256"]]
        if bad:
            raise SystemExit(
                f"{len(bad)} test photos differ from the manifest's sha256 (e.g. {bad[0]}): not the data the model was tested on"
            )
    return items


def service_crop(rgb: np.ndarray, margin: float, params: SegmentationParams | None = None) -> tuple[np.ndarray | None, int, float]:
    """The largest fruit's model crop as the service makes it (``params``: the commodity's
    segmentation settings), the number of fruit found and the fruit's share of the crop (None crop
    when no fruit is found)."""
    segs = segment_fruits(rgb, params)
    if not segs:
        return None, 0, 0.0
    seg = max(segs, key=lambda s: int(s.mask.sum()))
    crop = crop_for_model(rgb, seg.bbox, margin, seg.mask)
    share = float(fruit_pixels(crop).mean())
    return crop, len(segs), share


def balanced(pairs: list[tuple[bool, bool | None]]) -> dict[str, Any]:
    """(truly defective, called defective or None when no fruit was found) -> balanced accuracy,
    recalls and counts; a photo without a fruit counts as wrong."""
    d = [c is True for t, c in pairs if t]
    s = [c is False for t, c in pairs if not t]
    rd = float(np.mean(d)) if d else float("nan")
    rs = float(np.mean(s)) if s else float("nan")
    return {
        "balanced_accuracy": float(np.nanmean([rd, rs])),
        "recall_defective": rd,
        "recall_sound": rs,
        "n_defective": len(d),
        "n_sound": len(s),
        "no_fruit": sum(1 for _, c in pairs if c is None),
        **intervals(tp=sum(d), fn=len(d) - sum(d), tn=sum(s), fp=len(s) - sum(s)),
    }


def ci(rep: dict[str, Any]) -> str:
    """The balanced accuracy's 95 % interval over the photos (training/metrics.py: intervals)."""
    lo, hi = rep.get("balanced_accuracy_ci95") or (float("nan"), float("nan"))
    return f"95 % interval over these photos {fmt(lo)}-{fmt(hi)}"


def score_items(
    model: OnnxDefectModel, items: list[dict[str, Any]], data: Path, params: SegmentationParams | None = None
) -> list[dict[str, Any]]:
    out = []
    crops, keep = [], []
    for it in items:
        crop, n, share = service_crop(load_rgb(data / it["path"]), model.spec.crop_margin_frac, params)
        row = {**it, "n_fruit": n, "fruit_share": share, "crop": crop}
        out.append(row)
        if crop is not None:
            crops.append(crop)
            keep.append(row)
    for row, ev in zip(keep, model.predict(crops)):
        row["evidence"] = ev
    return out


def called(row: dict[str, Any]) -> bool | None:
    """Called defective (any defective class), sound, or None when no fruit was found."""
    ev = row.get("evidence")
    return None if ev is None else ev.label != "sound"


# ----------------------------------------------------------------------------- reports
def fmt(v: float | None, nd: int = 3) -> str:
    return "n/a" if v is None or v != v else f"{v:.{nd}f}"


def verdict(value: float, target: float) -> str:
    return "MET" if value == value and value >= target else "NOT MET"


def lemon_report(artifact: Path, data: Path, threads: int, out: dict[str, Any]) -> None:
    model = OnnxDefectModel(artifact, threads=threads)
    items = read_manifest(artifact, data)
    test = [it for it in items if it["split"] == SPLIT and it["label"] in ("sound", "defective")]
    params = load_commodities()["lemon"].segmentation()  # as the service segments a lemon
    rows = score_items(model, test, data, params)
    rep = balanced([(r["label"] == "defective", called(r)) for r in rows])
    out["lemon"] = {"artifact": str(artifact), "threshold": model.spec.threshold_defective, **rep}
    print(f"\n== lemons: {artifact} (threshold {model.spec.threshold_defective:.3f}) ==")
    print(
        f"{SPLIT} photos: {rep['n_sound']} sound, {rep['n_defective']} defective; no fruit found in {rep['no_fruit']}; "
        f"more than one fruit found in {sum(1 for r in rows if r['n_fruit'] > 1)} (the largest is graded)"
    )
    print(
        f"  balanced accuracy sound vs defective   {fmt(rep['balanced_accuracy'])}   target >= {TARGETS['lemon_balanced_accuracy']}   "
        f"{verdict(rep['balanced_accuracy'], TARGETS['lemon_balanced_accuracy'])}"
    )
    print(f"  recall defective {fmt(rep['recall_defective'])}, recall sound {fmt(rep['recall_sound'])}; {ci(rep)}")

    empties = [it for it in items if it["label"] == "empty"]
    found = {it["path"]: len(measure_image(load_rgb(data / it["path"]), None, params)) for it in empties}
    share_all = float(np.mean([n == 0 for n in found.values()]))
    test_empty = [it["path"] for it in empties if it["split"] == SPLIT]
    share_test = float(np.mean([found[p] == 0 for p in test_empty])) if test_empty else float("nan")
    out["empty"] = {
        "n": len(empties),
        "no_fruit_share": share_all,
        "n_test": len(test_empty),
        "no_fruit_share_test": share_test,
        "with_fruit": sorted(p for p, n in found.items() if n),
    }
    print(
        f"  empty frames, measure_image finds no fruit: {sum(n == 0 for n in found.values())}/{len(empties)} = {fmt(share_all)}   "
        f"target >= {TARGETS['empty_no_fruit_share']}   {verdict(share_all, TARGETS['empty_no_fruit_share'])}"
    )
    print(
        f"    {SPLIT} split alone: {sum(found[p] == 0 for p in test_empty)}/{len(test_empty)} = {fmt(share_test)}; "
        f"frames with a 'fruit': {', '.join(Path(p).name for p in out['empty']['with_fruit']) or 'none'}"
    )
    print("    (the segmentation's colour-contrast and visible-share rules were set looking at these frames: not a held-out figure)")


def orange_report(artifact: Path, data: Path, threads: int, out: dict[str, Any], leak_check: bool) -> None:
    model = OnnxDefectModel(artifact, threads=threads)
    spec = model.spec
    items = read_manifest(artifact, data)
    test = [it for it in items if it["split"] == SPLIT]
    params = load_commodities()["orange"].segmentation()  # as the service segments an orange
    rows = score_items(model, test, data, params)
    print(f"\n== oranges: {artifact} (classes {', '.join(spec.classes)}; threshold {spec.threshold_defective:.3f}) ==")
    o: dict[str, Any] = {"artifact": str(artifact), "threshold": spec.threshold_defective, "per_source": {}}
    for source in ("oranges-fresh-rotten", "orange-diseases"):
        rs = [r for r in rows if r["source"] == source]
        o["per_source"][source] = balanced([(r["label"] != "sound", called(r)) for r in rs])
        # every photo called wrong, for a look at what the model (or the segmentation) missed
        o["per_source"][source]["wrong"] = [
            {
                "path": r["path"],
                "label": r["label"],
                "n_fruit": r["n_fruit"],
                "fruit_share": round(r["fruit_share"], 3),
                "score": None if r.get("evidence") is None else round(float(r["evidence"].score), 4),
            }
            for r in rs
            if called(r) is not (r["label"] != "sound")
        ]
    fr, fd = o["per_source"]["oranges-fresh-rotten"], o["per_source"]["orange-diseases"]
    print(
        f"{SPLIT} photos: oranges-fresh-rotten {fr['n_sound']} fresh + {fr['n_defective']} rotten; orange-diseases {fd['n_sound']} fresh + "
        f"{fd['n_defective']} diseased; no fruit found in {fr['no_fruit'] + fd['no_fruit']}"
    )
    t = TARGETS["orange_fresh_vs_rotten_balanced_accuracy"]
    print(
        f"  oranges-fresh-rotten  fresh vs rotten    balanced accuracy {fmt(fr['balanced_accuracy'])}   target >= {t}   {verdict(fr['balanced_accuracy'], t)}"
        f"   (recall rotten {fmt(fr['recall_defective'])}, recall fresh {fmt(fr['recall_sound'])}; {ci(fr)})"
    )
    print(
        "    called wrong: "
        + ", ".join(
            f"{Path(w['path']).name} ({w['label']}, "
            + ("no fruit" if w["score"] is None else f"{w['n_fruit']} found, score {w['score']:.2f}")
            + ")"
            for w in fr["wrong"]
        )
    )
    t = TARGETS["orange_fresh_vs_diseased_balanced_accuracy"]
    print(
        f"  orange-diseases       fresh vs diseased  balanced accuracy {fmt(fd['balanced_accuracy'])}   target >= {t}   {verdict(fd['balanced_accuracy'], t)}"
        f"   (recall diseased {fmt(fd['recall_defective'])}, recall fresh {fmt(fd['recall_sound'])}; {ci(fd)})"
    )

    diseased = [r for r in rows if r["label"] in DISEASES]
    typed = [r for r in diseased if r.get("evidence") is not None and r["evidence"].type_probabilities]
    if len(spec.defective_classes) > 1:
        best = [max(r["evidence"].type_probabilities, key=r["evidence"].type_probabilities.get) for r in typed]
        acc = float(np.mean([b == r["label"] for b, r in zip(best, typed)])) if typed else float("nan")
        e2e = (
            float(np.mean([r.get("evidence") is not None and r["evidence"].type == r["label"] for r in diseased]))
            if diseased
            else float("nan")
        )
        per = {
            d: float(np.mean([b == d for b, r in zip(best, typed) if r["label"] == d]))
            for d in DISEASES
            if any(r["label"] == d for r in typed)
        }
        conf = {d: {c: sum(1 for b, r in zip(best, typed) if r["label"] == d and b == c) for c in spec.defective_classes} for d in DISEASES}
        o["types"] = {"accuracy": acc, "end_to_end": e2e, "per_type_recall": per, "confusion": conf, "n": len(diseased)}
        t = TARGETS["orange_type_accuracy"]
        print(
            f"  orange-diseases       defect type among {len(diseased)} diseased: accuracy {fmt(acc)}   target >= {t}   {verdict(acc, t)}"
        )
        print(
            f"    end to end (called defective and the right type): {fmt(e2e)}; per type: "
            + ", ".join(f"{d} {fmt(v)}" for d, v in per.items())
        )
        print(
            "    confusion (true -> most probable defective class): "
            + "; ".join(f"{d}: " + " ".join(f"{c} {n}" for c, n in conf[d].items() if n) for d in DISEASES)
        )
    rot = [r for r in rows if r["label"] == "rot" and r.get("evidence") is not None and r["evidence"].type_probabilities]
    if rot:
        n_rot = sum(max(r["evidence"].type_probabilities, key=r["evidence"].type_probabilities.get) == "rot" for r in rot)
        print(f"    rot (oranges-fresh-rotten) typed as rot: {n_rot}/{len(rot)}")

    # -- source-bias checks
    print("  source-bias checks:")
    print(f"    within one source (stock photos both ways), oranges-fresh-rotten balanced accuracy {fmt(fr['balanced_accuracy'])}")
    seg = {}
    for source in ("oranges-fresh-rotten", "orange-diseases"):
        rs = [r for r in rows if r["source"] == source]
        seg[source] = {
            "fruit_found": float(np.mean([r["n_fruit"] > 0 for r in rs])),
            "fruit_share_of_crop": float(np.mean([r["fruit_share"] for r in rs if r["n_fruit"]])),
        }
        print(
            f"    segmentation, {source}: fruit found in {fmt(seg[source]['fruit_found'])} of the photos, "
            f"fruit {fmt(seg[source]['fruit_share_of_crop'])} of the crop (the rest painted out)"
        )
    o["segmentation"] = seg
    train_crops: dict[str, list[np.ndarray]] = {"lab_diseased": [], "stock_sound": []}
    for it in [it for it in items if it["split"] == "train"]:
        key = "lab_diseased" if it["label"] in DISEASES else "stock_sound" if it["label"] == "sound" else None
        if key and len(train_crops[key]) < 120:
            crop, _, _ = service_crop(load_rgb(data / it["path"]), spec.crop_margin_frac, params)
            if crop is not None:
                train_crops[key].append(crop)
    lab_stats, stock_stats = mean_colour_stats(train_crops["lab_diseased"]), mean_colour_stats(train_crops["stock_sound"])
    swap: dict[str, Any] = {}
    for name, sel, target, want in (
        ("fresh (stock) given lab colours, still sound", lambda r: r["label"] == "sound", lab_stats, False),
        ("diseased (lab) given stock colours, still defective", lambda r: r["label"] in DISEASES, stock_stats, True),
        ("rotten (stock) given lab colours, still defective", lambda r: r["label"] == "rot", lab_stats, True),
    ):
        rs = [r for r in rows if sel(r) and r.get("evidence") is not None]
        if not rs:
            continue
        evs = model.predict([colour_transfer(r["crop"], target) for r in rs])
        before = float(np.mean([(r["evidence"].label != "sound") == want for r in rs]))
        after = float(np.mean([(e.label != "sound") == want for e in evs]))
        swap[name] = {"n": len(rs), "right_before": before, "right_after": after}
        print(f"    colour swap, {name}: {fmt(after)} right (before the swap {fmt(before)}, n {len(rs)})")
    for d in DISEASES:
        rs = [r for r in rows if r["label"] == d and r.get("evidence") is not None]
        if rs:
            evs = model.predict([colour_transfer(r["crop"], stock_stats) for r in rs])
            swap[f"{d} given stock colours, still defective"] = float(np.mean([e.label != "sound" for e in evs]))
    print(
        "      per disease, still defective with stock colours: "
        + ", ".join(f"{d} {fmt(swap.get(f'{d} given stock colours, still defective'))}" for d in DISEASES)
    )
    o["colour_swap"] = swap
    if leak_check:
        o["leak_check"] = leak_report(items, data)
    out["orange"] = o


def leak_report(items: list[dict[str, Any]], data: Path, bits: int = 160) -> dict[str, Any]:
    train = [it for it in items if it["split"] == "train"]
    test = [it for it in items if it["split"] == "test"]
    cache = REPO / "var" / "cache" / "citrus"
    sig_tr = citrus.signatures([data / it["path"] for it in train], [it["sha256"] for it in train], cache)
    sig_te = citrus.signatures([data / it["path"] for it in test], [it["sha256"] for it in test], cache)
    near: dict[int, int] = {}
    for i, _, d in citrus.close_pairs(sig_te, sig_tr, max_bits=bits, max_colour_l1=2.0):
        near[i] = min(near.get(i, 10_000), d)
    print(
        f"    leak check: {len(near)} of {len(test)} test photos have a train photo within {bits} bits "
        f"(grouping threshold {citrus.DEFAULT_MAX_BITS}); nearest: {sorted(near.values())[:8]}"
    )
    return {"bits": bits, "n_test": len(test), "n_near": len(near), "distances": sorted(near.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lemon", default=str(REPO / "models" / "lemon-defect" / "0.1.0"))
    ap.add_argument("--orange", default=str(REPO / "models" / "orange-defect" / "0.3.0"))
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="the manifest split to score: test for the published figures, val to choose between models",
    )
    ap.add_argument("--json", help="also write every figure to this JSON file")
    ap.add_argument("--no-leak-check", action="store_true", help="skip the perceptual-hash leak check (hashes every orange photo once)")
    args = ap.parse_args(argv)
    data = Path(args.data)
    global SPLIT
    SPLIT = args.split
    if not (data / "lemons").is_dir():
        print(f"{data} has no citrus photos: nothing to evaluate", file=sys.stderr)
        return 2
    t0 = time.time()
    out: dict[str, Any] = {"targets": TARGETS, "split": SPLIT}
    lemon_report(Path(args.lemon), data, args.threads, out)
    orange_report(Path(args.orange), data, args.threads, out, not args.no_leak_check)
    print(f"\n({time.time() - t0:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

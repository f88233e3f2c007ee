"""Real photos graded through ``POST /v1/grade``, as a packhouse posts them: fruit finding and defect
figures of the whole service (segmentation, fruit check, defect model, threshold), not of crops.

    .venv/bin/python bench/http_eval.py [--models models] [--data ../shared/data] [--split test] [--json out.json]

The app is built by ``service.app.create_app`` with a fresh SQLite database in a temporary folder
and driven over its ASGI interface (httpx), every photo one multipart request with its commodity.
Photo sets (the held-out split of each model's own rules):

* apples: FruitNet single photos of the test capture sessions (IMG_9xxx, 20190824) and, as
  "known sessions", the val ones (20190812, IMG_8xxx);
* lemons and oranges: the test split of datasets/citrus.py's grouping (seed 7);
* empty lemon frames: every one of them (none is a training class);
* ECOPOM orchard windows are left to bench/size_accuracy.py.

Per set: the share of one-fruit photos that give exactly one fruit, of empty frames that give none,
the rejected candidates, the fruit queued for review and those of them beyond the photo's one fruit
(its largest; any of an empty frame: background or a piece of the fruit in the queue), the share of fruit whose size was declined (every photo is posted with
``mm_per_px`` 0.3: grader/clutter.py declines sizes on cluttered backdrops), and balanced accuracy of sound vs defective (a photo is called defective
when any fruit found in it is; a photo with no fruit found counts as wrong), with 95 % intervals.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from datasets import citrus, fruitnet  # noqa: E402
from training.metrics import wilson_interval  # noqa: E402

APPLE_SESSIONS = {"test": ["IMG_9xxx", "20190824"], "val": ["20190812", "IMG_8xxx"]}


def photo_sets(data: Path, split: str, limit: int | None) -> dict[str, list[tuple[Path, str, str]]]:
    """{set name: [(photo, commodity, truth: sound | defective | empty)]}"""
    out: dict[str, list[tuple[Path, str, str]]] = {}
    apples = data / "fruitnet-apples"
    if apples.exists():
        for name, sessions in (("apples (unseen sessions)", APPLE_SESSIONS["test"]), ("apples (val sessions)", APPLE_SESSIONS["val"])):
            items = fruitnet.build_manifest(apples, {"x": sessions}, "single")
            out[name] = [(apples / it.path, "apple", "defective" if it.label == "defective" else "sound") for it in items]
    for commodity in ("lemon", "orange"):
        try:
            items = citrus.build_manifest(data, commodity, seed=7, cache_dir=REPO / "var" / "fruit_check" / "cache")
        except (FileNotFoundError, OSError):
            continue
        out[f"{commodity}s"] = [
            (data / it.path, commodity, "sound" if it.label == "sound" else "defective")
            for it in items
            if it.split == split and it.label != "empty"
        ]
        if commodity == "lemon":
            out["empty belt frames"] = [(data / it.path, "lemon", "empty") for it in items if it.label == "empty"]
    if limit:
        out = {k: v[:: max(1, len(v) // limit)] for k, v in out.items()}
    return out


def evaluate(models: Path, data: Path, split: str, limit: int | None = None) -> dict[str, Any]:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    key = "bench-camera-key-0123456789abcdef"
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            data_dir=Path(tmp),
            model_dir=models,
            models_root=models,
            api_keys=f"camera:{key}",
            review_sample_share=0.0,
            rate_limit_per_min=0,
        )
        with TestClient(create_app(settings)) as client:
            for name, photos in photo_sets(data, split, limit).items():
                counts = {
                    "photos": 0,
                    "exactly_one": 0,
                    "none": 0,
                    "several": 0,
                    "rejected_candidates": 0,
                    "errors": 0,
                    "fruits": 0,
                    "size_declined": 0,
                    "queued": 0,
                    "queued_beyond_the_fruit": 0,
                }
                right = {"sound": [0, 0], "defective": [0, 0]}  # [right, total]
                t0 = time.perf_counter()
                for path, commodity, truth in photos:
                    with open(path, "rb") as fh:
                        r = client.post(
                            "/v1/grade",
                            headers={"X-API-Key": key},
                            files={"image": (path.name, fh, "image/jpeg")},
                            data={"commodity": commodity, "mm_per_px": "0.3"},
                        )
                    counts["photos"] += 1
                    if r.status_code != 200:
                        counts["errors"] += 1
                        continue
                    body = r.json()
                    n = body["n_fruits"]
                    counts["rejected_candidates"] += int(body.get("rejected_candidates") or 0)
                    counts["fruits"] += n
                    counts["size_declined"] += sum(f.get("size_declined") is not None for f in body["fruits"])
                    counts["exactly_one" if n == 1 else "none" if n == 0 else "several"] += 1
                    # the review queue: flagged fruit go to the inspectors; beyond the photo's one fruit
                    # (its largest; every one of an empty frame) a queued region is background or a piece
                    by_size = sorted(body["fruits"], key=lambda f: -(f["bbox"][2] - f["bbox"][0]) * (f["bbox"][3] - f["bbox"][1]))
                    counts["queued"] += sum(bool(f.get("flagged")) for f in by_size)
                    counts["queued_beyond_the_fruit"] += sum(bool(f.get("flagged")) for f in by_size[0 if truth == "empty" else 1 :])
                    if truth == "empty":
                        continue
                    said = (
                        None
                        if n == 0
                        else ("defective" if any(f["defect"] and f["defect"]["label"] != "sound" for f in body["fruits"]) else "sound")
                    )
                    right[truth][1] += 1
                    right[truth][0] += int(said == truth)
                seconds = time.perf_counter() - t0
                rep: dict[str, Any] = {**counts, "seconds": round(seconds, 1)}
                rep["size_declined_share"] = counts["size_declined"] / max(1, counts["fruits"])
                if any(t for _, t in right.values()):
                    recalls = {c: (r_ / t if t else None) for c, (r_, t) in right.items()}
                    rep["recall"] = recalls
                    rep["recall_interval_95"] = {c: wilson_interval(r_, t) if t else None for c, (r_, t) in right.items()}
                    seen = [v for v in recalls.values() if v is not None]
                    rep["balanced_accuracy"] = sum(seen) / len(seen)
                    rep["exactly_one_share"] = counts["exactly_one"] / max(1, counts["photos"] - counts["errors"])
                else:
                    rep["no_fruit_share"] = counts["none"] / max(1, counts["photos"] - counts["errors"])
                results[name] = rep
                print(f"{name}: {json.dumps(rep)}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=Path, default=REPO / "models")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--split", default="test", choices=["test", "val"])
    p.add_argument("--limit", type=int, default=None, help="at most about this many photos per set")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not a.data.exists():
        print(f"{a.data} not found: this bench needs the shared real photos", file=sys.stderr)
        return 2
    res = evaluate(a.models, a.data, a.split, a.limit)
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

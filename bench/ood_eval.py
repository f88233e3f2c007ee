"""How often a defect model's out-of-distribution signals fire, on its own val/test crops and on
crops that are not the fruit it knows: tennis balls and apples on the tree from the ecopom orchard
frames, the lemon set's empty belt frames, lemons and oranges, and synthetic patches (flat colour,
checkerboard, random noise, printed text).

    .venv/bin/python bench/ood_eval.py [--artifact models/apple-defect/0.3.0] [--json FILE] [--blocks]

Everything goes through the service's ONNX path (service.onnx_model.OnnxDefectModel.predict: the
model's preprocessing, its graph, grader.defect.evidence_from_logits at the artifact's thresholds).
Each crop is what the service would hand the model: grader.measure.crop_for_model's square with the
background painted out ("masked"), the mask being the segmentation's for fruit photos
(training.crops.fruit_crop, as in training), the ellipse inscribed in the annotated box for the
orchard objects, and a centred disc for frames and patches; "unmasked" is the same square with its
background left in (what the model would see if the segmentation passed a whole region on).
The val/test crops are the artifact's own, made as training made them (``training.train.load_data``
with its config.yaml, cached under var/train/<name>-<version>). Seeded: reruns give the same figures.
The signals: ``ood_distance`` (pooled features), ``ood_distance_early`` (an early block's averaged
output, where the artifact has it) and the energy; "any" is the service's ``ood`` flag.
AUROC: how well each signal ranks a set's crops above the model's own test crops, at any threshold.
``--blocks`` adds an exploratory table: the same distance rule on each block's pooled output.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grader.crop import crop_for_model  # noqa: E402
from inference.onnx_model import OnnxDefectModel  # noqa: E402
from training.crops import fruit_crop, load_rgb  # noqa: E402
from training.metrics import auc  # noqa: E402

PATCH_SIDE = 320
N_PATCHES = 50


def ellipse_mask(h: int, w: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    cv2.ellipse(m, (w // 2, h // 2), (max(1, w // 2), max(1, h // 2)), 0, 0, 360, 1, -1)
    return m.astype(bool)


def box_crops(image: np.ndarray, bbox: tuple[int, int, int, int], margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(masked, unmasked) model crops of an object in its box: the ellipse inscribed in the box as
    its outline."""
    x0, y0, x1, y1 = bbox
    return crop_for_model(image, bbox, margin, ellipse_mask(y1 - y0, x1 - x0)), crop_for_model(image, bbox, margin)


def centred(image: np.ndarray, margin: float) -> tuple[np.ndarray, np.ndarray]:
    """(masked, unmasked) crops of a frame or patch as if a round fruit filled its middle."""
    h, w = image.shape[:2]
    side = int(min(h, w) / (1 + 2 * margin))
    x0, y0 = (w - side) // 2, (h - side) // 2
    return box_crops(image, (x0, y0, x0 + side, y0 + side), margin)


def patches(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    s = PATCH_SIDE
    out: dict[str, list[np.ndarray]] = {"flat colour": [], "checkerboard": [], "random noise": [], "printed text": []}
    for i in range(N_PATCHES):
        out["flat colour"].append(np.full((s, s, 3), rng.integers(0, 256, 3), np.uint8))
        cells = ((np.indices((s, s)) // int(rng.integers(8, 64))).sum(0) % 2).astype(bool)
        board = np.empty((s, s, 3), np.uint8)
        board[cells], board[~cells] = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        out["checkerboard"].append(board)
        out["random noise"].append(rng.integers(0, 256, (s, s, 3), dtype=np.uint8))
        text = np.full((s, s, 3), rng.integers(150, 256, 3), np.uint8)
        ink = tuple(int(v) for v in rng.integers(0, 90, 3))
        for k, line in enumerate([f"LOT {rng.integers(100, 999)}", f"GR {rng.integers(1, 9)}-{rng.integers(10, 99)}", "EXPORT"]):
            cv2.putText(text, line, (10, 80 + 90 * k), cv2.FONT_HERSHEY_SIMPLEX, float(rng.uniform(1.2, 2.0)), ink, 4)
        out["printed text"].append(text)
    return out


def evidence(model: OnnxDefectModel, crops: list[np.ndarray]) -> list:
    ev = []
    for i in range(0, len(crops), 64):
        ev += model.predict(crops[i : i + 64])
    return ev


def judge(ev: list, reference: list | None) -> dict[str, float | int]:
    """Shares over each threshold; with ``reference`` (the model's own test crops), the AUROC of
    each signal for telling these crops from those, whatever the threshold."""
    n = len(ev)
    dist = np.array([e.ood_distance for e in ev], float)
    early = np.array([np.nan if e.ood_distance_early is None else e.ood_distance_early for e in ev], float)
    out: dict[str, float | int] = {
        "n": n,
        "distance": sum("distance" in e.ood_signals for e in ev) / n,
        "early_distance": sum("early-distance" in e.ood_signals for e in ev) / n,
        "energy": sum("energy" in e.ood_signals for e in ev) / n,
        "either": sum(bool(e.ood) for e in ev) / n,
        # not graded at all: the model's fruit check says the crop is not a fruit
        "not_fruit": sum(e.is_fruit is False for e in ev) / n,
        "caught": sum(bool(e.ood) or e.is_fruit is False for e in ev) / n,
        "median_distance": float(np.median(dist)),
        "median_early_distance": float(np.median(early)),
    }
    if reference is not None:
        y = np.r_[np.ones(n), np.zeros(len(reference))]
        out["auroc_distance"] = auc(y, np.r_[dist, [e.ood_distance for e in reference]])
        out["auroc_early_distance"] = auc(
            y, np.r_[early, [np.nan if e.ood_distance_early is None else e.ood_distance_early for e in reference]]
        )
        out["auroc_energy"] = auc(y, np.r_[[e.ood_score for e in ev], [e.ood_score for e in reference]])
    return out


def block_taps(graph) -> dict[str, str]:
    """The output of each block of a torchvision ``features`` stack (``/features/features.N/...``:
    MobileNet, EfficientNet), plus the pooled features the served distance uses."""
    from training import explain

    taps: dict[str, str] = {}
    for n in graph.graph.node:
        parts = n.name.split("/")
        if len(parts) > 2 and parts[1] == "features" and parts[2].startswith("features."):
            taps[parts[2]] = n.output[0]  # the block's last node
    if not taps:
        raise SystemExit("--blocks reads torchvision `features.N` blocks; this graph has none")
    taps["pooled (served)"] = explain.find_head(graph).pooled
    return taps


def blocks_report(artifact: Path, spec, own: dict[str, np.ndarray], train_labels: np.ndarray, sets: dict[str, list]) -> None:
    """Exploratory: the same Mahalanobis rule (training.feature_distance.fit_distance on the train crops, the
    0.99 quantile of the val crops as threshold) on the globally averaged output of every block, in
    numpy; share over the threshold and AUROC against the test crops, per crop set."""
    import onnx
    from onnx import TensorProto, helper

    from training import explain
    from training.feature_distance import fit_distance

    g = explain.strip_outputs(onnx.load(str(artifact / "model.onnx")))
    taps = block_taps(g)
    names = []
    for k, t in taps.items():
        if k == "pooled (served)":
            names.append(t)
        else:
            names.append(f"probe/{k}")
            g.graph.node.extend(
                [
                    helper.make_node("GlobalAveragePool", [t], [f"probe/{k}/4d"]),
                    helper.make_node("Flatten", [f"probe/{k}/4d"], [f"probe/{k}"]),
                ]
            )
        g.graph.output.append(helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, ["batch", "features"]))
    feats = {k: explain.run_graph(g, names, v, spec) for k, v in {**own, **sets}.items()}
    print("\nexploratory, per block (share over its own val-0.99 threshold / AUROC against the test crops):")
    print("| block | channels | test | " + " | ".join(sets) + " |")
    print("|---|---|---|" + "---|" * len(sets))
    for li, k in enumerate(taps):
        dm = fit_distance(feats["train"][li], train_labels)
        thr = np.quantile(dm.distance(feats["val"][li]), 0.99)
        dt = dm.distance(feats["test"][li])
        cells = []
        for name in sets:
            ds = dm.distance(feats[name][li])
            cells.append(f"{(ds > thr).mean():.0%} / {auc(np.r_[np.ones(len(ds)), np.zeros(len(dt))], np.r_[ds, dt]):.2f}")
        print(f"| {k} | {feats['train'][li].shape[1]} | {(dt > thr).mean():.1%} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, default=REPO / "models" / "apple-defect" / "0.3.0")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work-dir", type=Path, help="the artifact's crop cache (default var/train/<name>-<version>)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    ap.add_argument(
        "--blocks", action="store_true", help="also the exploratory per-block table: the same distance on each block's pooled output"
    )
    a = ap.parse_args(argv)
    t0 = time.time()
    model = OnnxDefectModel(a.artifact, threads=a.threads)
    spec = model.spec
    margin = spec.crop_margin_frac
    if spec.ood_distance_threshold is None:
        print(f"{a.artifact} has no ood_distance threshold: run python -m training.retrofit_explain on it first", file=sys.stderr)
        return 2
    from training.data import load_data

    cfg = yaml.safe_load((a.artifact / "config.yaml").read_text())
    work = a.work_dir or REPO / "var" / "train" / f"{spec.name}-{spec.version}"
    crops, labels, _sessions, _items, _digest = load_data(cfg, work)
    sets: dict[str, list[np.ndarray]] = {}
    for split in ("val", "test"):
        sets[f"{spec.name} {split} crops"] = list(crops[split])

    orchard = json.loads((a.data / "ecopom-apple-size" / "annotations.json").read_text())
    objects: dict[str, tuple[list, list]] = {"tennis_ball": ([], []), "apple": ([], [])}
    for frame in orchard:
        img = load_rgb(a.data / "ecopom-apple-size" / frame["image"])
        for o in frame["objects"]:
            if o["kind"] in objects:
                (x0, y0), (x1, y1) = o["box"]
                masked, plain = box_crops(img, (int(x0), int(y0), int(x1), int(y1)), margin)
                objects[o["kind"]][0].append(masked)
                objects[o["kind"]][1].append(plain)
    for kind, label in (("tennis_ball", "tennis balls (ecopom orchard frames)"), ("apple", "apples on the tree (ecopom)")):
        sets[f"{label}, masked"] = objects[kind][0]
        sets[f"{label}, unmasked"] = objects[kind][1]

    empty = [centred(load_rgb(p), margin) for p in sorted((a.data / "lemons" / "empty").glob("*.jpg"))]
    sets["empty belt frames (lemon set), masked"] = [m for m, _ in empty]
    sets["empty belt frames (lemon set), unmasked"] = [u for _, u in empty]

    for label, folders in (
        ("lemons (good + bad)", ["lemons/good", "lemons/bad"]),
        (
            "oranges (fresh-rotten + diseases)",
            [
                "oranges-fresh-rotten/good",
                "oranges-fresh-rotten/bad",
                "orange-diseases/fresh",
                "orange-diseases/blackspot",
                "orange-diseases/canker",
                "orange-diseases/greening",
            ],
        ),
    ):
        paths = sorted(p for f in folders for p in (a.data / f).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        sets[f"{label}, segmented like the service"] = [fruit_crop(load_rgb(p), margin) for p in paths]

    for kind, imgs in patches(np.random.default_rng(0)).items():
        cut = [centred(p, margin) for p in imgs]
        sets[f"synthetic {kind}, masked"] = [m for m, _ in cut]
        sets[f"synthetic {kind}, unmasked"] = [u for _, u in cut]

    test_ev = evidence(model, sets[f"{spec.name} test crops"])
    rows = {name: judge(evidence(model, c), None if name.startswith(spec.name) else test_ev) for name, c in sets.items()}
    early_thr = "none" if spec.ood_distance_early_threshold is None else f"{spec.ood_distance_early_threshold:.4g}"
    print(
        f"{spec.name} {spec.version}: thresholds ood_distance {spec.ood_distance_threshold:.4g}, ood_distance_early "
        f"{early_thr}, ood_energy {spec.ood_energy_threshold:.4g} (each the 0.99 quantile of the val crops), "
        f"fruit check {spec.fruit_threshold}"
    )
    print(
        "| crops | n | over ood_distance | over ood_distance_early | over ood_energy | any (flag `ood`) | not fruit (not graded) "
        "| flagged or not graded | median distance / early | AUROC vs test crops: distance / early / energy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        roc = f"{r['auroc_distance']:.2f} / {r['auroc_early_distance']:.2f} / {r['auroc_energy']:.2f}" if "auroc_distance" in r else "–"
        print(
            f"| {name} | {r['n']} | {r['distance']:.1%} | {r['early_distance']:.1%} | {r['energy']:.1%} | {r['either']:.1%} "
            f"| {r['not_fruit']:.1%} | {r['caught']:.1%} | {r['median_distance']:.1f} / {r['median_early_distance']:.1f} | {roc} |"
        )
    if a.blocks and spec.test_time_views > 1:
        # the block taps read the network's own tensors, which a views graph holds for every view
        parent = spec.raw.get("derived_from", {}).get("artifact")
        how = (
            f"({parent})"
            if parent
            else "(make one from the run that trained it: grader train --resume --set model.test_time_views=1 "
            "--set version=<v>-single --out DIR --work-dir <that run's work dir>)"
        )
        print(
            f"--blocks: {spec.name} {spec.version} averages {spec.test_time_views} views in its graph; the block table reads "
            f"the network's tensors one view at a time: run it on the single-view artifact of the same network {how}"
        )
    elif a.blocks:
        own = {"train": crops["train"], "val": crops["val"], "test": crops["test"]}
        blocks_report(
            a.artifact, spec, own, labels["train"], {k: v for k, v in sets.items() if not k.startswith(spec.name) and "unmasked" not in k}
        )
    print(f"({time.time() - t0:.0f} s)")
    if a.json:
        a.json.write_text(
            json.dumps(
                {
                    "artifact": str(a.artifact),
                    "ood_distance": spec.ood_distance_threshold,
                    "ood_distance_early": spec.ood_distance_early_threshold,
                    "ood_energy": spec.ood_energy_threshold,
                    "rows": rows,
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

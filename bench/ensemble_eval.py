"""Several defect models averaged, measured: would a line gain by averaging the opinions of networks
trained apart (other seeds, the rollbacks in models/) instead of serving one?

    .venv/bin/python bench/ensemble_eval.py models/apple-defect/0.3.0 models/apple-defect/0.2.0 [MORE ...]

Scores every artifact's val and test photos through the served ONNX graph on full-resolution crops,
as `grader evaluate` does (training/evaluate.py: evaluate_artifact; its reports land under
var/evaluate/), then averages the members' calibrated logits, log(p / (1 - p)), fruit by fruit. Each
row (every member alone, every combination of two or more) gets its own threshold, chosen on val by
the apple models' rule (the largest threshold keeping recall on defective fruit >= the first
artifact's thresholds.min_recall_defective), then applied to test. The artifacts must be of one data split
(the same manifest). Nothing here is used by the service: an average of N networks costs N times
the model's CPU per fruit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from training.evaluate import evaluate_artifact  # noqa: E402
from training.metrics import auc, binary_report, pick_threshold  # noqa: E402


def member_logits(artifact: Path, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(photo paths, defective truth, calibrated logit of P(defective)) of one artifact's split."""
    print(f"scoring {artifact} on its {split} photos ...", file=sys.stderr, flush=True)
    report, _ = evaluate_artifact(artifact, split=split, latency_repeats=1)  # the latency is not used here
    rows = sorted(report["scores"], key=lambda r: r["path"])
    p = np.clip(np.array([r["score"] for r in rows], dtype=np.float64), 1e-7, 1 - 1e-7)
    return [r["path"] for r in rows], np.array([r["label"] != "sound" for r in rows]), np.log(p / (1 - p))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="also write every figure here")
    args = ap.parse_args()
    if len(args.artifacts) < 2:
        ap.error("give two or more artifacts")
    min_recall = float(json.loads((args.artifacts[0] / "metadata.json").read_text())["config"]["thresholds"]["min_recall_defective"])
    z: dict[str, dict[str, np.ndarray]] = {"val": {}, "test": {}}
    truth: dict[str, np.ndarray] = {}
    for split, by_model in z.items():
        for art in args.artifacts:
            paths, y, logit = member_logits(art, split)
            if split in truth and (paths != truth[split + "_paths"] or not np.array_equal(y, truth[split])):
                raise SystemExit(f"{art}: its {split} photos are not those of {args.artifacts[0]} (another data split)")
            truth[split], truth[split + "_paths"] = y, paths
            by_model[str(art)] = logit
    names = [str(a) for a in args.artifacts]
    metas = {str(a): json.loads((a / "metadata.json").read_text()) for a in args.artifacts}
    same_name = len({m["name"] for m in metas.values()}) == 1
    short = {n: m["version"] if same_name else f"{m['name']} {m['version']}" for n, m in metas.items()}
    print(f"threshold per row: the largest keeping val recall on defective >= {min_recall}; logits averaged fruit by fruit")
    print(f"{'models':40s} {'val bal.acc':>11s} {'val AUC':>8s} {'test bal.acc':>12s} {'test AUC':>8s} {'test recall def / sound':>24s}")
    rows = []
    for k in range(1, len(names) + 1):
        for combo in itertools.combinations(names, k):
            s = {split: 1 / (1 + np.exp(-np.mean([z[split][m] for m in combo], axis=0))) for split in z}
            t = pick_threshold(truth["val"].astype(int), s["val"], min_recall)
            rep = {split: binary_report(truth[split].astype(int), s[split], t) for split in z}
            row = {
                "models": list(combo),
                "threshold": t,
                **{f"{split}_{key}": rep[split][key] for split in z for key in ("balanced_accuracy", "recall_defective", "recall_sound")},
                "val_auc": auc(truth["val"].astype(int), s["val"]),
                "test_auc": auc(truth["test"].astype(int), s["test"]),
            }
            rows.append(row)
            label = " + ".join(short[m] for m in combo)
            print(
                f"{label:40s} {row['val_balanced_accuracy']:11.3f} {row['val_auc']:8.3f} {row['test_balanced_accuracy']:12.3f} "
                f"{row['test_auc']:8.3f} {row['test_recall_defective']:11.3f} / {row['test_recall_sound']:.3f}"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()

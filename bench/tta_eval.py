"""Test-time augmentation, measured: does averaging a defect model's logits over the eight flips and
quarter turns of each fruit crop (a fruit on a belt has no up and no handedness) sort the held-out
fruit better than the one crop the service judges today?

    .venv/bin/python bench/tta_eval.py [--model models/apple-defect/0.1.0] [--work-dir var/train/tta]

Remakes the artifact's val and test crops exactly as training made them (training.train.load_data
with the artifact's config.yaml; the first run builds the crop cache from ../shared/data, about a
minute), runs the served ONNX graph on every view, and prints balanced accuracy and ROC AUC of
sound vs defective for: the crop alone, the four flips (none, horizontal, vertical, both), the four
quarter turns, and all eight symmetries of the square. Each way gets its own threshold, chosen on val as training chooses
it (the largest keeping recall on defective fruit >= thresholds.min_recall_defective), then applied
to test. Nothing here is used by the service: it is the measurement behind docs/lab/defect_model.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from grader.defect import preprocess, softmax  # noqa: E402
from inference.onnx_model import OnnxDefectModel  # noqa: E402
from training.config import is_defective  # noqa: E402
from training.data import load_data  # noqa: E402
from training.metrics import binary_report, pick_threshold  # noqa: E402


def symmetries(x: np.ndarray, axes: tuple[int, int]) -> dict[str, np.ndarray]:
    """The eight symmetries of the square image(s) in ``x`` whose rows and columns are ``axes``:
    (1, 2) for crops (N, H, W, 3), (2, 3) for a preprocessed batch (N, 3, H, W). Views, no copies."""
    h, w = axes
    t = np.swapaxes(x, h, w)
    return {
        "identity": x,
        "flip left-right": np.flip(x, w),
        "flip up-down": np.flip(x, h),
        "turn 180": np.flip(x, axes),
        "turn 90": np.rot90(x, 1, axes),
        "turn 270": np.rot90(x, 3, axes),
        "transpose": t,
        "anti-transpose": np.flip(t, axes),
    }


WAYS = {
    "crop alone": ["identity"],
    "4 flips": ["identity", "flip left-right", "flip up-down", "turn 180"],
    "4 turns": ["identity", "turn 90", "turn 180", "turn 270"],
    "8 symmetries": ["identity", "flip left-right", "flip up-down", "turn 180", "turn 90", "turn 270", "transpose", "anti-transpose"],
}


def logits_of(model: OnnxDefectModel, crops: np.ndarray, batch: int = 64) -> np.ndarray:
    out = []
    for i in range(0, len(crops), batch):
        x = preprocess(list(crops[i : i + batch]), model.spec)
        out.append(model.session.run([model.spec.output_name], {model.spec.input_name: x})[0])
    return np.concatenate(out)


def cpu_ms_per_fruit(model: OnnxDefectModel, crops: np.ndarray, repeats: int = 20) -> dict[int, float]:
    """Process CPU milliseconds per fruit to preprocess ``crops`` once, take 1, 4 or 8 views of the
    batch and run them as one call."""
    import time

    out = {}
    for n, names in ((1, WAYS["crop alone"]), (4, WAYS["4 flips"]), (8, WAYS["8 symmetries"])):

        def once() -> None:
            every = symmetries(preprocess(list(crops), model.spec), (2, 3))  # one resize per fruit, then the tensor turned
            views = np.ascontiguousarray(np.concatenate([every[name] for name in names]))
            model.session.run([model.spec.output_name], {model.spec.input_name: views})

        once()  # warm
        t0 = time.process_time()
        for _ in range(repeats):
            once()
        out[n] = 1000 * (time.process_time() - t0) / (repeats * len(crops))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=REPO / "models" / "apple-defect" / "0.1.0")
    ap.add_argument("--work-dir", type=Path, default=REPO / "var" / "train" / "tta")
    ap.add_argument(
        "--threads", type=int, default=1, help="ONNX Runtime threads (1: as each worker of `grader serve --workers 2` on 2 cores)"
    )
    args = ap.parse_args()

    cfg = yaml.safe_load((args.model / "config.yaml").read_text())
    crops, labels, _, _, _ = load_data(cfg, args.work_dir)
    model = OnnxDefectModel(args.model, threads=args.threads)
    if model.spec.test_time_views > 1:
        sys.exit(f"{args.model}: its graph already averages {model.spec.test_time_views} views of the crop; measure a single-view artifact")
    sound = [i for i, c in enumerate(model.spec.classes) if c not in model.spec.defective_classes]
    min_recall = float(cfg["thresholds"].get("min_recall_defective", 0.95))
    logits = {
        split: {name: logits_of(model, np.ascontiguousarray(v)) for name, v in symmetries(crops[split], (1, 2)).items()}
        for split in ("val", "test")
    }
    y = {split: is_defective(labels[split], cfg) for split in ("val", "test")}
    print(
        f"{args.model}: val {len(y['val'])} crops, test {len(y['test'])} crops; threshold per way from val (recall defective >= {min_recall:g})"
    )
    per_fruit = cpu_ms_per_fruit(model, np.ascontiguousarray(crops["val"][:16]))
    print(
        "CPU per fruit, ONNX Runtime on "
        + str(args.threads)
        + " thread(s), 16 fruit per call (preprocessing included): "
        + ", ".join(f"{n} view{'s' if n > 1 else ''} {ms:.2f} ms" for n, ms in per_fruit.items())
    )
    print(
        f"{'views averaged':<14} {'val bal.acc':>11} {'val AUC':>8} {'test bal.acc':>12} {'test AUC':>9} {'test recall def':>16} {'threshold':>10}"
    )
    for way, names in WAYS.items():
        score = {
            split: 1.0 - softmax(np.mean([logits[split][n] for n in names], axis=0), model.spec.temperature)[:, sound].sum(axis=1)
            for split in ("val", "test")
        }
        t = pick_threshold(y["val"], score["val"], min_recall)
        val, test = (binary_report(y[split], score[split], t) for split in ("val", "test"))
        print(
            f"{way:<14} {val['balanced_accuracy']:>11.3f} {val['auc']:>8.3f} {test['balanced_accuracy']:>12.3f} {test['auc']:>9.3f} "
            f"{test['recall_defective']:>16.3f} {t:>10.3f}"
        )


if __name__ == "__main__":
    main()

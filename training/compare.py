"""Compare a candidate defect model with the model in service, on the same data, before promoting it.

Usage::

    grader compare CURRENT CANDIDATE --data DIR [--split test] [--out DIR] [--gate key=value ...]
                   [--threads N] [--latency-repeats 15] [--gates-file FILE]
    grader compare models models/apple-defect/0.3.0 --data var/datasets/apples-2026-11
    grader compare models cand/ --data ds/ --gate min_defective_recall=0.97 --gate max_ece=null

CURRENT and CANDIDATE are model artifact directories (model.onnx + metadata.json) or directories
whose DEFAULT file points at one (``models/``). DIR holds a ``manifest.json``::

    {"sha256": "...", "classes": ["sound", "defective"],
     "items": [{"path": "crops/test/defective/abc_0.jpg", "kind": "crop", "label": "defective",
                "split": "test", "session": "cam-1/2026-11-29", "lot": "L-1", "sha256": "..."}, ...]}

Items of ``kind: crop`` are fruit crops already; ``kind: image`` items are whole photos, cropped
with :func:`training.crops.fruit_crop` at each model's own ``crop_margin_frac`` as training does.
Paths are relative to DIR or absolute. Labels other than ``sound`` count as defective.

Both models score every item of the split. For each model the report gives balanced accuracy,
recall on defective and on sound fruit, AUC, expected calibration error and the confusion matrix
at the model's own threshold, the same per capture session and per lot, latency per crop at batch
1 and 16 (median of a few timed runs, the two models interleaved), and the items on which the two
models' labels disagree. The candidate is then held to the gates in
``training/configs/compare_gates.yaml`` (``--gate key=value`` overrides one, ``key=null`` switches
it off): the verdict is ``promote`` when every gate passes, else ``keep current``.

Written to --out (default ``var/compare/<current-version>-vs-<candidate-version>``): report.json,
report.md, roc.png, reliability.png and confusion.png.

Exit status: 0 promote, 1 keep current (a gate failed), 2 bad input (missing directory, manifest
without the split, unreadable image, invalid model artifact, unknown gate...).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from training.evaluation import (
    LATENCY_BATCHES,
    LATENCY_NOISY_IQR,
    LATENCY_REPEATS,
    NO_LOT,
    CompareInputError,
    evaluate,
    fmt,
    grouped,
    load_dataset,
    load_model,
    measure_latency,
    reliability_bins,
    score_items,
    write_figures,
)
from training.metrics import json_safe

DEFAULT_GATES = Path(__file__).parent / "configs" / "compare_gates.yaml"


ROLES = ("current", "candidate")


MD_MAX_DISAGREEMENTS = 30


EXIT_PROMOTE, EXIT_KEEP, EXIT_BAD_INPUT = 0, 1, 2


@dataclass(frozen=True)
class Gate:
    key: str
    kind: str  # "min": measured >= limit passes; "max": measured <= limit passes
    description: str
    measure: Callable[[dict[str, dict[str, Any]]], float]


def _m(role: str, key: str) -> Callable[[dict[str, dict[str, Any]]], float]:
    return lambda models: float(models[role]["metrics"][key])


GATES: dict[str, Gate] = {
    g.key: g
    for g in (
        Gate(
            "min_balanced_accuracy_gain",
            "min",
            "candidate balanced accuracy − current's",
            lambda m: _m("candidate", "balanced_accuracy")(m) - _m("current", "balanced_accuracy")(m),
        ),
        Gate("min_defective_recall", "min", "candidate recall on defective fruit", _m("candidate", "recall_defective")),
        Gate("max_ece", "max", "candidate expected calibration error", _m("candidate", "ece")),
        Gate(
            "max_latency_ratio",
            "max",
            "candidate / current latency per crop at batch 16",
            lambda m: m["candidate"]["latency_ms_per_crop"]["batch_16"] / m["current"]["latency_ms_per_crop"]["batch_16"],
        ),
        Gate("min_sound_recall", "min", "candidate recall on sound fruit", _m("candidate", "recall_sound")),
        Gate("min_auc_gain", "min", "candidate AUC − current's", lambda m: _m("candidate", "auc")(m) - _m("current", "auc")(m)),
    )
}


def _limit(key: str, value: Any, source: str) -> float | None:
    if key not in GATES:
        raise CompareInputError(f"{source}: unknown gate {key!r} (known: {', '.join(GATES)})")
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "off", "null", "")):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise CompareInputError(f"{source}: gate {key} needs a number or null, got {value!r}")
    return float(value)


def load_gates(path: Path = DEFAULT_GATES, overrides: Sequence[str] = ()) -> dict[str, float | None]:
    """Gate limits from the YAML file, then ``key=value`` overrides; None switches a gate off."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise CompareInputError(f"gates file {path}: {exc}") from exc
    if not isinstance(raw, dict):
        raise CompareInputError(f"gates file {path}: expected a mapping of gate: limit")
    limits = {str(k): _limit(str(k), v, str(path)) for k, v in raw.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CompareInputError(f"--gate {item!r} must look like key=value")
        try:
            parsed = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise CompareInputError(f"--gate {item!r}: {exc}") from exc
        limits[key.strip()] = _limit(key.strip(), parsed, "--gate")
    return limits


def check_gates(limits: dict[str, float | None], models: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Measured value, limit and outcome per gate; a gate that cannot be measured (NaN) fails."""
    out = []
    for key, limit in limits.items():
        gate = GATES[key]
        row: dict[str, Any] = {"gate": key, "description": gate.description, "kind": gate.kind, "limit": limit}
        if limit is None:
            row.update(measured=None, passed=None, note="switched off")
        else:
            measured = gate.measure(models)
            if not math.isfinite(measured):
                row.update(measured=None, passed=False, note="not measurable on this split")
            else:
                ok = measured >= limit if gate.kind == "min" else measured <= limit
                row.update(measured=measured, passed=bool(ok), note="")
        out.append(row)
    return out


def _delta(a: Any, b: Any, digits: int = 3) -> str:
    if any(v is None or not math.isfinite(v) for v in (a, b)):
        return "—"
    return f"{b - a:+.{digits}f}"


def render_markdown(report: dict[str, Any]) -> str:
    cur, cand = report["models"]["current"], report["models"]["candidate"]
    mc, md = cur["metrics"], cand["metrics"]
    d = report["data"]
    lines = [
        f"# {cand['name']} {cand['version']} (candidate) vs {cur['name']} {cur['version']} (current)",
        "",
        (
            f"Data: `{d['dir']}`, split **{d['split']}**: {d['n']} items ({d['n_defective']} defective, "
            f"{d['n_sound']} sound; {d['n_image']} whole images cropped, {d['n_crop']} crops), "
            f"manifest sha256 `{d['manifest_sha256'] or d['manifest_file_sha256']}`."
        ),
        "",
        f"**Verdict: {report['verdict']}**"
        + (f" — failing gates: {', '.join(report['failing_gates'])}" if report["failing_gates"] else ""),
        "",
        "## Side by side",
        "",
        f"| | current {cur['version']} | candidate {cand['version']} | Δ (candidate − current) |",
        "|---|---:|---:|---:|",
    ]
    rows = [
        ("balanced accuracy", "balanced_accuracy"),
        ("recall defective", "recall_defective"),
        ("recall sound", "recall_sound"),
        ("accuracy", "accuracy"),
        ("AUC", "auc"),
        ("ECE (10 bins)", "ece"),
        ("threshold", "threshold"),
    ]
    for name, key in rows:
        lines.append(f"| {name} | {fmt(mc[key])} | {fmt(md[key])} | {_delta(mc[key], md[key])} |")
    lines.append(f"| temperature | {fmt(cur['temperature'])} | {fmt(cand['temperature'])} | |")
    for b in LATENCY_BATCHES:
        a, c = cur["latency_ms_per_crop"][f"batch_{b}"], cand["latency_ms_per_crop"][f"batch_{b}"]
        lines.append(f"| latency ms/crop, batch {b} | {fmt(a, 2)} | {fmt(c, 2)} | ×{c / a:.2f} |")
    cells = [" / ".join(str(v) for row in m["confusion"]["matrix"] for v in row) for m in (mc, md)]
    lines.append(f"| confusion TN / FP / FN / TP | {cells[0]} | {cells[1]} | |")
    lines += ["", "## Gates", "", "| gate | measured | limit | result |", "|---|---:|---:|---|"]
    for g in report["gates"]:
        op = "≥" if g["kind"] == "min" else "≤"
        result = "off" if g["passed"] is None else ("pass" if g["passed"] else "**FAIL**")
        note = f" ({g['note']})" if g["note"] else ""
        limit = "—" if g["limit"] is None else f"{op} {g['limit']:g}"
        lines.append(f"| `{g['gate']}`: {g['description']} | {fmt(g['measured'])} | {limit} | {result}{note} |")

    dis = report["disagreements"]
    lines += [
        "",
        "## Disagreements",
        "",
        (
            f"{dis['count']} of {d['n']} items get different labels (each model at its own threshold): "
            f"the candidate is right on {dis['candidate_right']}, the current model on {dis['current_right']}."
        ),
        "",
    ]
    if dis["items"]:
        shown = dis["items"][:MD_MAX_DISAGREEMENTS]
        lines += ["| path | truth | current score → label | candidate score → label | session | lot |", "|---|---|---:|---:|---|---|"]
        for it in shown:
            lines.append(
                f"| `{it['path']}` | {it['label']} | {it['current_score']:.3f} → {it['current_label']} | "
                f"{it['candidate_score']:.3f} → {it['candidate_label']} | {it['session']} | {it['lot'] or '—'} |"
            )
        if len(dis["items"]) > len(shown):
            lines.append(f"\n… {len(dis['items']) - len(shown)} more in report.json.")

    for title, key in (("Per session", "per_session"), ("Per lot", "per_lot")):
        lines += [
            "",
            f"## {title}",
            "",
            (
                "| group | n | bal. acc. cur | bal. acc. cand | recall def. cur | recall def. cand "
                "| recall sound cur | recall sound cand | ECE cur | ECE cand | disagree |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for group, gc in cur[key].items():
            gd = cand[key][group]
            lines.append(
                f"| {group} | {gc['n']} | {fmt(gc['balanced_accuracy'])} | {fmt(gd['balanced_accuracy'])} | "
                f"{fmt(gc['recall_defective'])} | {fmt(gd['recall_defective'])} | {fmt(gc['recall_sound'])} | "
                f"{fmt(gd['recall_sound'])} | {fmt(gc['ece'])} | {fmt(gd['ece'])} | {dis[key].get(group, 0)} |"
            )

    figs = report["figures"]
    lines += [
        "",
        "## Figures",
        "",
        f"![ROC curves of both models]({figs['roc']})",
        "",
        f"![Reliability diagrams]({figs['reliability']})",
        "",
        f"![Confusion matrices at each model's own threshold]({figs['confusion']})",
        "",
        "Latency: median of "
        f"{report['latency_repeats']} timed `OnnxDefectModel.run` calls per batch size, models interleaved, "
        f"{report['threads'] or 'all'} ONNX Runtime thread(s)"
        + (
            f"; **noisy** for {' and '.join(report['latency_noisy'])} (interquartile range over "
            f"{LATENCY_NOISY_IQR:.0%} of the median: rerun on a quiet machine before trusting the latency gate)."
            if report["latency_noisy"]
            else "."
        ),
        "",
    ]
    return "\n".join(lines)


def summary(report: dict[str, Any], out: Path) -> str:
    cur, cand = report["models"]["current"], report["models"]["candidate"]
    d = report["data"]
    lines = [
        (
            f"compare: current {cur['name']} {cur['version']} vs candidate {cand['name']} {cand['version']} "
            f"on {d['dir']} [{d['split']}: {d['n']} items, {d['n_defective']} defective, {d['n_sound']} sound]"
        ),
        f"  {'':<24}{'current':>10}{'candidate':>11}",
    ]
    for name, key in (
        ("balanced accuracy", "balanced_accuracy"),
        ("recall defective", "recall_defective"),
        ("recall sound", "recall_sound"),
        ("AUC", "auc"),
        ("ECE", "ece"),
        ("threshold", "threshold"),
    ):
        lines.append(f"  {name:<24}{fmt(cur['metrics'][key]):>10}{fmt(cand['metrics'][key]):>11}")
    for b in LATENCY_BATCHES:
        k = f"batch_{b}"
        lines.append(
            f"  {f'latency b{b} ms/crop':<24}{fmt(cur['latency_ms_per_crop'][k], 2):>10}{fmt(cand['latency_ms_per_crop'][k], 2):>11}"
        )
    if report["latency_noisy"]:
        lines.append(f"  (latency noisy for {' and '.join(report['latency_noisy'])}: machine busy? rerun before trusting it)")
    lines.append(f"  disagreements: {report['disagreements']['count']} of {d['n']}")
    for g in report["gates"]:
        if g["passed"] is None:
            continue
        op = "≥" if g["kind"] == "min" else "≤"
        lines.append(f"  gate {g['gate']}: {fmt(g['measured'])} {op} {g['limit']:g} -> {'pass' if g['passed'] else 'FAIL'}")
    verdict = report["verdict"] + (f" (failing: {', '.join(report['failing_gates'])})" if report["failing_gates"] else "")
    lines += [f"verdict: {verdict}", f"report: {out / 'report.md'}"]
    return "\n".join(lines)


def compare(
    current: Path,
    candidate: Path,
    data: Path,
    split: str = "test",
    out: Path | None = None,
    gate_overrides: Sequence[str] = (),
    gates_file: Path = DEFAULT_GATES,
    threads: int = 0,
    latency_repeats: int = LATENCY_REPEATS,
) -> tuple[dict[str, Any], Path]:
    """Run the whole comparison and write the report; returns (report, out dir)."""
    if latency_repeats < 1:
        raise CompareInputError(f"latency repeats must be at least 1, got {latency_repeats}")
    limits = load_gates(gates_file, gate_overrides)  # bad gates fail before any model runs
    dataset = load_dataset(data, split)
    models = {"current": load_model(current, "current", threads), "candidate": load_model(candidate, "candidate", threads)}
    y = dataset.y
    sessions = [it.session for it in dataset.items]
    lots = [it.lot or NO_LOT for it in dataset.items]

    scores, sample = score_items(dataset.items, models)
    latency = measure_latency([models[r] for r in ROLES], [sample[r] for r in ROLES], repeats=latency_repeats)

    runs: dict[str, dict[str, Any]] = {}
    for (role, model), lat in zip(models.items(), latency):
        s = scores[role]
        thr = model.spec.threshold_defective
        runs[role] = {
            "dir": str(model.model_dir),
            "name": model.spec.name,
            "version": model.spec.version,
            "onnx_sha256": model.sha256,
            "temperature": model.spec.temperature,
            "crop_margin_frac": model.spec.crop_margin_frac,
            "input_size": list(model.spec.input_size),
            "scores": s,
            "predicted": s >= thr,
            "metrics": evaluate(y, s, thr),
            "per_session": grouped(sessions, y, s, thr),
            "per_lot": grouped(lots, y, s, thr),
            "reliability": reliability_bins(y.astype(float), s),
            "latency_ms_per_crop": lat,
        }

    cur_pred, cand_pred = runs["current"]["predicted"], runs["candidate"]["predicted"]
    truth = y.astype(bool)
    disagree = np.flatnonzero(cur_pred != cand_pred)
    name = {True: "defective", False: "sound"}
    dis_items = [
        {
            "path": dataset.items[i].path,
            "kind": dataset.items[i].kind,
            "label": dataset.items[i].label,
            "session": dataset.items[i].session,
            "lot": dataset.items[i].lot,
            "current_score": float(runs["current"]["scores"][i]),
            "current_label": name[bool(cur_pred[i])],
            "candidate_score": float(runs["candidate"]["scores"][i]),
            "candidate_label": name[bool(cand_pred[i])],
        }
        for i in disagree
    ]
    disagreements = {
        "count": len(disagree),
        "candidate_right": int((cand_pred[disagree] == truth[disagree]).sum()),
        "current_right": int((cur_pred[disagree] == truth[disagree]).sum()),
        "per_session": {k: sum(1 for i in disagree if sessions[i] == k) for k in sorted(set(sessions))},
        "per_lot": {k: sum(1 for i in disagree if lots[i] == k) for k in sorted(set(lots))},
        "items": dis_items,
    }

    gates = check_gates(limits, runs)
    noisy = [
        role
        for role, r in runs.items()
        if r["latency_ms_per_crop"]["iqr"]["batch_16"] > LATENCY_NOISY_IQR * r["latency_ms_per_crop"]["batch_16"]
    ]
    for g in gates:
        if g["gate"] == "max_latency_ratio" and noisy and g["passed"] is not None:
            g["note"] = f"latency of {' and '.join(noisy)} noisy (IQR > {LATENCY_NOISY_IQR:.0%} of median): machine busy?"
    failing = [g["gate"] for g in gates if g["passed"] is False]
    if out is None:
        out = Path("var") / "compare" / f"{runs['current']['version']}-vs-{runs['candidate']['version']}"
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        figures = write_figures(out, y, runs)
    except OSError as exc:
        raise CompareInputError(f"cannot write to {out}: {exc}") from exc

    report: dict[str, Any] = {
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "dir": str(dataset.root),
            "split": split,
            "classes": dataset.classes,
            "manifest_sha256": dataset.manifest_sha256,
            "manifest_file_sha256": dataset.manifest_file_sha256,
            "n": len(dataset.items),
            "n_defective": int(y.sum()),
            "n_sound": int(len(y) - y.sum()),
            "n_image": sum(it.kind == "image" for it in dataset.items),
            "n_crop": sum(it.kind == "crop" for it in dataset.items),
        },
        "models": {role: {k: v for k, v in r.items() if k not in ("scores", "predicted")} for role, r in runs.items()},
        "disagreements": disagreements,
        "gates": gates,
        "verdict": "keep current" if failing else "promote",
        "failing_gates": failing,
        "figures": figures,
        "latency_repeats": latency_repeats,
        "latency_noisy": noisy,
        "threads": threads,
        "scores": [
            {"path": it.path, "label": it.label, "current": float(a), "candidate": float(b)}
            for it, a, b in zip(dataset.items, runs["current"]["scores"], runs["candidate"]["scores"])
        ],
    }
    report = json_safe(report)
    try:
        (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False))
        (out / "report.md").write_text(render_markdown(report))
    except OSError as exc:
        raise CompareInputError(f"cannot write to {out}: {exc}") from exc
    return report, out


def run_args(args: argparse.Namespace) -> int:
    """The `grader compare` subcommand on parsed arguments: prints a summary, returns the exit status."""
    try:
        report, out = compare(
            Path(args.current),
            Path(args.candidate),
            Path(args.data),
            split=args.split,
            out=Path(args.out) if args.out else None,
            gate_overrides=args.gate,
            gates_file=Path(args.gates_file) if args.gates_file else DEFAULT_GATES,
            threads=args.threads,
            latency_repeats=args.latency_repeats,
        )
    except CompareInputError as exc:
        print(f"grader compare: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(summary(report, out))
    return EXIT_PROMOTE if report["verdict"] == "promote" else EXIT_KEEP


def main(argv: list[str] | None = None) -> int:
    """``python -m training.compare CURRENT CANDIDATE --data DIR ...``: the same as ``grader compare``."""
    from training.commands import main as command_main

    return command_main("compare", argv)


if __name__ == "__main__":
    raise SystemExit(main())

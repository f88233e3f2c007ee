"""``grader evaluate ARTIFACT``: one model's figures on the held-out split its own manifest names.

    grader evaluate models/orange-defect/0.3.0 [--data DIR] [--split test] [--out DIR]

The artifact's ``manifest.json`` (written by ``grader train``) lists every photo with its label,
split, capture session or source, and sha256; each file of the split is checked against its hash,
so the figures are of exactly the photos the model was tested on. Every photo goes through the
crop the model saw in training (the largest segmented fruit, background painted out:
``training.crops.fruit_crop``, with the fruit finder's settings the metadata records in
``preprocessing.crop_segmentation``, the defaults where it records none) and the served ONNX graph with its metadata's temperature and
threshold (``inference.onnx_model.OnnxDefectModel``), so the figures reproduce
``metadata.json: metrics.<split>``.

Written to ``--out`` (default ``var/evaluate/<name>-<version>-<split>``): ``report.json``,
``report.md``, and figures: ``roc.png``, ``reliability.png``, ``confusion.png`` and, for a model
that tells defect types apart, ``types.png`` (the type confusion among truly defective fruit).
Overall and per group (capture session for apples, photo source for citrus): balanced accuracy,
recall on defective and on sound fruit, ROC AUC, expected calibration error; CPU latency per crop at
batch 1 and 16. Exit status 0, or 2 for bad input (missing or changed photos, a bad artifact).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from datasets.fruitnet import file_sha256
from training import compare, evaluation
from training.evaluation import CompareInputError, Dataset, Item
from training.metrics import json_safe

REPO = Path(__file__).resolve().parents[1]


def data_root(artifact: Path, data: Path | None) -> Path:
    """Where the manifest's paths are rooted: the config's ``data.root`` (relative to the repo) by
    default; with ``data`` given, ``data`` itself, or its folder of the config's root name when the
    manifest's paths are relative to that (``--data ../shared/data`` for apples under
    ``../shared/data/fruitnet-apples``)."""
    import yaml

    cfg_path = Path(artifact) / "config.yaml"
    root = (yaml.safe_load(cfg_path.read_text()) or {}).get("data", {}).get("root") if cfg_path.is_file() else None
    if data is None:
        if not root:
            raise CompareInputError(f"{artifact}/config.yaml names no data.root: pass --data")
        return Path(root) if Path(root).is_absolute() else (REPO / root).resolve()
    first = next(iter(json.loads((Path(artifact) / "manifest.json").read_text())["items"]), None)
    if root and first and not (Path(data) / first["path"]).exists() and (Path(data) / Path(root).name / first["path"]).exists():
        return Path(data) / Path(root).name
    return Path(data)


def artifact_dataset(artifact: Path, data: Path, split: str, check_hashes: bool = True) -> Dataset:
    """The split of an artifact's own manifest, resolved under ``data`` and checked against the
    recorded hashes. Items whose label is not a model class (the lemon set's empty frames) are left
    out: they are not fruit."""
    manifest_path = Path(artifact) / "manifest.json"
    if not manifest_path.is_file():
        raise CompareInputError(f"{artifact} has no manifest.json (written by `grader train`)")
    meta = json.loads((Path(artifact) / "metadata.json").read_text())
    classes = [str(c) for c in meta["classes"]]
    raw = manifest_path.read_bytes()
    manifest = json.loads(raw)
    entries = [e for e in manifest["items"] if e.get("split") == split and e.get("label") in classes]
    if not entries:
        raise CompareInputError(f"{manifest_path} has no items of the model's classes in split {split!r}")
    if not Path(data).is_dir():
        raise CompareInputError(f"no data directory at {data} (the photos the manifest names)")
    items, missing, changed = [], [], []
    for e in entries:
        file = Path(data) / e["path"]
        if not file.is_file():
            missing.append(e["path"])
            continue
        if check_hashes and e.get("sha256") and file_sha256(file) != e["sha256"]:
            changed.append(e["path"])
            continue
        group = e.get("session") or e.get("source") or "(none)"
        items.append(
            Item(path=e["path"], file=file, kind="image", label=e["label"], defective=e["label"] != "sound", session=str(group), lot=None)
        )
    if missing or changed:
        what = [f"{len(missing)} missing (e.g. {missing[0]})"] if missing else []
        what += [f"{len(changed)} changed since training (e.g. {changed[0]})"] if changed else []
        raise CompareInputError(f"photos of split {split!r} under {data}: {'; '.join(what)}")
    return Dataset(
        root=Path(data),
        split=split,
        items=items,
        classes=classes,
        manifest_sha256=manifest.get("sha256"),
        manifest_file_sha256=hashlib.sha256(raw).hexdigest(),
    )


def _type_report(items: list[Item], types: list[str | None], defective_classes: list[str]) -> dict[str, Any] | None:
    """Among truly defective fruit: the most probable defective class against the true one."""
    if len(defective_classes) < 2:
        return None
    pairs = [(it.label, t) for it, t in zip(items, types) if it.defective and t is not None]
    if not pairs:
        return None
    idx = {c: i for i, c in enumerate(defective_classes)}
    mat = np.zeros((len(defective_classes), len(defective_classes)), int)
    for true, pred in pairs:
        mat[idx[true], idx[pred]] += 1
    recall = {c: float(mat[i, i] / mat[i].sum()) if mat[i].sum() else None for c, i in idx.items()}
    return {
        "n": len(pairs),
        "accuracy": float(np.trace(mat) / mat.sum()),
        "recall": recall,
        "confusion": {"labels": defective_classes, "matrix": mat.tolist()},
    }


def _types_figure(out: Path, types: dict[str, Any]) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels, mat = types["confusion"]["labels"], np.asarray(types["confusion"]["matrix"])
    fig = Figure(figsize=(1.3 * len(labels) + 2, 1.1 * len(labels) + 1.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(mat, cmap="Purples", vmin=0, vmax=max(int(mat.max()), 1))
    for (i, j), v in np.ndenumerate(mat):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=12, color="white" if v > mat.max() / 2 else "black")
    ax.set_xticks(range(len(labels)), labels)
    ax.set_yticks(range(len(labels)), labels)
    ax.set(
        xlabel="most probable defect type",
        ylabel="true type",
        title=f"defect types among defective fruit: accuracy {types['accuracy']:.3f}",
    )
    fig.tight_layout()
    fig.savefig(out / "types.png", dpi=110)
    return "types.png"


def evaluate_artifact(
    artifact: Path,
    data: Path | None = None,
    split: str = "test",
    out: Path | None = None,
    threads: int = 0,
    latency_repeats: int = evaluation.LATENCY_REPEATS,
) -> tuple[dict[str, Any], Path]:
    model = evaluation.load_model(Path(artifact), "evaluated", threads)
    spec = model.spec
    if not (Path(artifact) / "manifest.json").is_file():
        raise CompareInputError(f"{artifact} has no manifest.json (written by `grader train`)")
    dataset = artifact_dataset(Path(artifact), data_root(Path(artifact), None if data is None else Path(data)), split)
    y = dataset.y
    scores, types, sample = [], [], []
    for i in range(0, len(dataset.items), evaluation.SCORE_BATCH):
        crops = evaluation.load_crops(dataset.items[i : i + evaluation.SCORE_BATCH], spec.crop_margin_frac, spec.crop_segmentation)
        sample.extend(crops[: max(evaluation.LATENCY_BATCHES) - len(sample)])
        for ev in model.predict(crops):
            scores.append(ev.score)
            tp = ev.type_probabilities
            types.append(max(tp, key=tp.get) if tp else None)
    s = np.asarray(scores, dtype=np.float64)
    thr = spec.threshold_defective
    [latency] = evaluation.measure_latency([model], [sample], repeats=latency_repeats)
    groups = [it.session for it in dataset.items]
    run = {
        "dir": str(model.model_dir),
        "name": spec.name,
        "version": spec.version,
        "onnx_sha256": model.sha256,
        "temperature": spec.temperature,
        "crop_margin_frac": spec.crop_margin_frac,
        "input_size": list(spec.input_size),
        "scores": s,
        "metrics": evaluation.evaluate(y, s, thr),
        "per_group": evaluation.grouped(groups, y, s, thr),
        "reliability": evaluation.reliability_bins(y.astype(float), s),
        "latency_ms_per_crop": latency,
    }
    type_rep = _type_report(dataset.items, types, list(spec.defective_classes))
    if out is None:
        out = REPO / "var" / "evaluate" / f"{spec.name}-{spec.version}-{split}"
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        figures = evaluation.write_figures(out, y, {"current": run})
        if type_rep:
            figures["types"] = _types_figure(out, type_rep)
    except OSError as exc:
        raise CompareInputError(f"cannot write to {out}: {exc}") from exc
    recorded = json.loads((Path(artifact) / "metadata.json").read_text()).get("metrics", {}).get(split, {})
    report = json_safe(
        {
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "model": {k: v for k, v in run.items() if k not in ("scores", "per_group", "metrics", "reliability", "latency_ms_per_crop")},
            "data": {
                "dir": str(dataset.root),
                "split": split,
                "n": len(y),
                "n_defective": int(y.sum()),
                "n_sound": int(len(y) - y.sum()),
                "manifest_file_sha256": dataset.manifest_file_sha256,
            },
            "metrics": run["metrics"],
            "per_group": run["per_group"],
            "types": type_rep,
            "reliability": run["reliability"],
            "latency_ms_per_crop": latency,
            "figures": figures,
            "recorded_in_metadata": {k: recorded.get(k) for k in ("balanced_accuracy", "recall_defective", "recall_sound", "auc")},
            "scores": [
                {"path": it.path, "label": it.label, "group": it.session, "score": float(v), "type": t}
                for it, v, t in zip(dataset.items, s, types)
            ],
        }
    )
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False))
    (out / "report.md").write_text(render_markdown(report))
    return report, out


def _f(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and x != x) else f"{x:.3f}" if isinstance(x, float) else str(x)


def _ci_text(m: dict[str, Any]) -> str:
    """The 95 % intervals of a metrics dict (training/metrics.py: intervals), in words."""
    names = (
        ("balanced_accuracy_ci95", "balanced accuracy"),
        ("recall_defective_ci95", "recall defective"),
        ("recall_sound_ci95", "recall sound"),
    )
    return ", ".join(f"{name} {_f(m[k][0])}–{_f(m[k][1])}" for k, name in names if m.get(k) and m[k][0] == m[k][0])


def render_markdown(r: dict[str, Any]) -> str:
    m, d = r["metrics"], r["data"]
    lines = [
        f"# {r['model']['name']} {r['model']['version']} on its {d['split']} split",
        "",
        f"{d['n']} photos ({d['n_sound']} sound, {d['n_defective']} defective) from `{d['dir']}`, "
        f"threshold {m['threshold']:.4g} (from the artifact's metadata).",
        "",
        "| | overall | " + " | ".join(r["per_group"]) + " |",
        "|---|---|" + "---|" * len(r["per_group"]),
    ]
    for key, name in (
        ("n", "photos"),
        ("balanced_accuracy", "balanced accuracy"),
        ("recall_defective", "recall, defective"),
        ("recall_sound", "recall, sound"),
        ("auc", "ROC AUC"),
        ("ece", "expected calibration error"),
    ):
        lines.append(f"| {name} | {_f(m.get(key))} | " + " | ".join(_f(g.get(key)) for g in r["per_group"].values()) + " |")
    if m.get("balanced_accuracy_ci95"):
        lines += [
            "",
            f"95 % intervals over these photos: {_ci_text(m)}. Photos of one capture session or source are not "
            "independent draws, so a new session's figures are less certain than that.",
        ]
    rec = r["recorded_in_metadata"]
    lines += [
        "",
        f"Recorded at training (`metadata.json: metrics.{d['split']}`): balanced accuracy {_f(rec.get('balanced_accuracy'))}, "
        f"recall defective {_f(rec.get('recall_defective'))}, AUC {_f(rec.get('auc'))}.",
        "",
    ]
    if r["types"]:
        t = r["types"]
        lines += [
            f"Defect type among {t['n']} truly defective fruit: accuracy {_f(t['accuracy'])}; recall "
            + ", ".join(f"{c} {_f(v)}" for c, v in t["recall"].items())
            + ".",
            "",
        ]
    lat = r["latency_ms_per_crop"]
    lines += [f"CPU latency per crop (ONNX Runtime): batch 1 {lat['batch_1']:.2f} ms, batch 16 {lat['batch_16']:.2f} ms.", ""]
    lines += [f"![{k}]({v})" for k, v in r["figures"].items()]
    return "\n".join(lines) + "\n"


def summary(r: dict[str, Any], out: Path) -> str:
    m = r["metrics"]
    rows = [
        f"{r['model']['name']} {r['model']['version']}, {r['data']['split']} split: {r['data']['n']} photos",
        f"  overall            balanced accuracy {_f(m['balanced_accuracy'])}  recall defective {_f(m['recall_defective'])}  "
        f"recall sound {_f(m['recall_sound'])}  AUC {_f(m['auc'])}  ECE {_f(m['ece'])}",
    ]
    if m.get("balanced_accuracy_ci95"):
        rows.append(f"  95 % intervals over these photos (a new session's are wider): {_ci_text(m)}")
    for g, gm in r["per_group"].items():
        rows.append(
            f"  {g:<18} balanced accuracy {_f(gm['balanced_accuracy'])}  recall defective {_f(gm['recall_defective'])}  "
            f"recall sound {_f(gm['recall_sound'])}  (n {gm['n']})"
        )
    if r["types"]:
        rows.append(
            f"  defect type accuracy among defective {_f(r['types']['accuracy'])}: "
            + ", ".join(f"{c} {_f(v)}" for c, v in r["types"]["recall"].items())
        )
    lat = r["latency_ms_per_crop"]
    rows.append(f"  latency per crop: batch 1 {lat['batch_1']:.2f} ms, batch 16 {lat['batch_16']:.2f} ms")
    rows.append(f"report: {out / 'report.md'}")
    return "\n".join(rows)


def run_args(args: argparse.Namespace) -> int:
    try:
        report, out = evaluate_artifact(
            Path(args.artifact),
            Path(args.data) if args.data else None,
            args.split,
            Path(args.out) if args.out else None,
            args.threads,
            args.latency_repeats,
        )
    except CompareInputError as exc:
        print(f"grader evaluate: {exc}", file=sys.stderr)
        return compare.EXIT_BAD_INPUT
    print(summary(report, out))
    return 0

"""Evaluating defect models on a dataset: its items and crops, each model's scores, the figures
(balanced accuracy, recall, calibration, per lot and camera), the pictures (ROC, reliability,
confusion) and CPU latency. ``grader evaluate`` scores one model with them, ``grader compare`` two."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from grader.defect import preprocess
from grader.errors import InvalidModelArtifact
from grader.segment import SegmentationParams
from inference.onnx_model import OnnxDefectModel
from training.crops import fruit_crop, load_rgb
from training.metrics import binary_report, expected_calibration_error

ECE_BINS = 10


LATENCY_BATCHES = (1, 16)


LATENCY_REPEATS = 15


#: a model's batch-16 interquartile range above this fraction of its median marks latency as noisy
LATENCY_NOISY_IQR = 0.25


SCORE_BATCH = 32


NO_LOT = "(none)"


class CompareInputError(Exception):
    """Bad input to a comparison (data, models or gates): exit status 2 with this message."""


@dataclass(frozen=True)
class Item:
    """One manifest item of the compared split."""

    path: str  # as the manifest writes it
    file: Path  # resolved on disk
    kind: str  # "crop" | "image"
    label: str
    defective: bool
    session: str
    lot: str | None


@dataclass(frozen=True)
class Dataset:
    root: Path
    split: str
    items: list[Item]
    classes: list[str]
    manifest_sha256: str | None  # the hash the dataset builder recorded
    manifest_file_sha256: str  # the hash of manifest.json itself

    @property
    def y(self) -> np.ndarray:
        return np.array([int(it.defective) for it in self.items], dtype=int)


def load_dataset(root: Path, split: str) -> Dataset:
    """The items of one split of a dataset directory, checked: every failure is a CompareInputError."""
    root = Path(root)
    if not root.is_dir():
        raise CompareInputError(f"no dataset directory at {root}")
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise CompareInputError(f"{root} has no manifest.json")
    raw = manifest_path.read_bytes()
    try:
        manifest = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CompareInputError(f"{manifest_path}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("items"), list):
        raise CompareInputError(f"{manifest_path}: expected an object with an 'items' list")
    classes = manifest.get("classes", ["sound", "defective"])
    if not isinstance(classes, list) or "sound" not in classes or len(classes) < 2:
        raise CompareInputError(f"{manifest_path}: 'classes' must list 'sound' and at least one defect class, got {classes!r}")

    entries = [e for e in manifest["items"] if isinstance(e, dict) and e.get("split") == split]
    if not entries:
        present = sorted({str(e.get("split")) for e in manifest["items"] if isinstance(e, dict)})
        raise CompareInputError(f"{manifest_path} has no items in split {split!r} (splits present: {', '.join(present) or 'none'})")
    items: list[Item] = []
    missing: list[str] = []
    for n, e in enumerate(entries):
        where = f"{manifest_path}: item {e.get('path', f'#{n}')!r}"
        try:
            path, kind, label = str(e["path"]), str(e.get("kind", "crop")), str(e["label"])
        except KeyError as exc:
            raise CompareInputError(f"{where} lacks {exc.args[0]!r}") from exc
        if kind not in ("crop", "image"):
            raise CompareInputError(f"{where}: kind must be 'crop' or 'image', got {kind!r}")
        if label not in classes:
            raise CompareInputError(f"{where}: label {label!r} is not one of {classes}")
        file = Path(path) if Path(path).is_absolute() else root / path
        if not file.is_file():
            missing.append(path)
            continue
        lot = e.get("lot")
        items.append(
            Item(
                path=path,
                file=file,
                kind=kind,
                label=label,
                defective=label != "sound",
                session=str(e.get("session") or "(none)"),
                lot=None if lot is None else str(lot),
            )
        )
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CompareInputError(f"{len(missing)} file(s) of split {split!r} missing under {root}: {shown}")
    return Dataset(
        root=root,
        split=split,
        items=items,
        classes=[str(c) for c in classes],
        manifest_sha256=manifest.get("sha256"),
        manifest_file_sha256=hashlib.sha256(raw).hexdigest(),
    )


def load_crops(items: Sequence[Item], margin_frac: float, params: SegmentationParams | None = None) -> list[np.ndarray]:
    """RGB crops in item order: crop items as stored, image items through training's fruit_crop
    (with the fruit finder's settings ``params``: a model's ``spec.crop_segmentation``)."""
    crops = []
    for it in items:
        try:
            rgb = load_rgb(it.file)
        except ValueError as exc:
            raise CompareInputError(str(exc)) from exc
        crops.append(fruit_crop(rgb, margin_frac, params=params) if it.kind == "image" else rgb)
    return crops


def load_model(path: Path, role: str, threads: int) -> OnnxDefectModel:
    try:
        return OnnxDefectModel(Path(path), threads=threads)
    except InvalidModelArtifact as exc:
        raise CompareInputError(f"{role} model: {exc}") from exc


def score_items(
    items: Sequence[Item], models: dict[str, OnnxDefectModel], keep: int = max(LATENCY_BATCHES)
) -> tuple[dict[str, np.ndarray], dict[str, list[np.ndarray]]]:
    """Calibrated P(defective) per item and model, exactly as serving computes it, and each model's
    first ``keep`` crops (to time it on). Items stream through in batches, since whole photos make
    large crops; models sharing a crop margin and segmentation settings share the cropping."""
    by_crop: dict[tuple[float, SegmentationParams | None], list[str]] = {}
    for role, model in models.items():
        by_crop.setdefault((model.spec.crop_margin_frac, model.spec.crop_segmentation), []).append(role)
    scores: dict[str, list[float]] = {role: [] for role in models}
    kept: dict[str, list[np.ndarray]] = {}
    for (margin, params), roles in by_crop.items():
        first: list[np.ndarray] = []
        for i in range(0, len(items), SCORE_BATCH):
            crops = load_crops(items[i : i + SCORE_BATCH], margin, params)
            first.extend(crops[: keep - len(first)])
            for role in roles:
                scores[role].extend(e.score for e in models[role].predict(crops))
        kept.update({role: first for role in roles})
    return {role: np.asarray(v, dtype=np.float64) for role, v in scores.items()}, kept


def measure_latency(
    models: Sequence[OnnxDefectModel],
    crops: Sequence[Sequence[np.ndarray]],
    batches: Sequence[int] = LATENCY_BATCHES,
    repeats: int = LATENCY_REPEATS,
) -> list[dict[str, Any]]:
    """Median milliseconds per crop of ``OnnxDefectModel.run`` on preprocessed batches, per model,
    with each batch size's interquartile range (ms per crop) to show how noisy the figure is.

    The models' runs are interleaved repeat by repeat, in alternating order, so a neighbour's load
    on the machine (and one session's threads still spinning when the other starts) falls on both
    alike and the ratio between them stays fair. Each batch shape is run once untimed first.
    """
    inputs = []
    for model, cs in zip(models, crops):
        pool = [cs[i % len(cs)] for i in range(max(batches))]
        inputs.append({b: preprocess(pool[:b], model.spec) for b in batches})
    times: list[dict[int, list[float]]] = [{b: [] for b in batches} for _ in models]
    for model, inp in zip(models, inputs):
        for b in batches:
            model.run(inp[b])
    for r in range(repeats):
        order = list(range(len(models)))
        for k in order if r % 2 == 0 else order[::-1]:
            model, inp = models[k], inputs[k]
            for b in batches:
                t0 = time.perf_counter()
                model.run(inp[b])
                times[k][b].append((time.perf_counter() - t0) * 1000.0 / b)
    out: list[dict[str, Any]] = []
    for t in times:
        lat: dict[str, Any] = {f"batch_{b}": statistics.median(t[b]) for b in batches}
        lat["iqr"] = {f"batch_{b}": float(np.subtract(*np.percentile(t[b], [75, 25]))) for b in batches}
        out.append(lat)
    return out


def reliability_bins(y: np.ndarray, s: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, Any]]:
    """Per equal-width bin (the ECE's bins): count, mean score and observed defective rate."""
    edges = np.linspace(0, 1, bins + 1)
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (s >= lo) & (s < hi if hi < 1 else s <= hi)
        n = int(sel.sum())
        out.append(
            {
                "lo": float(lo),
                "hi": float(hi),
                "n": n,
                "mean_score": float(s[sel].mean()) if n else None,
                "defective_rate": float(y[sel].mean()) if n else None,
            }
        )
    return out


def roc_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """False- and true-positive rates at every distinct score threshold (from (0, 0) to (1, 1));
    empty without both classes."""
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if pos == 0 or neg == 0:
        return np.empty(0), np.empty(0)
    order = np.argsort(-s, kind="mergesort")
    ss, ys = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]
    tps = np.cumsum(ys)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / neg], np.r_[0.0, tps / pos]


def evaluate(y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, Any]:
    """binary_report at the model's threshold plus its ECE."""
    rep = binary_report(y, s, threshold)
    rep["ece"] = expected_calibration_error(y, s, ECE_BINS)
    return rep


def grouped(keys: Sequence[str], y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, dict[str, Any]]:
    out = {}
    for key in sorted(set(keys)):
        idx = np.array([i for i, k in enumerate(keys) if k == key])
        out[key] = evaluate(y[idx], s[idx], threshold)
    return out


def write_figures(out: Path, y: np.ndarray, runs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """roc.png, reliability.png and confusion.png (matplotlib, Agg canvas, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    colours = {"current": "tab:blue", "candidate": "tab:orange"}
    files = {"roc": "roc.png", "reliability": "reliability.png", "confusion": "confusion.png"}

    fig = Figure(figsize=(5.5, 5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for role, r in runs.items():
        fpr, tpr = roc_curve(y, r["scores"])
        if not len(fpr):
            ax.text(0.5, 0.5, "no ROC: the split lacks sound or defective items", ha="center", va="center")
            break
        m = r["metrics"]
        ax.plot(fpr, tpr, color=colours[role], lw=2, label=f"{role} {r['version']} (AUC {fmt(m['auc'])})")
        ax.plot(
            [1 - m["recall_sound"]],
            [m["recall_defective"]],
            "o",
            color=colours[role],
            ms=8,
            label=f"{role} at threshold {m['threshold']:.3g}",
        )
    ax.set(
        xlabel="false-positive rate (sound called defective)",
        ylabel="true-positive rate (defective recall)",
        xlim=(0, 1),
        ylim=(0, 1.02),
        title="ROC",
    )
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / files["roc"], dpi=110)

    fig = Figure(figsize=(10, 4.5))
    FigureCanvasAgg(fig)
    for k, (role, r) in enumerate(runs.items()):
        ax = fig.add_subplot(1, 2, k + 1)
        ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
        bins = [b for b in r["reliability"] if b["n"]]
        ax.bar(
            [(b["lo"] + b["hi"]) / 2 for b in r["reliability"]],
            [b["defective_rate"] or 0.0 for b in r["reliability"]],
            width=1 / ECE_BINS,
            color=colours[role],
            alpha=0.35,
            edgecolor=colours[role],
            label="observed defective rate",
        )
        ax.plot(
            [b["mean_score"] for b in bins], [b["defective_rate"] for b in bins], "o-", color=colours[role], label="mean score vs observed"
        )
        for b in bins:
            ax.annotate(str(b["n"]), ((b["lo"] + b["hi"]) / 2, 0.02), ha="center", fontsize=7, color="0.3")
        ax.set(
            xlim=(0, 1),
            ylim=(0, 1),
            xlabel="predicted P(defective)",
            ylabel="observed defective rate",
            title=f"{role} {r['version']}: ECE {fmt(r['metrics']['ece'])}",
        )
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / files["reliability"], dpi=110)

    fig = Figure(figsize=(9, 4.2))
    FigureCanvasAgg(fig)
    for k, (role, r) in enumerate(runs.items()):
        ax = fig.add_subplot(1, 2, k + 1)
        mat = np.asarray(r["metrics"]["confusion"]["matrix"])
        ax.imshow(mat, cmap="Blues" if role == "current" else "Oranges", vmin=0, vmax=max(int(mat.max()), 1))
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=14, color="white" if v > mat.max() / 2 else "black")
        ax.set_xticks([0, 1], ["sound", "defective"])
        ax.set_yticks([0, 1], ["sound", "defective"])
        ax.set(xlabel="predicted", ylabel="true", title=f"{role} {r['version']} (threshold {r['metrics']['threshold']:.3g})")
    fig.tight_layout()
    fig.savefig(out / files["confusion"], dpi=110)
    return files


def fmt(x: Any, digits: int = 3) -> str:
    """A number for a table: NaN/None as an em dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    return f"{x:.{digits}f}"

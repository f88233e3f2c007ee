"""Datasets from the line: inspectors' verdicts on graded fruit, exported for training.

``build`` writes an ImageFolder-style tree plus a manifest:

    OUT/crops/<split>/<label>/<result>_<index>.jpg    the fruit crop the model sees in service
    OUT/images/<sha256>.<ext>                           the full camera image it came from
    OUT/manifest.json                                   every item: hashes, label and its source,
                                                        the model's output, lot, camera, session,
                                                        split, and whether model and inspector disagree

Labels: the inspector's defect label when given ("sound" → sound, any defect type → defective);
else, for a confirmed grade, the model's own label (the inspector agreed with it); a corrected
grade without a defect label says nothing about sound/defective and is left out (counted).
Splits are made by group (the lot, else the camera's day on the line), never by fruit, so no
lot is in two splits. A base dataset (FruitNet apples, by its training config's session splits)
can be merged in: its photos are referenced by path and hash, not copied.

``suggest`` ranks unreviewed fruit by how much an inspector's look would teach the model:
uncertainty (score near the model's threshold) times diversity (far, in measurement space, from
the fruit already picked).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sqlalchemy import select

from grader.crop import crop_for_model
from grader.defect import ModelSpec
from grader.flags import SUGGESTED_PRIORITY, suggested_flag, uncertainty
from grader.segment import segment_fruits
from store.tables import FruitRow, ImageRow, ResultRow, VerdictRow

CLASSES = ("sound", "defective")


@dataclass
class LineItem:
    path: str  # relative to the dataset dir (crops) or absolute (base photos)
    kind: str  # "crop" (a fruit crop) or "image" (a whole photo to crop like training does)
    label: str
    split: str
    session: str
    lot: str | None
    sha256: str
    source: str  # "line" or the base dataset's name
    label_source: str | None = None  # "inspector" (defect label given) or "confirmed" (model label kept)
    image: str | None = None  # the full image (relative), for line items
    camera: str | None = None
    result_id: str | None = None
    fruit_index: int | None = None
    verdict_id: int | None = None
    inspector: str | None = None
    model_label: str | None = None
    model_score: float | None = None
    model_version: str | None = None
    disagreement: bool = False


def verdict_label(
    decision: str, defect_label: str | None, model_label: str | None, classes: Sequence[str] = CLASSES
) -> tuple[str | None, str | None]:
    """(the training label in the model's ``classes`` or None, where it came from). For a sound /
    defective model any defect is "defective"; for a model that tells defect types apart (e.g.
    sound, blackspot, canker, greening, rot) the inspector's type, or the model's label the
    inspector confirmed; None when that is not one of its classes (a type it does not know)."""
    typed = len(classes) > 2

    def in_classes(label: str) -> str | None:
        label = label.strip().lower()
        if label == "sound":
            return "sound"
        if not typed:
            return "defective"
        return label if label in classes else None

    if defect_label:
        c = in_classes(defect_label)
        return (c, "inspector") if c else (None, None)
    if decision == "confirm" and model_label:
        c = in_classes(model_label)
        return (c, "confirmed") if c else (None, None)
    return None, None


def assign_splits(groups: list[str], val_frac: float = 0.15, test_frac: float = 0.15) -> dict[str, str]:
    """Whole groups to splits, by a hash of the group name (stable as groups are added); with three
    or more groups, every split gets at least one."""
    order = sorted(set(groups), key=lambda g: hashlib.sha256(g.encode()).hexdigest())
    n = len(order)
    n_test = max(1 if n >= 3 else 0, round(n * test_frac))
    n_val = max(1 if n >= 3 else 0, round(n * val_frac))
    out = {}
    for i, g in enumerate(order):
        out[g] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def _best_segment(rgb: np.ndarray, bbox: list[int]):
    """The segment of the re-measured image that is the stored fruit (largest box overlap)."""
    x0, y0, x1, y1 = bbox

    def iou(b) -> float:
        ix = max(0, min(x1, b[2]) - max(x0, b[0]))
        iy = max(0, min(y1, b[3]) - max(y0, b[1]))
        inter = ix * iy
        union = (x1 - x0) * (y1 - y0) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union if union else 0.0

    segs = segment_fruits(rgb)
    best = max(segs, key=lambda s: iou(s.bbox), default=None)
    return best if best is not None and iou(best.bbox) > 0.3 else None


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(
    repo,
    out_dir: Path,
    *,
    since: dt.datetime | None = None,
    lot: str | None = None,
    margin_frac: float = 0.08,
    base: Path | None = None,
    base_splits: dict[str, list[str]] | None = None,
    progress=None,
    commodity: str | None = None,
    classes: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Export reviewed fruit (and optionally a base dataset) to ``out_dir``; returns the manifest.
    ``commodity`` keeps one commodity's fruit; ``classes`` are the labels of the model to train
    (a typed citrus model keeps the inspectors' defect types)."""
    out_dir = Path(out_dir)
    (out_dir / "crops").mkdir(parents=True, exist_ok=True)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    with repo.sessions() as s:
        q = (
            select(VerdictRow, FruitRow, ResultRow, ImageRow)
            .join(FruitRow, VerdictRow.fruit_row_id == FruitRow.id)
            .join(ResultRow, VerdictRow.result_id == ResultRow.id)
            .join(ImageRow, ResultRow.image_sha256 == ImageRow.sha256)
            .where(VerdictRow.retracted.is_(False))
            .order_by(VerdictRow.id)
        )
        if since is not None:
            q = q.where(VerdictRow.created_at >= since)
        if lot:
            q = q.where(ResultRow.lot_id == lot)
        rows = [
            (v, f, r, img, r.payload["fruits"][f.index])
            for v, f, r, img in s.execute(q).all()
            if commodity is None or r.payload.get("commodity") == commodity
        ]  # the commodity is in the stored payload
    skipped: dict[str, int] = {}
    candidates = []
    for v, f, r, img, fruit in rows:
        model = fruit.get("defect") or {}
        label, label_source = verdict_label(v.decision, v.defect_label, model.get("label"), classes)
        if label is None:
            why = (
                "a defect label that is not one of the model's classes"
                if v.defect_label or v.decision == "confirm"
                else "corrected grade without a defect label"
            )
            skipped[why] = skipped.get(why, 0) + 1
            continue
        session = f"{r.camera_id or 'camera?'}/{r.created_at.date().isoformat()}"
        candidates.append((v, f, r, img, fruit, model, label, label_source, session, r.lot_id or session))
    splits = assign_splits([c[-1] for c in candidates])
    items: list[LineItem] = []
    for k, (v, f, r, img, fruit, model, label, label_source, session, group) in enumerate(candidates):
        if progress:
            progress(k, len(candidates))
        split = splits[group]
        src = Path(img.path)
        if not src.exists():
            skipped["stored image missing"] = skipped.get("stored image missing", 0) + 1
            continue
        image_rel = Path("images") / src.name
        if not (out_dir / image_rel).exists():
            shutil.copyfile(src, out_dir / image_rel)
        bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
        seg = _best_segment(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), fruit["bbox"]) if bgr is not None else None
        if seg is None:
            skipped["fruit not found again in its image"] = skipped.get("fruit not found again in its image", 0) + 1
            continue
        crop = crop_for_model(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), seg.bbox, margin_frac, seg.mask)
        rel = Path("crops") / split / label / f"{r.id}_{f.index}.jpg"
        (out_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(out_dir / rel), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        model_label = model.get("label")
        items.append(
            LineItem(
                path=str(rel),
                kind="crop",
                label=label,
                split=split,
                session=session,
                lot=r.lot_id,
                sha256=_sha256(out_dir / rel),
                source="line",
                label_source=label_source,
                image=str(image_rel),
                camera=r.camera_id,
                result_id=r.id,
                fruit_index=f.index,
                verdict_id=v.id,
                inspector=v.inspector,
                model_label=model_label,
                model_score=model.get("score"),
                model_version=r.model_version,
                disagreement=model_label is not None and (model_label == "sound") != (label == "sound"),
            )
        )
    if base is not None:
        from datasets import fruitnet

        for it in fruitnet.build_manifest(Path(base), base_splits or {}):
            items.append(
                LineItem(
                    path=str((Path(base) / it.path).resolve()),
                    kind="image",
                    label=it.label,
                    split=it.split,
                    session=it.session,
                    lot=None,
                    sha256=it.sha256,
                    source=Path(base).name,
                )
            )
    digest = hashlib.sha256(
        "".join(f"{i.path}\t{i.label}\t{i.split}\t{i.sha256}\n" for i in sorted(items, key=lambda i: i.path)).encode()
    ).hexdigest()
    counts: dict[str, dict[str, int]] = {}
    for i in items:
        counts.setdefault(i.split, {}).setdefault(i.label, 0)
        counts[i.split][i.label] += 1
    manifest = {
        "sha256": digest,
        "classes": list(classes),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "filters": {"since": since.isoformat() if since else None, "lot": lot, "commodity": commodity},
        "base": str(base) if base else None,
        "counts": counts,
        "skipped": skipped,
        "disagreements": sum(i.disagreement for i in items),
        "items": [asdict(i) for i in items],
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


# ----------------------------------------------------------------------------- active learning
def suggest(repo, spec: ModelSpec, limit: int = 20, lot: str | None = None, since: dt.datetime | None = None) -> list[dict[str, Any]]:
    """Unreviewed, unflagged fruit most worth an inspector's look: greedy picks maximising
    uncertainty × (distance to the nearest fruit already picked, in standardised measurement space)."""
    with repo.sessions() as s:
        reviewed = select(VerdictRow.fruit_row_id).where(VerdictRow.retracted.is_(False))
        q = (
            select(FruitRow, ResultRow)
            .join(ResultRow, FruitRow.result_id == ResultRow.id)
            .where(FruitRow.flagged.is_(False), FruitRow.defect_score.is_not(None), FruitRow.id.not_in(reviewed))
        )
        if lot:
            q = q.where(ResultRow.lot_id == lot)
        if since is not None:
            q = q.where(ResultRow.created_at >= since)
        rows = [(f, r, r.payload["fruits"][f.index]) for f, r in s.execute(q.order_by(FruitRow.id.desc()).limit(20_000)).all()]
    if not rows:
        return []
    feats = np.array(
        [
            [
                f.defect_score,
                fr.get("diameter_mm") or 0.0,
                fr.get("colour_coverage") or 0.0,
                fr.get("blemish_fraction") or 0.0,
                fr.get("roundness") or 0.0,
            ]
            for f, _, fr in rows
        ],
        float,
    )
    feats = (feats - feats.mean(axis=0)) / (feats.std(axis=0) + 1e-9)
    unc = np.array([uncertainty(f.defect_score, spec.threshold_defective) for f, _, _ in rows])
    picked: list[int] = []
    nearest = np.full(len(rows), np.inf)
    for _ in range(min(limit, len(rows))):
        diversity = np.where(np.isinf(nearest), 1.0, np.tanh(nearest / 2.0))
        value = unc * diversity
        value[picked] = -1
        k = int(np.argmax(value))
        if value[k] <= 0:
            break
        picked.append(k)
        nearest = np.minimum(nearest, np.linalg.norm(feats - feats[k], axis=1))
    out = []
    for k in picked:
        f, r, fr = rows[k]
        out.append(
            {
                "fruit": f.id,
                "result_id": r.id,
                "fruit_index": f.index,
                "lot_id": r.lot_id,
                "camera_id": r.camera_id,
                "defect_score": round(f.defect_score, 4),
                "uncertainty": round(float(unc[k]), 4),
                "diameter_mm": fr.get("diameter_mm"),
                "grade": fr.get("grade"),
            }
        )
    return out


def route_to_review(repo, picks: list[dict[str, Any]], priority: int = SUGGESTED_PRIORITY) -> int:
    """Put suggested fruit into the inspectors' queue with a `suggested` flag saying why."""
    n = 0
    with repo.sessions() as s, s.begin():
        for p in picks:
            f = s.get(FruitRow, p["fruit"])
            r = s.get(ResultRow, p["result_id"])
            if f is None or r is None or f.flagged:
                continue
            payload = dict(r.payload)
            fruits = [dict(x) for x in payload["fruits"]]
            flag = suggested_flag(p["defect_score"], p["uncertainty"]).to_dict()
            fruits[f.index]["flags"] = [*fruits[f.index].get("flags", []), flag["code"]]
            fruits[f.index]["flag_details"] = [*fruits[f.index].get("flag_details", []), flag]
            fruits[f.index]["flagged"] = True
            payload["fruits"] = fruits
            r.payload = payload
            r.flagged = True
            f.flagged, f.priority = True, priority
            n += 1
    return n

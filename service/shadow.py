"""Shadow mode: a candidate model judges the same fruit as the serving model, after the reply has
gone (never on a request's critical path), and its disagreements are stored for the report."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from sqlalchemy import func, select

from grader.crop import crop_for_model
from grader.records import FruitGrade
from store.repository import Repository
from store.tables import ShadowResultRow, utcnow

from .onnx_model import OnnxDefectModel

log = logging.getLogger("grader.shadow")


@dataclass
class Shadow:
    model_id: str
    model: OnnxDefectModel
    since: dt.datetime = field(default_factory=utcnow)


def judge(
    repo: Repository, shadow: Shadow | None, serving_model_id: str, result_id: str, rgb: np.ndarray, fruits: Sequence[FruitGrade]
) -> int:
    """Run the shadow model on the fruit of one stored result; store its opinions. Returns how
    many fruit it judged. Errors are logged, never raised: the line does not depend on a candidate."""
    if shadow is None or not fruits:
        return 0
    try:
        spec = shadow.model.spec
        crops = [crop_for_model(rgb, f.measurement.bbox, spec.crop_margin_frac, f.measurement.mask) for f in fruits]
        opinions = shadow.model.predict(crops)
        rows = []
        for i, (f, ev) in enumerate(zip(fruits, opinions)):
            serving = f.defect
            disagree = serving is None or (ev.label in spec.defective_classes) != (serving.label not in ("sound",))
            rows.append(
                ShadowResultRow(
                    result_id=result_id,
                    fruit_index=i,
                    shadow_model_id=shadow.model_id,
                    serving_model_id=serving_model_id,
                    shadow_label=ev.label,
                    shadow_score=float(ev.score),
                    serving_label=None if serving is None else serving.label,
                    serving_score=None if serving is None else float(serving.score),
                    disagree=disagree,
                    created_at=utcnow(),
                )
            )
        with repo.sessions() as s, s.begin():
            s.add_all(rows)
        return len(rows)
    except Exception:  # noqa: BLE001 - a candidate's failure must never reach the line
        log.exception("shadow model %s failed on result %s", shadow.model_id, result_id)
        return 0


def report(repo: Repository, model_id: str, limit: int = 50) -> dict[str, Any]:
    """How the shadow model compares with the serving one on live traffic so far."""
    with repo.sessions() as s:
        base = select(ShadowResultRow).where(ShadowResultRow.shadow_model_id == model_id)
        n = s.scalar(select(func.count()).select_from(base.subquery())) or 0
        k = s.scalar(select(func.count()).select_from(base.where(ShadowResultRow.disagree.is_(True)).subquery())) or 0
        diff = s.scalar(
            select(func.avg(func.abs(ShadowResultRow.shadow_score - ShadowResultRow.serving_score))).where(
                ShadowResultRow.shadow_model_id == model_id
            )
        )
        recent = s.scalars(base.where(ShadowResultRow.disagree.is_(True)).order_by(ShadowResultRow.id.desc()).limit(limit)).all()
        return {
            "model": model_id,
            "fruit_compared": n,
            "disagreements": k,
            "agreement": None if n == 0 else round(1 - k / n, 4),
            "mean_abs_score_difference": None if diff is None else round(float(diff), 4),
            "recent_disagreements": [
                {
                    "result_id": r.result_id,
                    "fruit_index": r.fruit_index,
                    "serving_model": r.serving_model_id,
                    "serving": {"label": r.serving_label, "score": r.serving_score},
                    "shadow": {"label": r.shadow_label, "score": round(r.shadow_score, 4)},
                    "at": r.created_at.isoformat(),
                    "overlay_url": f"/v1/results/{r.result_id}/overlay?fruit_index={r.fruit_index}",
                }
                for r in recent
            ],
        }

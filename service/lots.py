"""Lots, Brix evidence and re-grading over the database (the service side of grader.sweetness,
grader.rules and grader.flags)."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from grader.flags import FlagPolicy, LotContext, fruit_flags
from grader.records import OUT_OF_GRADE, DefectEvidence, Flag, SweetnessEvidence
from grader.rules import FruitFacts, grade_fruit
from grader.standards import Standard
from grader.sweetness import lot_sample
from store.tables import BrixReadingRow, FruitRow, GradeChangeRow, LotRow, ResultRow, VerdictRow

#: flags that grading decides (and re-grading recomputes); the rest come from measurement
GRADING_FLAGS = {"decay", "ood", "defect_uncertain", "provisional", "size_outlier", "brix_outlier", "signals_disagree"}
DECAY_LABELS = {"decay", "rot", "mould"}


#: a lot's distribution for outlier flags is judged on its most recent values (bounded work per fruit)
LOT_CONTEXT_N = 500


def lot_context(s: Session, lot_id: str | None) -> LotContext | None:
    if lot_id is None:
        return None
    diameters = s.scalars(
        select(FruitRow.diameter_mm)
        .where(FruitRow.lot_id == lot_id, FruitRow.diameter_mm.is_not(None))
        .order_by(FruitRow.id.desc())
        .limit(LOT_CONTEXT_N)
    ).all()
    brix = s.scalars(
        select(BrixReadingRow.brix_20c)
        .where(BrixReadingRow.lot_id == lot_id, BrixReadingRow.status == "accepted")
        .order_by(BrixReadingRow.id.desc())
        .limit(LOT_CONTEXT_N)
    ).all()
    return LotContext(diameters_mm=tuple(diameters), brix=tuple(brix))


def lot_sweetness(s: Session, lot_id: str | None) -> SweetnessEvidence | None:
    """The lot's destructive-sample estimate (accepted lot readings only)."""
    if lot_id is None:
        return None
    values = s.scalars(
        select(BrixReadingRow.brix_20c).where(
            BrixReadingRow.lot_id == lot_id, BrixReadingRow.fruit_id.is_(None), BrixReadingRow.status == "accepted"
        )
    ).all()
    sample = lot_sample(list(values))
    return None if sample is None else sample.evidence()


def fruit_sweetness(s: Session, fruit_id: str | None) -> SweetnessEvidence | None:
    """The fruit's own latest accepted reading, if one arrived (before or after its image)."""
    if fruit_id is None:
        return None
    row = s.scalar(
        select(BrixReadingRow)
        .where(BrixReadingRow.fruit_id == fruit_id, BrixReadingRow.status == "accepted")
        .order_by(BrixReadingRow.created_at.desc(), BrixReadingRow.id.desc())
        .limit(1)
    )
    return None if row is None else SweetnessEvidence(brix=row.brix_20c, source=row.source)


def sweetness_for(s: Session, request_brix: float | None, fruit_id: str | None, lot_id: str | None) -> SweetnessEvidence | None:
    """A fruit's sweetness: the request's reading, else its own stored reading, else its lot's sample."""
    if request_brix is not None:
        return SweetnessEvidence(brix=request_brix, source="request")
    return fruit_sweetness(s, fruit_id) or lot_sweetness(s, lot_id)


def sweetness_fields(ev: SweetnessEvidence | None) -> dict[str, Any]:
    if ev is None:
        return {"brix": None, "brix_source": None, "brix_n": None, "brix_spread": None}
    return {
        "brix": round(ev.brix, 2),
        "brix_source": ev.source,
        "brix_n": ev.n,
        "brix_spread": None if ev.spread is None else round(ev.spread, 2),
    }


def regrade_fruit(
    s: Session,
    result: ResultRow,
    index: int,
    sweetness: SweetnessEvidence | None,
    standard: Standard,
    policy: FlagPolicy,
    sound_labels: tuple[str, ...],
    reason: str,
) -> dict[str, Any] | None:
    """Re-apply the standard to one stored fruit with new sweetness evidence; record the change.
    Returns the change, or None when nothing changed."""
    payload = dict(result.payload)
    fruits = [dict(f) for f in payload["fruits"]]
    f = fruits[index]
    d = f.get("defect")
    defect = None if d is None else DefectEvidence.from_dict(d, result.model_name, result.model_version)
    facts = FruitFacts(
        diameter_mm=f.get("diameter_mm"),
        brix=None if sweetness is None else sweetness.brix,
        blemish_area_cm2=f.get("blemish_area_cm2"),
        largest_blemish_cm2=f.get("largest_blemish_cm2"),
        colour_coverage=f.get("colour_coverage"),
        defects=() if defect is None or defect.label in sound_labels else (defect.label,),
    )
    decision = grade_fruit(standard, facts)
    kept = [Flag(**x) for x in f.get("flag_details", []) if x["code"] not in GRADING_FLAGS]
    new_flags = sorted(
        kept + fruit_flags(defect, decision, policy, f.get("diameter_mm"), sweetness, lot_context(s, result.lot_id), sound_labels),
        key=lambda x: x.priority,
    )
    old_grade, old_brix = f.get("grade"), f.get("brix")
    f.update(sweetness_fields(sweetness))
    f.update(
        {
            "grade": decision.grade,
            "provisional": decision.provisional,
            "outlet": decision.outlet,
            "reasons": [r.text for r in decision.reasons],
            "reason_details": [r.to_dict() for r in decision.reasons],
            "flagged": bool(new_flags),
            "flags": [x.code for x in new_flags],
            "flag_details": [x.to_dict() for x in new_flags],
        }
    )
    if f == payload["fruits"][index]:
        return None
    fruits[index] = f
    payload["fruits"] = fruits
    result.payload = payload  # a new object: SQLAlchemy sees the JSON change
    result.flagged = any(x["flagged"] for x in fruits)
    row = s.scalar(select(FruitRow).where(FruitRow.result_id == result.id, FruitRow.index == index))
    if row is not None:
        row.grade, row.flagged, row.brix, row.brix_source = decision.grade, bool(new_flags), f["brix"], f["brix_source"]
        row.priority = min((x.priority for x in new_flags), default=None)
    s.add(
        GradeChangeRow(
            result_id=result.id,
            fruit_index=index,
            old_grade=old_grade,
            new_grade=decision.grade,
            old_brix=old_brix,
            new_brix=f["brix"],
            reason=reason,
        )
    )
    return {
        "result_id": result.id,
        "fruit_index": index,
        "old_grade": old_grade,
        "new_grade": decision.grade,
        "old_brix": old_brix,
        "new_brix": f["brix"],
    }


def lot_payload(lot: LotRow) -> dict[str, Any]:
    return {
        "id": lot.id,
        "grower": lot.grower,
        "orchard_block": lot.orchard_block,
        "variety": lot.variety,
        "commodity": lot.commodity,
        "standard_id": lot.standard_id,
        "harvest_date": None if lot.harvest_date is None else lot.harvest_date.isoformat(),
        "status": lot.status,
        "created_at": lot.created_at.isoformat(),
        "closed_at": None if lot.closed_at is None else lot.closed_at.isoformat(),
    }


def _histogram(values: list[float], width: float) -> list[dict[str, Any]]:
    if not values:
        return []
    lo = int(min(values) // width)
    hi = int(max(values) // width)
    bins = []
    for b in range(lo, hi + 1):
        a = b * width
        bins.append({"from": round(a, 2), "to": round(a + width, 2), "count": sum(1 for v in values if a <= v < a + width)})
    return bins


def lot_report(s: Session, lot: LotRow, standard: Standard) -> dict[str, Any]:
    """A grower's pack-out report: grades, size bands, Brix, defects, flags, tolerance verdicts."""
    fruits = s.scalars(select(FruitRow).where(FruitRow.lot_id == lot.id).order_by(FruitRow.id)).all()
    n = len(fruits)
    order = standard.grade_names + [OUT_OF_GRADE]
    by_grade = {g: sum(1 for f in fruits if f.grade == g) for g in order}
    diameters = [f.diameter_mm for f in fruits if f.diameter_mm is not None]
    fruit_brix = [f.brix for f in fruits if f.brix is not None and f.brix_source not in (None, "lot-sample")]
    samples = s.scalars(
        select(BrixReadingRow.brix_20c).where(
            BrixReadingRow.lot_id == lot.id, BrixReadingRow.fruit_id.is_(None), BrixReadingRow.status == "accepted"
        )
    ).all()
    defective = sum(1 for f in fruits if f.defect_label not in (None, "sound"))
    decayed = sum(1 for f in fruits if f.defect_label in DECAY_LABELS)
    tolerances = []
    for rank, g in enumerate(standard.grade_names):
        tol = standard.lot_tolerances.get(g)
        below = sum(by_grade[x] for x in order[rank + 1 :])
        share_below = below / n if n else 0.0
        share_decayed = decayed / n if n else 0.0
        meets = (
            None if tol is None or n == 0 else (share_below <= tol.below_grade and (tol.decayed is None or share_decayed <= tol.decayed))
        )
        tolerances.append(
            {
                "grade": g,
                "share_below_grade": round(share_below, 4),
                "share_decayed": round(share_decayed, 4),
                "tolerance_below_grade": None if tol is None else tol.below_grade,
                "tolerance_decayed": None if tol is None else tol.decayed,
                "meets": meets,
            }
        )

    def stats(v: list[float]) -> dict[str, Any]:
        return {
            "n": len(v),
            "mean": round(statistics.fmean(v), 2) if v else None,
            "sd": round(statistics.stdev(v), 2) if len(v) > 1 else None,
            "min": min(v) if v else None,
            "max": max(v) if v else None,
        }

    return {
        "lot": lot_payload(lot),
        "standard": {"id": standard.id, "version": standard.version},
        "fruit": n,
        "by_grade": [{"grade": g, "count": by_grade[g], "share": round(by_grade[g] / n, 4) if n else 0.0} for g in order],
        # the size bands use sized fruit only; fruit measured without a size (declined on the tree
        # or on a cluttered background, cut off, no scale) are counted apart
        "size_mm": {**stats(diameters), "histogram": _histogram(diameters, 5.0), "not_sized": n - len(diameters)},
        "brix": {
            "fruit_readings": stats(fruit_brix),
            "lot_samples": stats(list(samples)),
            "histogram": _histogram(fruit_brix + list(samples), 0.5),
        },
        "defect_rate": round(defective / n, 4) if n else 0.0,
        # what the defect model saw, by label (a typed model's label is the defect type: rot, greening...)
        "by_defect": dict(sorted(Counter(f.defect_label for f in fruits if f.defect_label not in (None, "sound")).items())),
        "flagged": sum(1 for f in fruits if f.flagged),
        "examined": len(
            set(
                s.scalars(
                    select(VerdictRow.fruit_row_id).where(
                        VerdictRow.fruit_row_id.in_([f.id for f in fruits]), VerdictRow.retracted.is_(False)
                    )
                )
            )
        )
        if fruits
        else 0,
        "tolerances": tolerances,
    }

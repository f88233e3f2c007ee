"""The inspectors' review queue: flagged fruit by priority, claim one, give a verdict, undo it."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import and_, exists, or_, select, update

from grader.errors import AlreadyExamined, FruitClaimed, InvalidGrade, UnknownFruit, UnknownVerdict
from grader.records import OUT_OF_GRADE
from store.tables import FruitEventRow, FruitRow, ResultRow, VerdictRow, utcnow

from ..auth import Principal, require
from ..forms import NoteText, PlainText, text_field

router = APIRouter(prefix="/v1/review", tags=["review"])

#: a database row id: a positive 64-bit integer (larger numbers are refused, not passed to SQL)
RowId = Annotated[int, PathParam(ge=1, le=2**63 - 1)]

#: a claim lapses after this long, so a fruit an inspector walked away from returns to the queue
CLAIM_SECONDS = 300


def _who(p: Principal, name: str | None) -> str:
    """The inspector's name when given (several inspectors may share the role's key), else the key's."""
    return text_field("inspector", name) or f"{p.role} {p.key_id}"


def _item(f: FruitRow, r: ResultRow, ctx: Any) -> dict[str, Any]:
    fruit = r.payload["fruits"][f.index]
    std = ctx.standards.get(r.standard_id)
    commodity = ctx.commodities.get(std.commodity) if std else None
    return {
        "fruit": f.id,
        "result_id": r.id,
        "fruit_index": f.index,
        "priority": f.priority,
        "created_at": r.created_at.isoformat(),
        "lot_id": r.lot_id,
        "camera_id": r.camera_id,
        "fruit_id": r.fruit_id,
        "grade": fruit.get("grade"),
        "defect": fruit.get("defect"),
        "diameter_mm": fruit.get("diameter_mm"),
        "brix": fruit.get("brix"),
        "brix_source": fruit.get("brix_source"),
        "flags": fruit.get("flag_details", []),
        "reasons": fruit.get("reasons", []),
        "claimed_by": f.claimed_by if f.claimed_until and f.claimed_until > utcnow() else None,
        "image_url": f"/v1/results/{r.id}/image",
        "overlay_url": f"/v1/results/{r.id}/overlay?fruit_index={f.index}",
        "measurement": {k: fruit.get(k) for k in MEASUREMENT_FIELDS},
        "standard_id": r.standard_id,
        # what a verdict may say for this fruit: the standard's grades, the commodity's defect types
        "grades": (std.grade_names if std else []) + [OUT_OF_GRADE],
        "defect_labels": ["sound", *(commodity.defect_types if commodity else [])],
    }


#: the stored measurements an inspector sees beside the image (units in the names)
MEASUREMENT_FIELDS = (
    "diameter_mm",
    "minor_diameter_mm",
    "area_mm2",
    "roundness",
    "colour_coverage",
    "blemish_area_cm2",
    "largest_blemish_cm2",
    "blemish_fraction",
    "mm_per_px",
    "brix",
    "brix_source",
    "brix_n",
    "brix_spread",
    "outlet",
    "provisional",
)


def _open_verdict():
    return exists().where(and_(VerdictRow.fruit_row_id == FruitRow.id, VerdictRow.retracted.is_(False)))


@router.get("/queue", summary="Flagged fruit without a verdict, most urgent first")
def queue(
    request: Request,
    lot_id: str | None = None,
    flag: str | None = None,
    camera_id: str | None = None,
    limit: int = Query(50, ge=1, le=500),
    _=Depends(require("inspector")),
) -> dict[str, Any]:
    with request.app.state.ctx.repo.sessions() as s:
        q = (
            select(FruitRow, ResultRow)
            .join(ResultRow, FruitRow.result_id == ResultRow.id)
            .where(FruitRow.flagged.is_(True), ~_open_verdict())
        )
        if lot_id:
            q = q.where(ResultRow.lot_id == lot_id)
        if camera_id:
            q = q.where(ResultRow.camera_id == camera_id)
        rows = s.execute(q.order_by(FruitRow.priority.asc(), ResultRow.created_at.asc(), FruitRow.id.asc())).all()
        items = [_item(f, r, request.app.state.ctx) for f, r in rows]
    if flag:
        items = [i for i in items if flag in {x["code"] for x in i["flags"]}]
    counts: dict[str, int] = {}
    for i in items:
        for x in i["flags"]:
            counts[x["code"]] = counts.get(x["code"], 0) + 1
    return {"total": len(items), "by_flag": counts, "items": items[:limit]}


@router.post("/fruits/{fruit}/claim", summary="Claim a fruit for examination (two inspectors never hold the same fruit)")
def claim(request: Request, fruit: RowId, inspector: str | None = None, p: Principal = Depends(require("inspector"))) -> dict[str, Any]:
    who = _who(p, inspector)
    now = utcnow()
    with request.app.state.ctx.repo.sessions() as s, s.begin():
        if s.get(FruitRow, fruit) is None:
            raise UnknownFruit(f"no fruit {fruit}")
        # one atomic UPDATE: it succeeds only when the fruit is free, lapsed or already ours
        res = s.execute(
            update(FruitRow)
            .where(FruitRow.id == fruit, or_(FruitRow.claimed_by.is_(None), FruitRow.claimed_until < now, FruitRow.claimed_by == who))
            .values(claimed_by=who, claimed_until=now + dt.timedelta(seconds=CLAIM_SECONDS))
        )
        if res.rowcount != 1:
            holder = s.get(FruitRow, fruit)
            raise FruitClaimed(f"fruit {fruit} is being examined by {holder.claimed_by}")
    return {"fruit": fruit, "claimed_by": who, "claimed_for_s": CLAIM_SECONDS}


class VerdictIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"decision": "confirm"},
                {"decision": "correct", "grade": "Class II", "defect_label": "bruise", "note": "soft spot near stem"},
            ]
        },
    )

    decision: Literal["confirm", "correct"]
    grade: PlainText | None = Field(default=None, max_length=100, description="the correct grade (with decision=correct)")
    defect_label: PlainText | None = Field(default=None, max_length=50, description="e.g. sound, rot, bruise (the commodity's list)")
    note: NoteText | None = Field(default=None, max_length=1000)
    inspector: PlainText | None = Field(default=None, max_length=100, description="the inspector's name, kept with the verdict")


def verdict_payload(v: VerdictRow) -> dict[str, Any]:
    return {
        "id": v.id,
        "fruit": v.fruit_row_id,
        "result_id": v.result_id,
        "inspector": v.inspector,
        "decision": v.decision,
        "model_grade": v.model_grade,
        "grade": v.grade,
        "model_defect_label": v.model_defect_label,
        "defect_label": v.defect_label,
        "flags": v.flags,
        "note": v.note,
        "retracted": v.retracted,
        "created_at": v.created_at.isoformat(),
    }


@router.post("/fruits/{fruit}/verdict", summary="Confirm the model's grade or correct it")
def verdict(request: Request, fruit: RowId, body: VerdictIn, p: Principal = Depends(require("inspector"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    who = _who(p, body.inspector)
    with ctx.repo.sessions() as s, s.begin():
        f = s.get(FruitRow, fruit)
        if f is None:
            raise UnknownFruit(f"no fruit {fruit}")
        r = s.get(ResultRow, f.result_id)
        std = ctx.standards.get(r.standard_id)
        grades = (std.grade_names if std else []) + [OUT_OF_GRADE]
        if body.decision == "correct" and body.grade not in grades:
            raise InvalidGrade(f"grade must be one of {grades} for {r.standard_id}")
        if f.claimed_by and f.claimed_until and f.claimed_until > utcnow() and f.claimed_by != who:
            raise FruitClaimed(f"fruit {fruit} is being examined by {f.claimed_by}")
        if s.scalar(select(VerdictRow.id).where(VerdictRow.fruit_row_id == fruit, VerdictRow.retracted.is_(False))):
            raise AlreadyExamined(f"fruit {fruit} already has a verdict: undo it first")
        model = r.payload["fruits"][f.index]
        v = VerdictRow(
            fruit_row_id=fruit,
            result_id=r.id,
            inspector=who,
            decision=body.decision,
            model_grade=model.get("grade"),
            grade=model.get("grade") if body.decision == "confirm" else body.grade,
            model_defect_label=(model.get("defect") or {}).get("label"),
            defect_label=body.defect_label,
            flags=model.get("flags", []),
            note=body.note,
            created_at=utcnow(),
        )
        s.add(v)
        f.claimed_by, f.claimed_until = None, None
        s.flush()
        s.add(
            FruitEventRow(
                fruit_row_id=fruit,
                result_id=r.id,
                stage="examined",
                at=v.created_at,
                detail={
                    "verdict_id": v.id,
                    "inspector": who,
                    "decision": v.decision,
                    "grade": v.grade,
                    "model_grade": v.model_grade,
                    "defect_label": v.defect_label,
                },
            )
        )
        return verdict_payload(v)


@router.post(
    "/verdicts/{verdict_id}/undo", summary="Retract a verdict: the fruit returns to the queue (the verdict is kept, marked retracted)"
)
def undo(request: Request, verdict_id: RowId, _=Depends(require("inspector"))) -> dict[str, Any]:
    with request.app.state.ctx.repo.sessions() as s, s.begin():
        v = s.get(VerdictRow, verdict_id)
        if v is None:
            raise UnknownVerdict(f"no verdict {verdict_id}")
        v.retracted = True
        s.add(
            FruitEventRow(
                fruit_row_id=v.fruit_row_id, result_id=v.result_id, stage="examination_undone", at=utcnow(), detail={"verdict_id": v.id}
            )
        )
        return verdict_payload(v)


@router.get("/verdicts", summary="Verdicts, newest first (retracted ones included)")
def verdicts(
    request: Request, result_id: str | None = None, limit: int = Query(100, ge=1, le=1000), _=Depends(require("inspector", "trainer"))
) -> dict[str, Any]:
    with request.app.state.ctx.repo.sessions() as s:
        q = select(VerdictRow).order_by(VerdictRow.id.desc()).limit(limit)
        if result_id:
            q = q.where(VerdictRow.result_id == result_id)
        return {"verdicts": [verdict_payload(v) for v in s.scalars(q)]}


@router.get("/summary", summary="How inspectors and the model agree: verdicts by inspector, agreement per flag, corrections")
def summary(request: Request, limit: int = Query(50, ge=1, le=500), _=Depends(require("inspector", "trainer"))) -> dict[str, Any]:
    """Over every standing (not retracted) verdict. A verdict agrees with the model when the
    inspector's grade is the model's grade."""
    with request.app.state.ctx.repo.sessions() as s:
        rows = s.scalars(select(VerdictRow).where(VerdictRow.retracted.is_(False)).order_by(VerdictRow.id.desc())).all()
        by_inspector: dict[str, dict[str, int]] = {}
        by_flag: dict[str, dict[str, int]] = {}
        for v in rows:
            agree = v.grade == v.model_grade
            i = by_inspector.setdefault(v.inspector, {"verdicts": 0, "confirmed": 0, "corrected": 0})
            i["verdicts"] += 1
            i["confirmed" if agree else "corrected"] += 1
            for code in v.flags or ["(none)"]:
                c = by_flag.setdefault(code, {"verdicts": 0, "agree": 0})
                c["verdicts"] += 1
                c["agree"] += int(agree)
        corrections = [verdict_payload(v) for v in rows if v.grade != v.model_grade][:limit]
    return {
        "verdicts": len(rows),
        "agreement": round(sum(1 for v in rows if v.grade == v.model_grade) / len(rows), 4) if rows else None,
        "by_inspector": [{"inspector": k, **v} for k, v in sorted(by_inspector.items())],
        "by_flag": [{"flag": k, **v, "agreement": round(v["agree"] / v["verdicts"], 4)} for k, v in sorted(by_flag.items())],
        "corrections": corrections,
    }

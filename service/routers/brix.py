"""POST /v1/brix: refractometer or inline-sensor readings for one fruit or a lot sample."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, Strict, model_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from grader.errors import UnknownLot
from grader.standards import get_standard
from grader.sweetness import correct_to_20c, is_outlier
from store.tables import BrixReadingRow, LotRow, ResultRow

from ..auth import require
from ..forms import PlainText
from ..limits import PHYSICAL
from ..lots import lot_context, lot_sweetness, regrade_fruit

router = APIRouter(prefix="/v1", tags=["sensors"])


class BrixIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"brix": 12.4, "temperature_c": 24.5, "source": "refractometer", "fruit_id": "F-000123"},
                {"brix": 11.8, "source": "refractometer", "lot_id": "L-2026-001"},
            ]
        },
    )

    brix: Annotated[float, Strict()] = Field(
        ge=PHYSICAL["brix"].lo,
        le=PHYSICAL["brix"].hi,
        allow_inf_nan=False,
        description="the instrument's reading, °Brix (a JSON number: true is not 1)",
    )
    temperature_c: Annotated[float, Strict()] | None = Field(
        default=None,
        ge=PHYSICAL["temperature_c"].lo,
        le=PHYSICAL["temperature_c"].hi,
        allow_inf_nan=False,
        description="juice temperature, °C; the reading is corrected to 20 °C (ICUMSA)",
    )
    source: Literal["refractometer", "nir"] = "refractometer"
    fruit_id: PlainText | None = Field(default=None, max_length=100, description="the fruit measured (its own reading)")
    lot_id: PlainText | None = Field(default=None, max_length=100, description="without fruit_id: a destructive sample of this lot")

    @model_validator(mode="after")
    def _target(self) -> "BrixIn":
        if not math.isfinite(self.brix) or (self.temperature_c is not None and not math.isfinite(self.temperature_c)):
            raise ValueError("brix and temperature_c must be finite numbers")
        if self.fruit_id is None and self.lot_id is None:
            raise ValueError("give fruit_id (a fruit's reading) or lot_id (a lot sample)")
        return self


@router.post("/brix", summary="Record a Brix reading; re-grades the fruit (or the lot's fruit) it concerns")
async def post_brix(request: Request, body: BrixIn, _=Depends(require("camera"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    brix_20c = correct_to_20c(body.brix, body.temperature_c)

    def record() -> dict[str, Any]:
        with ctx.repo.sessions() as s, s.begin():
            lot = None
            if body.lot_id is not None:
                lot = s.get(LotRow, body.lot_id)
                if lot is None:
                    raise UnknownLot(f"no lot {body.lot_id!r}")
            commodity = ctx.commodities.get(lot.commodity) if lot else None
            status, note = "accepted", None
            if commodity is not None and not commodity.brix_range[0] <= brix_20c <= commodity.brix_range[1]:
                status, note = "flagged", f"{brix_20c:.1f} °Brix is outside the {commodity.name} range {commodity.brix_range}: not used"
            elif lot is not None:
                ctx_lot = lot_context(s, lot.id)
                out, z = is_outlier(brix_20c, list(ctx_lot.brix), ctx.policy.outlier_k, ctx.policy.outlier_min_n)
                if out and body.fruit_id is None:
                    status, note = "flagged", f"{brix_20c:.1f} °Brix is {z:+.1f} robust SD from the lot's readings: not used for the lot"
            reading = BrixReadingRow(
                lot_id=body.lot_id,
                fruit_id=body.fruit_id,
                source=body.source,
                brix_reading=body.brix,
                temperature_c=body.temperature_c,
                brix_20c=brix_20c,
                status=status,
                note=note,
            )
            s.add(reading)
            s.flush()
            changes = []
            if status == "accepted":
                changes = _regrade(s, ctx, body, brix_20c)
            return {
                "reading": {
                    "id": reading.id,
                    "brix_20c": round(brix_20c, 2),
                    "brix_reading": body.brix,
                    "temperature_c": body.temperature_c,
                    "source": body.source,
                    "fruit_id": body.fruit_id,
                    "lot_id": body.lot_id,
                    "status": status,
                    "note": note,
                },
                "regraded": changes,
            }

    return await run_in_threadpool(record)


def _regrade(s, ctx, body: BrixIn, brix_20c: float) -> list[dict[str, Any]]:
    from grader.records import SweetnessEvidence

    sound = tuple(c for c in ctx.model.spec.classes if c not in ctx.model.spec.defective_classes)
    changes = []
    if body.fruit_id is not None:
        q = select(ResultRow).where(ResultRow.fruit_id == body.fruit_id)
        if body.lot_id:
            q = q.where(ResultRow.lot_id == body.lot_id)
        ev = SweetnessEvidence(brix=brix_20c, source=body.source)
        targets = [(r, i, ev) for r in s.scalars(q) for i in range(r.n_fruits)]
        reason = f"fruit reading {brix_20c:.1f} °Brix ({body.source})"
    else:
        ev = lot_sweetness(s, body.lot_id)
        q = select(ResultRow).where(ResultRow.lot_id == body.lot_id)
        targets = [
            (r, i, ev) for r in s.scalars(q) for i, f in enumerate(r.payload["fruits"]) if f.get("brix_source") in (None, "lot-sample")
        ]
        reason = f"lot sample now {ev.brix:.2f} °Brix (n={ev.n})"
    for r, i, ev in targets:
        change = regrade_fruit(s, r, i, ev, get_standard(ctx.standards, r.standard_id), ctx.policy, sound, reason)
        if change:
            changes.append(change)
    return changes

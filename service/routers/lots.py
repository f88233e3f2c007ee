"""Lots: open, list, read, close, and the grower's report (JSON, CSV or an HTML page with charts)."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from grader.errors import CommodityMismatch, InvalidCommodity, LotExists, UnknownLot
from grader.standards import get_standard
from store.tables import FruitRow, LotRow, utcnow

from ..auth import require
from ..forms import PlainText
from ..lots import lot_payload, lot_report
from ..report_html import render_lot_report

router = APIRouter(prefix="/v1/lots", tags=["lots"])


class LotIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "id": "L-2026-001",
                    "grower": "Ferri Orchards",
                    "orchard_block": "B7",
                    "variety": "Gala",
                    "commodity": "apple",
                    "standard_id": "unece-ffv50-apples",
                    "harvest_date": "2026-09-14",
                }
            ]
        },
    )

    id: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")
    grower: PlainText | None = Field(default=None, max_length=200)
    orchard_block: PlainText | None = Field(default=None, max_length=200)
    variety: PlainText | None = Field(default=None, max_length=100)
    commodity: PlainText | None = Field(default=None, max_length=50, description="default: the standard's commodity")
    standard_id: PlainText | None = Field(
        default=None, max_length=100, description="default: the commodity's default standard, else the service's"
    )
    harvest_date: dt.date | None = None


def _lot(request: Request, lot_id: str) -> LotRow:
    lot = request.app.state.ctx.repo.get_lot(lot_id)
    if lot is None:
        raise UnknownLot(f"no lot {lot_id!r}")
    return lot


@router.post("", summary="Open a lot", status_code=201)
def create_lot(request: Request, body: LotIn, _=Depends(require("camera", "inspector", "trainer"))) -> dict[str, Any]:
    ctx = request.app.state.ctx
    if body.commodity is not None and body.commodity not in ctx.commodities:
        raise InvalidCommodity(f"unknown commodity {body.commodity!r}; known: {sorted(ctx.commodities)}")
    # the standard asked for, else the commodity's default standard, else the service's
    std_id = body.standard_id or (ctx.commodities[body.commodity].default_standard if body.commodity else None)
    std = get_standard(ctx.standards, std_id) if std_id else ctx.default_standard
    if body.commodity is not None and std.commodity != body.commodity:
        raise CommodityMismatch(f"standard {std.id!r} is for {std.commodity}, not {body.commodity}", field="standard_id")
    commodity = body.commodity or std.commodity
    if commodity not in ctx.commodities:
        raise InvalidCommodity(f"unknown commodity {commodity!r}; known: {sorted(ctx.commodities)}")
    with ctx.repo.sessions() as s, s.begin():
        if s.get(LotRow, body.id) is not None:
            raise LotExists(f"lot {body.id!r} already exists")
        lot = LotRow(
            id=body.id,
            grower=body.grower,
            orchard_block=body.orchard_block,
            variety=body.variety,
            commodity=commodity,
            standard_id=std.id,
            harvest_date=body.harvest_date,
            status="open",
            created_at=utcnow(),
        )
        s.add(lot)
    return lot_payload(lot)


@router.get("", summary="List lots, newest first")
def list_lots(
    request: Request,
    status: Literal["open", "closed"] | None = None,
    limit: int = Query(50, ge=1, le=500),
    _=Depends(require("camera", "inspector", "trainer")),
) -> dict[str, Any]:
    with request.app.state.ctx.repo.sessions() as s:
        q = select(LotRow).order_by(LotRow.created_at.desc()).limit(limit)
        if status:
            q = q.where(LotRow.status == status)
        return {"lots": [lot_payload(x) for x in s.scalars(q)]}


@router.get("/{lot_id}", summary="One lot")
def get_lot(request: Request, lot_id: str, _=Depends(require("camera", "inspector", "trainer"))) -> dict[str, Any]:
    return lot_payload(_lot(request, lot_id))


@router.post("/{lot_id}/close", summary="Close a lot: no more grades are accepted into it (inspectors)")
def close_lot(request: Request, lot_id: str, _=Depends(require("inspector"))) -> dict[str, Any]:
    with request.app.state.ctx.repo.sessions() as s, s.begin():
        lot = s.get(LotRow, lot_id)
        if lot is None:
            raise UnknownLot(f"no lot {lot_id!r}")
        if lot.status == "open":
            lot.status, lot.closed_at = "closed", utcnow()
    return lot_payload(lot)


@router.post("/{lot_id}/reopen", summary="Reopen a closed lot: grades are accepted into it again (inspectors)")
def reopen_lot(request: Request, lot_id: str, _=Depends(require("inspector"))) -> dict[str, Any]:
    with request.app.state.ctx.repo.sessions() as s, s.begin():
        lot = s.get(LotRow, lot_id)
        if lot is None:
            raise UnknownLot(f"no lot {lot_id!r}")
        if lot.status == "closed":
            lot.status, lot.closed_at = "open", None
    return lot_payload(lot)


@router.get(
    "/{lot_id}/report",
    summary="The lot's grower report",
    description="`format=json` (default), `csv` (one row per fruit) or `html` (a page with charts).",
    responses={200: {"content": {"application/json": {}, "text/csv": {}, "text/html": {}}}},
)
async def report(
    request: Request, lot_id: str, format: Literal["json", "csv", "html"] = "json", _=Depends(require("inspector", "trainer"))
) -> Any:
    ctx = request.app.state.ctx
    lot = _lot(request, lot_id)
    std = get_standard(ctx.standards, lot.standard_id)

    def build() -> Any:
        with ctx.repo.sessions() as s:
            if format == "csv":
                return _csv(s, lot.id)
            rep = lot_report(s, lot, std)
        return render_lot_report(rep) if format == "html" else rep

    out = await run_in_threadpool(build)
    if format == "csv":
        return Response(out, media_type="text/csv", headers={"Content-Disposition": f'attachment; filename="lot-{lot.id}.csv"'})
    if format == "html":  # a static page: no script may run in it, and nobody may frame it
        return HTMLResponse(
            out,
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
                "X-Frame-Options": "DENY",
            },
        )
    return out


#: a cell a spreadsheet would run as a formula starts with one of these (OWASP, CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """A text cell that a spreadsheet would take for a formula, prefixed with a quote so it is
    shown as text (OWASP's advice); numbers are written as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def _csv(s, lot_id: str) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(
        ["result_id", "fruit_index", "fruit_id", "grade", "diameter_mm", "brix", "brix_source", "defect_label", "defect_score", "flagged"]
    )
    for f in s.scalars(select(FruitRow).where(FruitRow.lot_id == lot_id).order_by(FruitRow.id)):
        w.writerow(
            [
                csv_cell(v)
                for v in (
                    f.result_id,
                    f.index,
                    f.fruit_id or "",
                    f.grade or "",
                    "" if f.diameter_mm is None else round(f.diameter_mm, 2),
                    "" if f.brix is None else round(f.brix, 2),
                    f.brix_source or "",
                    f.defect_label or "",
                    "" if f.defect_score is None else round(f.defect_score, 4),
                    int(f.flagged),
                )
            ]
        )
    return buf.getvalue()

"""A fruit's journey: every stage from camera to outlet, as written when it happened."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import select

from grader.errors import UnknownFruit
from store.tables import FruitEventRow, FruitRow

from ..auth import require

router = APIRouter(prefix="/v1/fruits", tags=["fruits"])


@router.get("/{fruit_id}/events", summary="A fruit's journey: captured, measured, graded, flagged, outlet, examined")
def fruit_events(request: Request, fruit_id: str, _=Depends(require("inspector", "trainer"))) -> dict[str, Any]:
    """``fruit_id`` is the fruit's own id (as the camera or the video tracker gave it; its latest
    grading when it was graded twice), or the review queue's numeric fruit number."""
    with request.app.state.ctx.repo.sessions() as s:
        row = s.scalar(select(FruitRow).where(FruitRow.fruit_id == fruit_id).order_by(FruitRow.id.desc()).limit(1))
        if row is None and fruit_id.isdigit() and len(fruit_id) < 19:
            row = s.get(FruitRow, int(fruit_id))
        if row is None:
            raise UnknownFruit(f"no fruit {fruit_id!r}", field="fruit_id")
        events = s.scalars(
            select(FruitEventRow).where(FruitEventRow.fruit_row_id == row.id).order_by(FruitEventRow.at, FruitEventRow.id)
        ).all()
        return {
            "fruit": row.id,
            "fruit_id": row.fruit_id,
            "result_id": row.result_id,
            "fruit_index": row.index,
            "events": [{"stage": e.stage, "at": e.at.isoformat(), **e.detail} for e in events],
        }

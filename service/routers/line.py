"""The live line for supervisors: one snapshot (JSON) or a stream of them (server-sent events)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from ..auth import require
from ..sorter import line_snapshot

router = APIRouter(prefix="/v1/line", tags=["line"])


@router.get("/stats", summary="The line now: throughput per lane, grade mix, flag rate, last flagged fruit, cameras, alerts")
def stats(request: Request, window_min: int = Query(60, ge=6, le=24 * 60), _=Depends(require("inspector", "trainer"))) -> dict[str, Any]:
    return line_snapshot(request.app.state.ctx, window_min)


@router.get(
    "/stream",
    summary="The same snapshot every few seconds as server-sent events (text/event-stream)",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
)
async def stream(
    request: Request,
    window_min: int = Query(60, ge=6, le=24 * 60),
    every_s: float = Query(2.0, ge=0.5, le=60),
    max_events: int | None = Query(None, ge=1, le=100_000, description="end the stream after this many (default: never)"),
    _=Depends(require("inspector", "trainer")),
) -> StreamingResponse:
    ctx = request.app.state.ctx

    async def events():
        sent = 0
        while not await request.is_disconnected() and (max_events is None or sent < max_events):
            snap = await run_in_threadpool(line_snapshot, ctx, window_min)
            yield f"event: line\ndata: {json.dumps(snap)}\n\n"
            sent += 1
            if max_events is None or sent < max_events:
                await asyncio.sleep(every_s)

    return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

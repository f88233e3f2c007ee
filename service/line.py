"""The line as supervisors watch it: throughput per lane, grade mix, flag rate, the last flagged
fruit, cameras, and alerts when a rate leaves its normal band. Computed from stored results."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import select

from store.repository import Repository
from store.tables import FruitRow, ResultRow, utcnow

#: the "now" window rates are judged on, and the minimum fruit in it before a rate alert can fire
RECENT_MIN = 5
MIN_FRUIT_FOR_RATE_ALERT = 10
#: a flag rate doubling from almost nothing (0 % to 2 %) is not worth a supervisor's attention
MIN_FLAG_RATE_FOR_ALERT = 0.05


def line_stats(repo: Repository, window_min: int = 60, silent_s: float = 120.0, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    since = now - dt.timedelta(minutes=window_min)
    recent_since = now - dt.timedelta(minutes=RECENT_MIN)
    with repo.sessions() as s:
        rows = s.execute(
            select(
                FruitRow.grade,
                FruitRow.flagged,
                FruitRow.result_id,
                FruitRow.index,
                FruitRow.id,
                FruitRow.fruit_id,
                ResultRow.created_at,
                ResultRow.lane,
                ResultRow.camera_id,
            )
            .join(ResultRow, FruitRow.result_id == ResultRow.id)
            .where(ResultRow.created_at >= since)
            .order_by(ResultRow.created_at)
        ).all()
        last_by_camera = {
            cam: at
            for cam, at in s.execute(
                select(ResultRow.camera_id, ResultRow.created_at).where(ResultRow.created_at >= since).order_by(ResultRow.created_at)
            ).all()
        }
    recent = [r for r in rows if r.created_at >= recent_since]
    earlier = [r for r in rows if r.created_at < recent_since]
    lanes: dict[str, int] = {}
    for r in recent:
        lanes[r.lane or "–"] = lanes.get(r.lane or "–", 0) + 1
    grades: dict[str, int] = {}
    for r in rows:
        grades[r.grade or "no grade"] = grades.get(r.grade or "no grade", 0) + 1

    def rate(xs) -> float | None:
        return None if not xs else sum(1 for x in xs if x.flagged) / len(xs)

    flag_now, flag_before = rate(recent), rate(earlier)
    alerts = []
    if (
        flag_now is not None
        and flag_before is not None
        and len(recent) >= MIN_FRUIT_FOR_RATE_ALERT
        and len(earlier) >= MIN_FRUIT_FOR_RATE_ALERT
        and flag_now >= max(2 * flag_before, MIN_FLAG_RATE_FOR_ALERT)
    ):
        alerts.append(
            {
                "kind": "flag_rate",
                "severity": "warning",
                "message": f"flag rate {flag_now:.0%} in the last {RECENT_MIN} min, at least double its "
                f"{flag_before:.0%} over the {window_min - RECENT_MIN} min before",
            }
        )
    cameras = []
    for cam, at in sorted(last_by_camera.items(), key=lambda kv: str(kv[0])):
        quiet = (now - at).total_seconds()
        cameras.append({"camera_id": cam, "last_result_at": at.isoformat(), "quiet_s": round(quiet, 1), "silent": quiet > silent_s})
        if quiet > silent_s:
            alerts.append(
                {
                    "kind": "camera_silent",
                    "severity": "critical",
                    "camera_id": cam,
                    "message": f"camera {cam or '(none)'} has sent nothing for {quiet:.0f} s (it sent within the last {window_min} min)",
                }
            )
    flagged = [r for r in rows if r.flagged][-8:][::-1]
    return {
        "at": now.isoformat(),
        "window_min": window_min,
        "recent_min": RECENT_MIN,
        "fruit": {"window": len(rows), "recent": len(recent)},
        "throughput_per_min": {
            "all": round(len(recent) / RECENT_MIN, 2),
            "lanes": [{"lane": k, "fruit_per_min": round(v / RECENT_MIN, 2)} for k, v in sorted(lanes.items())],
        },
        "grade_mix": [{"grade": g, "count": n, "share": round(n / len(rows), 4)} for g, n in sorted(grades.items(), key=lambda kv: -kv[1])],
        "flag_rate": {
            "recent": None if flag_now is None else round(flag_now, 4),
            "before": None if flag_before is None else round(flag_before, 4),
        },
        "last_flagged": [
            {
                "fruit": r.id,
                "fruit_id": r.fruit_id,
                "result_id": r.result_id,
                "lane": r.lane,
                "camera_id": r.camera_id,
                "grade": r.grade,
                "at": r.created_at.isoformat(),
                "thumbnail_url": f"/v1/results/{r.result_id}/overlay?fruit_index={r.index}&layers=contour",
            }
            for r in flagged
        ],
        "cameras": cameras,
        "alerts": alerts,
    }

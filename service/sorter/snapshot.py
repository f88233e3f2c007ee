"""What the /line page and the line's alerts show of the sorter link, in the database's words (every
process alike): backlog, decisions published, fruit ejected, mis-ejected and never reported ejected."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import func, select

from store.repository import Repository
from store.tables import utcnow

from .broker import topic_level
from .outbox import T

#: the window line rates are judged on (as service/line.py)
RECENT_MIN = 5


def sorter_snapshot(
    repo: Repository, settings, window_min: int, now: dt.datetime | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The sorter link in the database's words (every process alike): backlog, decisions published,
    fruit ejected and mis-ejected lately, fruit never reported ejected; and the alerts they raise."""
    now = now or utcnow()
    recent = now - dt.timedelta(minutes=RECENT_MIN)
    timeout = settings.sorter_ejection_timeout_s
    decision = T.c.result_id.is_not(None)
    with repo.sessions() as s:
        backlog, oldest = s.execute(select(func.count(), func.min(T.c.created_at)).where(T.c.sent_at.is_(None))).one()
        published = s.scalar(select(func.count()).where(decision, T.c.sent_at >= recent)) or 0
        ejected = s.scalar(select(func.count()).where(T.c.ejected_at >= recent)) or 0
        mis = s.execute(
            select(T.c.stream, func.count())
            .where(T.c.ejected_at >= recent, T.c.ejected_outlet.is_distinct_from(T.c.outlet))
            .group_by(T.c.stream)
        ).all()
        missing = (
            []
            if not timeout
            else s.execute(
                # fruit whose time to be ejected ran out within the last RECENT_MIN minutes
                select(T.c.stream, func.count())
                .where(
                    decision,
                    T.c.sent_at >= recent - dt.timedelta(seconds=timeout),
                    T.c.sent_at < now - dt.timedelta(seconds=timeout),
                    T.c.ejected_at.is_(None),
                )
                .group_by(T.c.stream)
            ).all()
        )
    oldest_s = 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())

    def per_line(rows) -> dict[str, int]:
        out: dict[str, int] = {}
        for stream, n in rows:
            out[stream.split("/", 1)[0]] = out.get(stream.split("/", 1)[0], 0) + n
        return out

    mis_by_line, missing_by_line = per_line(mis), per_line(missing)
    line = topic_level(settings.line_name)
    alerts = []
    if backlog and oldest_s >= settings.mqtt_backlog_alert_s:
        alerts.append(
            {
                "kind": "mqtt_backlog",
                "severity": "critical",
                "line": line,
                "message": f"{backlog} message(s) for the sorter not yet acknowledged by the MQTT broker, the oldest "
                f"{oldest_s:.0f} s old: the sorter is not getting the outlet decisions",
            }
        )
    for ln, n in sorted(mis_by_line.items()):
        alerts.append(
            {
                "kind": "mis_ejection",
                "severity": "critical",
                "line": ln,
                "message": f"{n} fruit ejected at another outlet than decided in the last {RECENT_MIN} min ({ln})",
            }
        )
    for ln, n in sorted(missing_by_line.items()):
        alerts.append(
            {
                "kind": "not_ejected",
                "severity": "critical",
                "line": ln,
                "message": f"{n} fruit sent to the sorter in the last {RECENT_MIN} min not reported ejected within {timeout:g} s ({ln})",
            }
        )
    snap = {
        "backlog": backlog,
        "backlog_oldest_s": round(oldest_s, 1),
        "published_recent": published,
        "ejected_recent": ejected,
        "mis_ejected_recent": sum(mis_by_line.values()),
        "not_ejected": sum(missing_by_line.values()),
    }
    return snap, alerts


def alert_key(alert: dict[str, Any]) -> str:
    return ":".join([alert["kind"], alert.get("line") or "", alert.get("camera_id") or ""])[:300]


def line_snapshot(ctx, window_min: int = 60) -> dict[str, Any]:
    """The /line page's snapshot (service/line.py) with the sorter link's section and alerts."""
    from ..line import line_stats

    snap = line_stats(ctx.repo, window_min, ctx.settings.line_silent_s)
    if ctx.sorter is not None:
        section, alerts = sorter_snapshot(ctx.repo, ctx.settings, window_min)
        snap["sorter"] = {**ctx.sorter.health(), **section}
        snap["alerts"] = snap["alerts"] + alerts
    return snap

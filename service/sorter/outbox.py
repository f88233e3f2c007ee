"""The outbox, the database side of the sorter link: every graded fruit's decision (and every line
alert) written as a row in the transaction that stores it, numbered per stream (``seq``, per camera)."""

from __future__ import annotations

import threading
import time
from typing import Any

from sqlalchemy import insert, update

from store.tables import OutboxRow, ResultRow, SorterStreamRow, utcnow

from .broker import topic_level

T = OutboxRow.__table__


class Outbox:
    """Writes the sorter's messages in the caller's transaction, and counts what waits."""

    def __init__(self, settings) -> None:
        self.settings = settings
        self.prefix = settings.mqtt_topic_prefix.strip("/") or "orchard-grader"
        if any(ch in self.prefix for ch in "+#\x00"):
            raise ValueError(f"GRADER_MQTT_TOPIC_PREFIX: no wildcards (+, #) in a topic, got {self.prefix!r}")
        self.wake = threading.Event()  # set after a commit that added messages
        #: result id -> time.time() its transaction committed, when a benchmark asks (a dict), else None
        self.commit_times: dict[str, float] | None = None
        self._local = threading.local()

    def line_for(self, camera_id: str | None) -> str:
        return topic_level((self.settings.camera_lines or {}).get(camera_id or "", self.settings.line_name))

    def decision_topic(self, line: str, camera_id: str | None) -> str:
        return f"{self.prefix}/{line}/{topic_level(camera_id)}/outlet"

    def alerts_topic(self, line: str) -> str:
        return f"{self.prefix}/{line}/alerts"

    def ejections_filter(self) -> str:
        return f"{self.prefix}/+/ejections"

    def enqueue(self, conn, results: list[ResultRow]) -> None:
        """One decision per graded fruit of ``results``, in the transaction that stores them."""
        by_stream: dict[str, list[dict[str, Any]]] = {}
        for r in results:
            line = self.line_for(r.camera_id)
            fruits = r.payload.get("fruits", [])
            for f in r.fruits:
                p = fruits[f.index] if f.index < len(fruits) else {}
                msg = {
                    "result_id": r.id,
                    "fruit_index": f.index,
                    "fruit_id": r.fruit_id,
                    "camera_id": r.camera_id,
                    "lane": r.lane,
                    "outlet": p.get("outlet"),
                    "grade": p.get("grade"),
                    "provisional": bool(p.get("provisional")),
                    "flags": list(p.get("flags", [])),
                    "diameter_mm": p.get("diameter_mm"),
                    "graded_at": r.created_at.isoformat(),
                }
                by_stream.setdefault(f"{line}/{topic_level(r.camera_id)}", []).append(
                    {
                        "topic": self.decision_topic(line, r.camera_id),
                        "payload": msg,
                        "retain": False,
                        "result_id": r.id,
                        "fruit_index": f.index,
                        "fruit_row_id": f.id,
                        "outlet": msg["outlet"],
                    }
                )
        self._insert(conn, by_stream)
        if self.commit_times is not None:
            self._local.ids = getattr(self._local, "ids", []) + [r.id for r in results]

    def _insert(self, conn, by_stream: dict[str, list[dict[str, Any]]]) -> None:
        now = utcnow()
        rows = []
        for stream in sorted(by_stream):  # one order of the counters' row locks for every writer: no deadlock
            msgs = by_stream[stream]
            first = next_seq(conn, stream, len(msgs))
            for k, m in enumerate(msgs):
                m["payload"]["seq"] = first + k
                rows.append({**m, "stream": stream, "seq": first + k, "created_at": now, "attempts": 0})
        if rows:
            conn.execute(insert(T), rows)

    def enqueue_alerts(self, conn, events: list[dict[str, Any]]) -> None:
        by_stream: dict[str, list[dict[str, Any]]] = {}
        for ev in events:
            by_stream.setdefault(f"{ev['line']}/alerts", []).append({"topic": self.alerts_topic(ev["line"]), "payload": ev, "retain": True})
        self._insert(conn, by_stream)

    def committed(self) -> None:
        if self.commit_times is not None:
            t = time.time()
            for rid in getattr(self._local, "ids", ()):
                self.commit_times[rid] = t
            self._local.ids = []
        self.wake.set()


def next_seq(conn, stream: str, n: int) -> int:
    """Take ``n`` numbers of ``stream``'s sequence in the caller's transaction; returns the first.
    The counter's row stays locked until that commits, so a stream's numbers are committed in order."""
    st = SorterStreamRow.__table__
    bump = update(st).where(st.c.stream == stream).values(last_seq=st.c.last_seq + n).returning(st.c.last_seq)
    last = conn.execute(bump).scalar()
    if last is None:
        if conn.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        conn.execute(dialect_insert(st).values(stream=stream, last_seq=0).on_conflict_do_nothing())
        last = conn.execute(bump).scalar()
    return last - n + 1

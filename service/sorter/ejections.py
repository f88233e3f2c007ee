"""The sorter's ejections coming back: each one stored as the fruit's ``ejected`` event and on its
decision's outbox row, mis-ejections and duplicates told apart. A part of ``Publisher``
(publisher.py): paho's thread queues the messages, the publisher's loop records them."""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue

from sqlalchemy import insert, select, update

from store.tables import FruitEventRow, FruitRow

from .metrics import EJECTIONS
from .outbox import T

log = logging.getLogger("grader.sorter")


class EjectionIntake:
    """The ejections queued by paho's thread, recorded in batches: mixed into ``Publisher``."""

    def _take_ejections(self) -> None:
        items = []
        while len(items) < 500:
            try:
                items.append(self._ejections.get_nowait())
            except queue.Empty:
                break
        if items:
            self.record_ejections(items)

    def record_ejections(self, items: list[tuple[str, bytes, dt.datetime]]) -> None:
        """Store each ejection as the fruit's `ejected` event and on its decision's outbox row."""
        with self.repo._write_transaction() as conn:
            for topic, raw, received in items:
                try:
                    msg = json.loads(raw)
                    result_id, index = str(msg["result_id"]), int(msg["fruit_index"])
                    outlet = msg.get("outlet")
                    outlet = None if outlet is None else str(outlet)[:100]
                except (ValueError, TypeError, KeyError) as exc:
                    EJECTIONS.labels("invalid").inc()
                    log.warning("MQTT: ignored an ejection on %s that is not {result_id, fruit_index, outlet, at}: %s", topic, exc)
                    continue
                row = conn.execute(
                    select(T.c.id, T.c.outlet, T.c.ejected_at, T.c.fruit_row_id).where(T.c.result_id == result_id, T.c.fruit_index == index)
                ).first()
                fruit_row_id = (
                    row.fruit_row_id
                    if row is not None
                    else conn.execute(select(FruitRow.id).where(FruitRow.result_id == result_id, FruitRow.index == index)).scalar()
                )
                if fruit_row_id is None:
                    EJECTIONS.labels("unknown_fruit").inc()
                    log.warning("MQTT: ejection of an unknown fruit (result %s, fruit %s) on %s", result_id[:40], index, topic)
                    continue
                if row is not None and row.ejected_at is not None:
                    EJECTIONS.labels("duplicate").inc()  # the sorter sent it again (QoS 1): kept once
                    continue
                decided = row.outlet if row is not None else None
                mis = row is not None and outlet != decided
                if row is not None:
                    conn.execute(update(T).where(T.c.id == row.id).values(ejected_at=received, ejected_outlet=outlet))
                conn.execute(
                    insert(FruitEventRow.__table__),
                    [
                        {
                            "fruit_row_id": fruit_row_id,
                            "result_id": result_id,
                            "stage": "ejected",
                            "at": received,
                            "detail": {
                                "outlet": outlet,
                                "decided_outlet": decided,
                                "mis_ejected": mis,
                                "sorter_at": msg.get("at"),
                                "line": topic.split("/")[-2] if topic.count("/") >= 2 else None,
                            },
                        }
                    ],
                )
                EJECTIONS.labels("mis_ejected" if mis else "ok" if row is not None else "not_published").inc()

"""The line's alerts out to the sorter: each alert published once when it starts and once when it
clears (retained), checked by one process of all the workers and replicas each period. A part of
``Publisher`` (publisher.py)."""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select, update

from store.tables import LineAlertRow, SorterStreamRow, utcnow

from .broker import topic_level
from .outbox import next_seq
from .snapshot import alert_key

#: the sorter_streams row that says when the line's alerts were last checked (seconds since CLOCK_EPOCH), by any process
ALERTS_CLOCK = "~alerts-checked-at"
CLOCK_EPOCH = 1_767_225_600  # 2026-01-01 UTC: seconds since then fit the counter's 32-bit integer for decades


class AlertSync:
    """Publishing the line's alerts as they start and clear: mixed into ``Publisher``."""

    def _my_turn(self) -> bool:
        """Whether this process checks the line's alerts now: one process of all the workers and
        replicas each period (the check reads the line's last hour), by a conditional update of a
        shared clock row."""
        st = SorterStreamRow.__table__
        now = int(time.time()) - CLOCK_EPOCH
        due = now - int(self.ALERTS_EVERY_S) + 1
        with self.repo._write_transaction() as conn:
            n = next_seq(conn, ALERTS_CLOCK, 0)  # creates the row once
            if n - 1 > now:  # a clock far ahead (set by a host with a wrong clock): take it back
                conn.execute(update(st).where(st.c.stream == ALERTS_CLOCK).values(last_seq=0))
            return conn.execute(update(st).where(st.c.stream == ALERTS_CLOCK, st.c.last_seq < due).values(last_seq=now)).rowcount == 1

    def _sync_alerts(self) -> None:
        """Publish each line alert once when it starts and once when it clears (retained: the
        topic holds the line's alerts in force), whichever process notices first."""
        if self.alert_snapshot is None or not self._my_turn():
            return
        desired = {}
        for a in self.alert_snapshot()["alerts"]:
            a = dict(a)  # a camera's alert goes to its line, the others name theirs or go to the default line
            if "line" not in a:
                a["line"] = self.outbox.line_for(a["camera_id"]) if "camera_id" in a else topic_level(self.settings.line_name)
            desired[alert_key(a)] = a
        now = utcnow()
        with self.repo._write_transaction() as conn:
            active = {r.key: r for r in conn.execute(select(LineAlertRow.__table__))}
            started = [k for k in desired if k not in active]
            cleared = [k for k in active if k not in desired]
            if not started and not cleared:
                return
            at = now.isoformat()
            if started:
                conn.execute(
                    insert(LineAlertRow.__table__),
                    [{"key": k, "line": desired[k]["line"], "alert": {**desired[k], "since": at}, "since": now} for k in started],
                )
            if cleared:
                conn.execute(delete(LineAlertRow.__table__).where(LineAlertRow.__table__.c.key.in_(cleared)))
            in_force = {k: {**(active[k].alert if k in active else desired[k])} for k in desired}
            for k in started:
                in_force[k]["since"] = at
            events = []
            for k, state in [(k, "started") for k in started] + [(k, "cleared") for k in cleared]:
                alert = dict(desired[k]) if state == "started" else dict(active[k].alert)
                line = alert.get("line") or topic_level(self.settings.line_name)
                events.append(
                    {
                        "line": line,
                        "event": state,
                        "at": at,
                        "alert": alert,
                        "active": [a for a in in_force.values() if a.get("line") == line],
                    }
                )
            self.outbox.enqueue_alerts(conn, events)
        self.outbox.committed()

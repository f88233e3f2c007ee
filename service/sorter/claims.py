"""The publisher's claims on outbox rows: in one transaction, mark what the broker acknowledged as
sent, release what did not go, and claim the next rows, so several processes never send one
message at the same time and a camera's messages go out in order. A part of ``Publisher``
(publisher.py), which holds the state it uses (``repo``, ``me``, ``claim_for``, ``outbox``...)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
from dataclasses import dataclass

from sqlalchemy import insert, or_, select, update

from store.tables import FruitEventRow, utcnow

from .metrics import COMMIT_TO_PUBACK, PUBLISHED
from .outbox import T


@dataclass
class _Claimed:
    id: int
    topic: str
    body: bytes
    retain: bool
    created_at: dt.datetime
    stream: str
    seq: int
    fruit_row_id: int | None
    result_id: str | None
    outlet: str | None


class OutboxClaims:
    """Claiming, marking and releasing outbox rows: mixed into ``Publisher``."""

    def _claim(self, limit: int) -> list[_Claimed]:
        """In one transaction: mark what the broker acknowledged as sent (with the fruit's
        `published` event), release the rest of this publisher's claims, and claim the next
        ``limit`` rows. Per stream (camera) only rows in order from its oldest unsent one are kept,
        and a stream another publisher is sending is left to it: a camera's messages never
        overtake one another."""
        marked, self._to_mark = self._to_mark, []
        try:
            return self._claim_tx(marked, limit)
        except BaseException:
            self._to_mark = marked + self._to_mark  # marked at the next try (the database away, say)
            raise

    def _claim_tx(self, marked: list[tuple[_Claimed, float]], limit: int) -> list[_Claimed]:
        if not marked and not self._holding:  # idle: a read, not a turn at the writers' lock
            with self.repo.sessions() as s:
                if s.execute(select(T.c.id).where(T.c.sent_at.is_(None)).limit(1)).first() is None:
                    return []
        now = utcnow()
        out: list[_Claimed] = []
        with self.repo._write_transaction() as conn:
            if conn.dialect.name == "postgresql":
                # not waiting for the WAL's flush: what a crash could lose here is a claim (it lapses) or a
                # mark (the message goes again, a duplicate the controller drops), never a decision
                conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
            if marked:
                conn.execute(
                    update(T).where(T.c.id.in_([r.id for r, _ in marked])).values(sent_at=now, claimed_by=None, claimed_until=None)
                )
                events = [
                    {
                        "fruit_row_id": r.fruit_row_id,
                        "result_id": r.result_id,
                        "stage": "published",
                        "at": dt.datetime.fromtimestamp(at, dt.timezone.utc),
                        "detail": {"topic": r.topic, "seq": r.seq, "outlet": r.outlet},
                    }
                    for r, at in marked
                    if r.fruit_row_id is not None
                ]
                if events:
                    conn.execute(insert(FruitEventRow.__table__), events)
            if self._holding or not limit:  # claims left from a batch that did not go through
                conn.execute(update(T).where(T.c.claimed_by == self.me, T.c.sent_at.is_(None)).values(claimed_by=None, claimed_until=None))
                self._holding = False
            if limit:
                pending = conn.execute(
                    select(
                        T.c.id,
                        T.c.stream,
                        T.c.claimed_by,
                        T.c.claimed_until,
                        T.c.topic,
                        T.c.payload,
                        T.c.retain,
                        T.c.created_at,
                        T.c.seq,
                        T.c.fruit_row_id,
                        T.c.result_id,
                        T.c.outlet,
                    )
                    .where(T.c.sent_at.is_(None))
                    .order_by(T.c.id)
                    .limit(limit * 2)
                ).all()
                by_id = {p.id: p for p in pending}
                busy: set[str] = set()
                take: list[int] = []
                stream_of: dict[int, str] = {}
                dead: set[str] = set()
                for p in pending:
                    if p.stream in busy:
                        continue
                    if p.claimed_by and p.claimed_by != self.me and p.claimed_until is not None and p.claimed_until > now:
                        if not self._gone(p.claimed_by):
                            busy.add(p.stream)
                            continue
                        dead.add(p.claimed_by)
                    if len(take) < limit:
                        take.append(p.id)
                        stream_of[p.id] = p.stream
                if take:
                    got = set(
                        conn.execute(
                            update(T)
                            .where(
                                T.c.id.in_(take),
                                T.c.sent_at.is_(None),
                                or_(T.c.claimed_by.is_(None), T.c.claimed_until < now, T.c.claimed_by == self.me, T.c.claimed_by.in_(dead)),
                            )
                            .values(claimed_by=self.me, claimed_until=now + self.claim_for, attempts=T.c.attempts + 1)
                            .returning(T.c.id)
                        ).scalars()
                    )
                    keep, broken = [], set()
                    for i in take:  # a row lost to another publisher ends its stream's run
                        if stream_of[i] in broken:
                            continue
                        if i in got:
                            keep.append(i)
                        else:
                            broken.add(stream_of[i])
                    lost = got - set(keep)
                    if lost:
                        conn.execute(update(T).where(T.c.id.in_(lost)).values(claimed_by=None, claimed_until=None))
                    for i in keep:
                        r = by_id[i]
                        out.append(
                            _Claimed(
                                r.id,
                                r.topic,
                                json.dumps(r.payload, separators=(",", ":")).encode(),
                                bool(r.retain),
                                r.created_at,
                                r.stream,
                                r.seq,
                                r.fruit_row_id,
                                r.result_id,
                                r.outlet,
                            )
                        )
                    self._holding = bool(keep)
        for r, at in marked:
            lat = at - r.created_at.timestamp()
            self.latencies.append(lat)
            if r.result_id is not None and self.outbox.commit_times is not None:
                self.acks.append((r.result_id, at))
            COMMIT_TO_PUBACK.observe(max(0.0, lat))
            PUBLISHED.labels("decision" if r.result_id else "alert").inc()
        return out

    def _gone(self, claimer: str) -> bool:
        """Whether a claim's holder was a process of this host that is no longer running (killed,
        say): its claims need not be waited out."""
        host, _, rest = claimer.rpartition("-")[0].rpartition("-")
        if host != socket.gethostname()[:50] or not rest.isdigit():
            return False
        try:
            os.kill(int(rest), 0)
        except ProcessLookupError:
            return True
        except OSError:  # alive, another user's
            return False
        return False

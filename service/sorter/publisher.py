"""The publisher, one thread per service process: connects to the broker (a new client for each
connection), drains the outbox to it in order with QoS 1, takes in the sorter's ejections and keeps
the line's alerts published (claims.py, ejections.py, alerts.py hold those parts)."""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import queue
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select

from store.repository import Repository
from store.tables import utcnow

from .alerts import AlertSync
from .broker import connect, make_client, parse_url, topic_level
from .claims import OutboxClaims, _Claimed
from .ejections import EjectionIntake
from .metrics import BACKLOG, BACKLOG_AGE, CONNECTED, EJECTIONS
from .outbox import Outbox, T

log = logging.getLogger("grader.sorter")


#: decisions sent this long ago are forgotten (their fruit events stay)
KEEP_SENT = dt.timedelta(hours=24)


@dataclass
class _Session:
    """One connection to the broker. A new client for each connection: paho would resend its own
    unacknowledged messages after a reconnect, and the outbox does that, in order, instead."""

    client: Any
    connected: threading.Event = field(default_factory=threading.Event)
    lost: threading.Event = field(default_factory=threading.Event)
    changed: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: dict[int, float] = field(default_factory=dict)  # mid -> time.time() of its PUBACK
    refused: set[int] = field(default_factory=set)
    reason: str = ""


def _quick_ack(client) -> None:
    """Acknowledge what the broker sent at once. A broker that leaves Nagle's algorithm on (Mosquitto's
    default, set_tcp_nodelay false) holds each PUBACK until its previous one is acknowledged, and
    Linux delays that acknowledgement (up to 40 ms) while the publisher has nothing to send: every
    PUBACK after the first of a batch arrived 20-40 ms late (bench/mqtt_latency.py)."""
    sock = client.socket()
    if sock is not None and hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


class Publisher(OutboxClaims, EjectionIntake, AlertSync):
    """Drains the outbox to the broker, takes in the sorter's ejections, keeps the line's alerts
    published. ``start()`` with the app, ``close()`` at shutdown."""

    MAX_BATCH = 200
    IDLE_POLL_S = 0.25  # how soon rows written by another process are seen (this process's own: at once)
    STATS_EVERY_S = 1.0
    ALERTS_EVERY_S = 5.0
    PRUNE_EVERY_S = 300.0

    def __init__(self, settings, repo: Repository, outbox: Outbox) -> None:
        self.cfg = parse_url(settings.mqtt_url)
        self.settings, self.repo, self.outbox = settings, repo, outbox
        self.me = f"{socket.gethostname()[:50]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.client_id = f"{self.cfg.client_id_prefix}-{self.me}"
        self.claim_for = dt.timedelta(seconds=settings.mqtt_claim_s)
        self.ack_timeout_s = max(1.0, settings.mqtt_claim_s / 2)
        self.connected = False
        self.last_error: str | None = None
        self.backlog = (0, 0.0)  # messages waiting, age of the oldest (s): refreshed every second
        self.latencies: collections.deque[float] = collections.deque(maxlen=200_000)  # outbox write to PUBACK, seconds
        self.acks: collections.deque[tuple[str, float]] = collections.deque(maxlen=200_000)  # (result id, PUBACK time) for benchmarks
        self.alert_snapshot: Any = None  # () -> the line's snapshot with its alerts (line_snapshot); set by the app
        self._ejections: queue.Queue = queue.Queue(maxsize=100_000)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._session: _Session | None = None
        self._to_mark: list[tuple[_Claimed, float]] = []
        self._holding = True  # claims of this publisher may be in the database (released at the first claim)

    # -- lifecycle

    def start(self) -> "Publisher":
        self._thread = threading.Thread(target=self._run, name="grader-mqtt-publisher", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop: acknowledged messages are marked, claims on the others released."""
        self._stop.set()
        self.outbox.wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def health(self) -> dict[str, Any]:
        n, age = self.backlog
        return {
            "broker": self.cfg.safe(),
            "connected": self.connected,
            "degraded": self.degraded(),
            "backlog": n,
            "backlog_oldest_s": round(age, 1),
            **({"error": self.last_error} if self.last_error and not self.connected else {}),
        }

    def degraded(self) -> bool:
        return not self.connected or self.backlog[1] >= self.settings.mqtt_backlog_alert_s

    # -- the loop

    def _run(self) -> None:
        backoff, next_try, next_stats, next_alerts, next_prune = 0.2, 0.0, 0.0, 0.0, 0.0
        down_logged, was_connected, resume_at, failing = False, False, 0.0, False
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_stats:
                    self._refresh_stats()
                    next_stats = now + self.STATS_EVERY_S
                if now >= next_alerts:
                    self._sync_alerts()
                    next_alerts = now + self.ALERTS_EVERY_S
                if now >= next_prune:
                    self._prune()
                    next_prune = now + self.PRUNE_EVERY_S
                self._take_ejections()
                s = self._session
                if s is not None and s.lost.is_set():
                    self._drop(s)
                    s = None
                if s is None:
                    if self._to_mark:
                        self._claim(0)  # mark what was acknowledged before the connection went
                    if now < next_try:
                        self._stop.wait(min(0.1, next_try - now))
                        continue
                    try:
                        s = self._connect()
                        backoff, down_logged = 0.2, False
                        log.info("MQTT: connected to %s as %s", self.cfg.safe(), self.client_id)
                        if was_connected or self.backlog[0]:  # the broker is back: let the controllers subscribe again first
                            resume_at = time.monotonic() + self.settings.mqtt_resume_delay_s
                        was_connected = True
                    except Exception as exc:  # broker down, refused, TLS...: grading goes on, the backlog grows
                        self.last_error = f"{type(exc).__name__}: {exc}"
                        if not down_logged:
                            log.warning("MQTT: cannot reach %s (%s); decisions wait in the outbox", self.cfg.safe(), self.last_error)
                            down_logged = True
                        next_try = time.monotonic() + backoff
                        backoff = min(backoff * 2, 2.0)
                        continue
                if now < resume_at:
                    self._stop.wait(min(0.1, resume_at - now))
                    continue
                self.outbox.wake.clear()
                if not self._drain(s):
                    self.outbox.wake.wait(self.IDLE_POLL_S)
            except Exception as exc:  # the database away, say: keep going, the rows stay in the outbox
                if not failing:  # once per outage
                    log.warning("MQTT publisher: %s: %s; retrying every second", type(exc).__name__, str(exc)[:300])
                failing = True
                self._stop.wait(1.0)
                continue
            failing = False
        if self._session is not None:
            self._drop(self._session)
        try:
            self._claim(0)
        except Exception:  # noqa: BLE001 - shutting down with the database away: the claims lapse by themselves
            pass

    def _connect(self) -> _Session:
        c = make_client(self.cfg, self.client_id)
        c.reconnect_delay_set(min_delay=3600, max_delay=3600)  # never paho's own reconnect: a new client, see _Session
        c.max_inflight_messages_set(self.MAX_BATCH)
        s = _Session(c)
        c.on_connect = lambda cl, ud, flags, rc, props=None: self._on_connect(s, rc)
        c.on_disconnect = lambda cl, ud, flags, rc, props=None: self._on_disconnect(s, rc)
        c.on_publish = lambda cl, ud, mid, rc=None, props=None: self._on_publish(s, mid, rc)
        c.on_message = lambda cl, ud, msg: self._on_message(msg)
        connect(c, self.cfg)
        c.loop_start()
        if not s.connected.wait(6.0) or s.lost.is_set():
            c.loop_stop()
            c.disconnect()
            raise ConnectionError(s.reason or "no CONNACK from the broker")
        self._session, self.connected, self.last_error = s, True, None
        CONNECTED.set(1)
        return s

    def _drop(self, s: _Session) -> None:
        if self._session is s:
            self._session = None
        self.connected = False
        CONNECTED.set(0)
        try:
            s.client.disconnect()
        finally:
            s.client.loop_stop()
        if s.reason:
            self.last_error = s.reason
            log.warning("MQTT: connection to %s lost (%s); decisions wait in the outbox", self.cfg.safe(), s.reason)

    # paho's callbacks (its network thread)

    def _on_connect(self, s: _Session, rc) -> None:
        sock = s.client.socket()
        if sock is not None:  # each decision goes out as it is published, not held for the next (Nagle)
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # not TCP (a unix socket)
                pass
        if rc.is_failure:
            s.reason = f"broker refused the connection: {rc}"
            s.lost.set()
        else:
            # one subscriber per group gets each ejection, however many workers and replicas
            s.client.subscribe(f"$share/{topic_level(self.cfg.client_id_prefix)}/{self.outbox.ejections_filter()}", qos=1)
        s.connected.set()
        s.changed.set()

    def _on_disconnect(self, s: _Session, rc) -> None:
        if not s.reason and not self._stop.is_set():
            s.reason = f"disconnected: {rc}"
        s.lost.set()
        s.changed.set()

    def _on_publish(self, s: _Session, mid: int, rc) -> None:
        _quick_ack(s.client)
        with s.lock:
            if rc is not None and getattr(rc, "is_failure", False):
                s.refused.add(mid)  # MQTT 5: the broker would not take it (not authorised...): sent again later
            else:
                s.acked[mid] = time.time()
        s.changed.set()

    def _on_message(self, msg) -> None:
        try:
            self._ejections.put_nowait((msg.topic, msg.payload, utcnow()))
        except queue.Full:
            EJECTIONS.labels("dropped").inc()
        self.outbox.wake.set()  # recorded at once, not at the next poll

    # -- outbox

    def _drain(self, s: _Session) -> int:
        """Claim the next rows, publish them in order, wait for their PUBACKs. Returns how many went."""
        rows = self._claim(self.MAX_BATCH)
        if not rows:
            return 0
        from paho.mqtt.client import MQTT_ERR_SUCCESS

        mids: dict[int, _Claimed] = {}
        for r in rows:
            info = s.client.publish(r.topic, r.body, qos=1, retain=r.retain)
            if info.rc != MQTT_ERR_SUCCESS:
                break
            mids[info.mid] = r
        deadline = time.monotonic() + self.ack_timeout_s
        while True:
            with s.lock:
                done = all(m in s.acked or m in s.refused for m in mids)
            if done or s.lost.is_set() or time.monotonic() > deadline:
                break
            s.changed.wait(0.05)
            s.changed.clear()
        with s.lock:
            acked = [(r, s.acked.pop(m)) for m, r in mids.items() if m in s.acked]
            for m in mids:
                s.refused.discard(m)
        self._to_mark.extend(acked)
        self._holding = len(acked) < len(rows)  # marking the acknowledged ones clears their claims
        if len(acked) < len(rows):  # the rest go again, in order, on a fresh connection
            if not s.lost.is_set():
                s.reason = s.reason or f"{len(rows) - len(acked)} message(s) not acknowledged within {self.ack_timeout_s:g} s"
                s.lost.set()
            self._claim(0)
        return len(acked)

    def _refresh_stats(self) -> None:
        with self.repo.sessions() as s:
            n, oldest = s.execute(select(func.count(), func.min(T.c.created_at)).where(T.c.sent_at.is_(None))).one()
        age = 0.0 if oldest is None else max(0.0, (utcnow() - oldest).total_seconds())
        self.backlog = (n, age)
        BACKLOG.set(n)
        BACKLOG_AGE.set(age)

    def _prune(self) -> None:
        with self.repo._write_transaction() as conn:
            conn.execute(delete(T).where(T.c.sent_at < utcnow() - KEEP_SENT))

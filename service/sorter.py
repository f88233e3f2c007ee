"""The sorter link over MQTT: every graded fruit's outlet decision out to the sorter's controller,
the sorter's ejections back into each fruit's history, and the line's alerts out.

Nothing is lost on the way out. A decision is an outbox row written in the same transaction as its
result (``Outbox.enqueue``, called by ``Repository``); a ``Publisher`` thread in each service
process claims the oldest rows (a claim per row, as the review queue claims fruit, so several
workers or replicas never send one message at the same time and a camera's messages go out in
order), publishes them with QoS 1 and marks them sent only on the broker's PUBACK. A message may be
sent twice (a PUBACK lost with the connection, a process killed between PUBACK and marking): the
controller deduplicates on ``result_id`` + ``fruit_index``, and sees gaps and repeats in ``seq``,
which counts up per camera. While the broker is away grading goes on, the backlog grows and is
shown on /readyz, /metrics and the /line page; when it is back the backlog drains in order.

Topics (``<prefix>`` is GRADER_MQTT_TOPIC_PREFIX, ``<line>`` the camera's line):
    <prefix>/<line>/<camera_id>/outlet   decisions out, QoS 1
    <prefix>/<line>/ejections            ejections in: {"result_id", "fruit_index", "outlet", "at"}
    <prefix>/<line>/alerts               line alerts out when one starts or clears, QoS 1, retained
"""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import os
import queue
import re
import socket
import ssl
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy import delete, func, insert, or_, select, update

from store.repository import Repository
from store.tables import FruitEventRow, FruitRow, LineAlertRow, OutboxRow, ResultRow, SorterStreamRow, utcnow

from .metrics import REGISTRY

log = logging.getLogger("grader.sorter")

BACKLOG = Gauge("grader_mqtt_backlog", "outbox messages not yet acknowledged by the MQTT broker (all processes)", registry=REGISTRY)
BACKLOG_AGE = Gauge(
    "grader_mqtt_backlog_oldest_seconds", "age of the oldest outbox message not yet acknowledged (0 when none)", registry=REGISTRY
)
CONNECTED = Gauge("grader_mqtt_connected", "1 while this process is connected to the MQTT broker", registry=REGISTRY)
PUBLISHED = Counter("grader_mqtt_published_total", "messages acknowledged by the broker (PUBACK)", ["kind"], registry=REGISTRY)
EJECTIONS = Counter("grader_mqtt_ejections_total", "ejections reported by the sorter, by outcome", ["outcome"], registry=REGISTRY)
COMMIT_TO_PUBACK = Histogram(
    "grader_mqtt_commit_to_puback_seconds",
    "from a message's transaction to the broker's PUBACK",
    registry=REGISTRY,
    buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 30, 120),
)

T = OutboxRow.__table__
#: the window line rates are judged on (as service/line.py)
RECENT_MIN = 5
#: the sorter_streams row that says when the line's alerts were last checked (seconds since CLOCK_EPOCH), by any process
ALERTS_CLOCK = "~alerts-checked-at"
CLOCK_EPOCH = 1_767_225_600  # 2026-01-01 UTC: seconds since then fit the counter's 32-bit integer for decades
#: decisions sent this long ago are forgotten (their fruit events stay)
KEEP_SENT = dt.timedelta(hours=24)


# --- configuration


@dataclass(frozen=True)
class BrokerConfig:
    host: str
    port: int
    tls: bool = False
    username: str | None = None
    password: str | None = None
    version: int = 4  # MQTT 3.1.1; 5 for MQTT 5
    client_id_prefix: str = "orchard-grader"
    ca_file: str | None = None
    insecure: bool = False
    keepalive: int = 15

    def safe(self) -> str:
        """The broker for logs and health checks, without the password."""
        user = f"{self.username}@" if self.username else ""
        return f"{'mqtts' if self.tls else 'mqtt'}://{user}{self.host}:{self.port} (MQTT {'5' if self.version == 5 else '3.1.1'})"


def parse_url(url: str) -> BrokerConfig:
    """mqtt://[user:password@]host[:port][?version=5&client_id=x&keepalive=15], mqtts:// for TLS
    (&ca=/path/ca.pem, &insecure=1). ValueError names what is wrong."""
    u = urlsplit(url)
    scheme = u.scheme.lower()
    if scheme not in ("mqtt", "tcp", "mqtts", "ssl", "tls"):
        raise ValueError(f"GRADER_MQTT_URL: scheme must be mqtt:// or mqtts://, got {url.split('://')[0]!r}")
    if not u.hostname:
        raise ValueError("GRADER_MQTT_URL: no broker host")
    tls = scheme in ("mqtts", "ssl", "tls")
    q = {k: v[-1] for k, v in parse_qs(u.query).items()}
    versions = {"3.1.1": 4, "311": 4, "4": 4, "5": 5, "5.0": 5}
    if q.get("version", "3.1.1") not in versions:
        raise ValueError(f"GRADER_MQTT_URL: version must be 3.1.1 or 5, got {q['version']!r}")
    return BrokerConfig(
        host=u.hostname,
        port=u.port or (8883 if tls else 1883),
        tls=tls,
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password else None,
        version=versions[q.get("version", "3.1.1")],
        client_id_prefix=q.get("client_id", "orchard-grader"),
        ca_file=q.get("ca"),
        insecure=q.get("insecure", "0").lower() in ("1", "true", "yes"),
        keepalive=int(q.get("keepalive", 15)),
    )


_TOPIC_UNSAFE = re.compile(r"[/+#\x00]")


def topic_level(value: str | None) -> str:
    """A camera or line name as one topic level: no separators or wildcards."""
    return _TOPIC_UNSAFE.sub("_", value) if value else "none"


def make_client(cfg: BrokerConfig, client_id: str, persistent: bool = False):
    """A paho client for ``cfg`` (TLS, credentials, protocol version), not yet connected; connect it
    with ``connect(client, cfg)``. ``persistent``: the broker keeps the session's subscriptions and
    queues QoS 1 messages while the client is away (``grader sorter-sim``, as a controller would)."""
    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    if cfg.version == 5:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    else:
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=not persistent)
    c._grader_persistent = persistent
    if cfg.username:
        c.username_pw_set(cfg.username, cfg.password)
    if cfg.tls:
        c.tls_set(ca_certs=cfg.ca_file, cert_reqs=ssl.CERT_NONE if cfg.insecure else ssl.CERT_REQUIRED)
        if cfg.insecure:
            c.tls_insecure_set(True)
    c.connect_timeout = 5.0
    return c


def connect(client, cfg: BrokerConfig) -> None:
    """Connect a client made by ``make_client`` (MQTT 5: a persistent session lasts a day)."""
    if cfg.version == 5:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        persistent = getattr(client, "_grader_persistent", False)
        props.SessionExpiryInterval = 86_400 if persistent else 0
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive, clean_start=not persistent, properties=props)
    else:
        client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive)


# --- the outbox (database side)


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


# --- what the line page and the alerts show


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
    from .line import line_stats

    snap = line_stats(ctx.repo, window_min, ctx.settings.line_silent_s)
    if ctx.sorter is not None:
        section, alerts = sorter_snapshot(ctx.repo, ctx.settings, window_min)
        snap["sorter"] = {**ctx.sorter.health(), **section}
        snap["alerts"] = snap["alerts"] + alerts
    return snap


# --- the publisher (one thread per service process)


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


class Publisher:
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

    # -- ejections in

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

    # -- alerts out

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

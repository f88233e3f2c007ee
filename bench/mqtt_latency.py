"""Commit-to-PUBACK latency of the sorter link at a steady rate of graded fruit.

    .venv/bin/python bench/mqtt_latency.py [--rate 100] [--seconds 20] [--cameras 4] [--broker mqtt://127.0.0.1:1883]
                                           [--postgres postgresql+psycopg://postgres@127.0.0.1:5432/test]

Results of one fruit each are stored at --rate per second (spread over --cameras cameras, from 8
threads as concurrent requests do) through ``Repository.save_result``, as the service stores a
graded fruit (on a fresh SQLite file, or with --postgres on a fresh database created through that
server's URL and dropped afterwards): its outlet decision goes into the
outbox in the result's transaction, and the service's ``Publisher`` thread publishes it (QoS 1)
once that commits. Grading itself is left out: what is timed is the link. A subscriber on the same
broker receives every decision.

Prints, per message: from its result's commit to the broker's PUBACK (p50, p99, max) and to the
subscriber's receipt, and from its outbox row's write (in that transaction, before the commit) to
the PUBACK, which is what the service's histogram grader_mqtt_commit_to_puback_seconds counts; the decisions
sent, received and duplicated, and whether each camera's ``seq`` arrived in order without gaps.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rows(i: int, camera: str):
    from store.tables import FruitRow, ImageRow, ResultRow

    sha = hashlib.sha256(f"bench-{i}-{uuid.uuid4()}".encode()).hexdigest()
    img = ImageRow(sha256=sha, path=f"/images/{sha}.jpg", media_type="image/jpeg", width_px=256, height_px=256, size_bytes=20_000)
    res = ResultRow(
        image_sha256=sha,
        model_name="apple-defect",
        model_version="0.3.0",
        standard_id="unece-ffv50-apples",
        standard_version="2020",
        n_fruits=1,
        flagged=False,
        camera_id=camera,
        fruit_id=f"{camera}-{i}",
        lane="1",
        payload={"fruits": [{"diameter_mm": 71.2, "grade": "Class I", "outlet": "lane-2", "provisional": False, "flags": []}]},
    )
    return img, res, [FruitRow(index=0, flagged=False, diameter_mm=71.2, grade="Class I", defect_label="sound", fruit_id=f"{camera}-{i}")]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=100.0, help="fruit per second")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--cameras", type=int, default=4)
    ap.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    ap.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        help="a PostgreSQL server (its URL with any existing database): "
        "a fresh database is created there for the run and dropped after it (default: a fresh SQLite file)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from paho.mqtt import client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    from service.settings import Settings
    from service.sorter import Outbox, Publisher
    from store.engine import init_db, make_engine
    from store.repository import Repository

    tmp = Path(tempfile.mkdtemp(prefix="mqtt-bench-"))
    prefix = f"bench-{uuid.uuid4().hex[:6]}"
    db_url, admin = None, None
    if args.postgres:
        import sqlalchemy

        name = f"grader_bench_{uuid.uuid4().hex[:8]}"
        admin = sqlalchemy.create_engine(args.postgres, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        db_url = args.postgres.rsplit("/", 1)[0] + "/" + name
    settings = Settings(data_dir=tmp, database_url=db_url, mqtt_url=args.broker, mqtt_topic_prefix=prefix)
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    repo = Repository(engine)
    repo.outbox = Outbox(settings)
    repo.outbox.commit_times = {}  # stamped right after each result's transaction commits
    pub = Publisher(settings, repo, repo.outbox).start()

    received: list[tuple[float, dict]] = []
    lock = threading.Lock()
    host, port = args.broker.split("//")[1].split("?")[0].split(":")
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"{prefix}-sub")
    subscribed = threading.Event()
    sub.on_subscribe = lambda *a: subscribed.set()

    def on_message(_c, _u, msg):
        t = time.time()
        with lock:
            received.append((t, json.loads(msg.payload)))

    sub.on_message = on_message
    sub.connect(host, int(port))
    sub.subscribe(f"{prefix}/+/+/outlet", qos=1)
    sub.loop_start()
    subscribed.wait(5)
    deadline = time.monotonic() + 10
    while not pub.connected and time.monotonic() < deadline:
        time.sleep(0.05)

    from concurrent.futures import ThreadPoolExecutor

    n = int(args.rate * args.seconds)
    late = 0

    def store(i: int) -> None:
        img, res, fruits = _rows(i, f"cam-{i % args.cameras}")
        repo.save_result(img, res, fruits)

    t0 = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        for i in range(n):  # a steady stream, as a line's cameras send it
            due = t0 + i / args.rate
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            else:
                late += 1
            pool.submit(store, i)
    sent_s = time.monotonic() - t0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with lock:
            if len({m["result_id"] for _, m in received}) >= n:
                break
        time.sleep(0.05)
    time.sleep(0.3)
    pub.close()
    sub.disconnect()
    sub.loop_stop()

    commits = repo.outbox.commit_times
    puback = [(at - commits[r]) * 1000 for r, at in pub.acks if r in commits]
    written = [x * 1000 for x in pub.latencies]
    first: dict[str, float] = {}
    dup = 0
    for t, m in received:
        if m["result_id"] in first:
            dup += 1
        else:
            first[m["result_id"]] = t
    delivered = [(first[r] - commits[r]) * 1000 for r in first if r in commits]
    in_order = True
    for cam in range(args.cameras):
        seqs = [m["seq"] for _, m in received if m["camera_id"] == f"cam-{cam}"]
        in_order &= seqs == list(range(1, len(seqs) + 1))
    out = {
        "rate_offered": args.rate,
        "rate_stored": round(n / sent_s, 1),
        "fruit": n,
        "late_sends": late,
        "database": engine.dialect.name,
        "commit_to_puback_ms": {"p50": round(pct(puback, 0.5), 2), "p99": round(pct(puback, 0.99), 2), "max": round(max(puback), 2)},
        "outbox_write_to_puback_ms": {"p50": round(pct(written, 0.5), 2), "p99": round(pct(written, 0.99), 2)},
        "commit_to_subscriber_ms": {
            "p50": round(pct(delivered, 0.5), 2),
            "p99": round(pct(delivered, 0.99), 2),
            "max": round(max(delivered), 2) if delivered else None,
        },
        "received": len(first),
        "duplicates": dup,
        "seq_in_order_without_gaps": in_order,
    }
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(
            f"{n} fruit at {args.rate:g}/s offered ({out['rate_stored']}/s stored, {engine.dialect.name}), {args.cameras} cameras, broker {args.broker}"
        )
        print(
            f"commit -> PUBACK     p50 {out['commit_to_puback_ms']['p50']} ms, p99 {out['commit_to_puback_ms']['p99']} ms, "
            f"max {out['commit_to_puback_ms']['max']} ms"
        )
        print(
            f"outbox row written (in the result's transaction) -> PUBACK p50 {out['outbox_write_to_puback_ms']['p50']} ms, "
            f"p99 {out['outbox_write_to_puback_ms']['p99']} ms"
        )
        print(
            f"commit -> subscriber p50 {out['commit_to_subscriber_ms']['p50']} ms, p99 {out['commit_to_subscriber_ms']['p99']} ms, "
            f"max {out['commit_to_subscriber_ms']['max']} ms"
        )
        print(f"received {len(first)}/{n}, duplicates {dup}, every camera's seq in order without gaps: {in_order}")
    engine.dispose()
    if admin is not None:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    return 0 if len(first) == n and in_order else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak: several service replicas sharing PostgreSQL, real JPEGs at a steady rate, then a reconciliation.

    .venv/bin/python bench/soak.py [--minutes 30] [--rate 5] [--workers 2] [--database-url URL] [--json out.json]

Starts `--workers` `grader serve` processes sharing one PostgreSQL database (a fresh database on
127.0.0.1:5432 unless --database-url) and one data dir, posts JPEGs (FruitNet apple photos from
../shared/data when present, else synthetic fruit) open-loop at `--rate` fruit/s spread over the
replicas, each request with its own Idempotency-Key, for the given time. Then it reconciles every
request against the database:

  sent = accepted (2xx) + errors reported to the client (4xx/5xx/no answer)
  lost = accepted requests whose result or image is not stored            (must be 0)

and prints each worker's resident memory (RSS) after warm-up and at the end, sampled every
minute. Exit status 1 when anything accepted was lost or the reconciliation does not add up.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.serve import images  # noqa: E402
from service.process import ServerProcess  # noqa: E402

KEY = "soak-camera-key-0123456789"
PG_ADMIN = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def fresh_database() -> tuple[str, callable]:
    from sqlalchemy import create_engine

    name = f"grader_soak_{uuid.uuid4().hex[:8]}"
    admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", drop


async def load(urls: list[str], jpegs: list[bytes], rate: float, seconds: float, outcomes: dict, on_minute) -> None:
    """Open loop: request n leaves at n/rate seconds whatever happened to the others."""
    sem = asyncio.Semaphore(256)
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=256)) as client:

        async def one(n: int) -> None:
            key = f"soak-{n:07d}"
            url = urls[n % len(urls)] + "/v1/grade"
            t0 = time.perf_counter()
            async with sem:
                try:
                    r = await client.post(
                        url,
                        headers={"X-API-Key": KEY, "Idempotency-Key": key},
                        files={"image": (f"{key}.jpg", jpegs[n % len(jpegs)], "image/jpeg")},
                        data={"camera_id": f"soak-cam-{n % 8}"},
                    )
                    ok = r.status_code == 200
                    outcomes[key] = (r.status_code, r.json()["id"] if ok else r.text[:200], time.perf_counter() - t0)
                except httpx.HTTPError as exc:
                    outcomes[key] = (0, f"{type(exc).__name__}: {exc}"[:200], time.perf_counter() - t0)

        tasks, start, n, next_minute = [], time.perf_counter(), 0, 60.0
        while (elapsed := time.perf_counter() - start) < seconds:
            due = int(elapsed * rate) + 1
            while n < due:
                tasks.append(asyncio.create_task(one(n)))
                n += 1
            if elapsed >= next_minute:
                on_minute(elapsed)
                next_minute += 60.0
            await asyncio.sleep(min(0.01, 1.0 / rate))
        await asyncio.gather(*tasks)


def reconcile(db_url: str, outcomes: dict) -> dict:
    from sqlalchemy import create_engine, text

    engine = create_engine(db_url)
    with engine.connect() as c:
        # stored as "<API key fingerprint>|<Idempotency-Key>": idempotency keys are scoped to the API key
        stored = {
            k.split("|", 1)[1]: rid
            for k, rid in c.execute(text("SELECT idempotency_key, id FROM results WHERE idempotency_key LIKE '%|soak-%'")).all()
        }
        images = {r for (r,) in c.execute(text("SELECT r.id FROM results r JOIN images i ON i.sha256 = r.image_sha256"))}
    engine.dispose()
    accepted = {k: v[1] for k, v in outcomes.items() if v[0] == 200}
    errors = {k: v for k, v in outcomes.items() if v[0] != 200}
    lost = sorted(k for k, rid in accepted.items() if stored.get(k) != rid or rid not in images)
    by_status: dict[str, int] = {}
    for code, _, _ in errors.values():
        by_status[str(code or "no answer")] = by_status.get(str(code or "no answer"), 0) + 1
    return {
        "sent": len(outcomes),
        "accepted": len(accepted),
        "errors": len(errors),
        "errors_by_status": by_status,
        "stored": len(stored),
        "lost": len(lost),
        "lost_keys": lost[:20],
        "errors_stored_anyway": sum(1 for k in errors if k in stored),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--rate", type=float, default=5.0, help="fruit/s offered, over all workers")
    ap.add_argument("--workers", type=int, default=2, help="service processes sharing the database")
    ap.add_argument("--database-url", help="PostgreSQL URL (default: a fresh database on 127.0.0.1:5432, dropped after)")
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--json", help="write the figures here too")
    args = ap.parse_args(argv)

    jpegs = images(args.images)
    db_url, drop = (args.database_url, lambda: None) if args.database_url else fresh_database()
    env = {"GRADER_API_KEYS": f"camera:{KEY}", "GRADER_DATABASE_URL": db_url, "GRADER_RATE_LIMIT_PER_MIN": "0"}
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory() as tmp:
        servers = [ServerProcess(Path(tmp) / "var", env, ready_timeout_s=120).start() for _ in range(args.workers)]
        try:
            for s in servers:  # warm up each worker before the first memory reading
                for b in jpegs[:4]:
                    httpx.post(s.url + "/v1/grade", headers={"X-API-Key": KEY}, files={"image": ("w.jpg", b, "image/jpeg")}, timeout=60)
            rss = {s.proc.pid: [rss_mb(s.proc.pid)] for s in servers}

            def on_minute(elapsed: float) -> None:
                for s in servers:
                    rss[s.proc.pid].append(rss_mb(s.proc.pid))
                done = len(outcomes)
                print(f"  {elapsed / 60:5.1f} min: {done} sent, RSS " + ", ".join(f"{rss[p][-1]:.0f}" for p in rss) + " MiB", flush=True)

            outcomes: dict = {}
            print(
                f"soak: {args.workers} workers on {db_url.rsplit('/', 1)[-1]}, {args.rate:g} fruit/s for {args.minutes:g} min", flush=True
            )
            t0 = time.perf_counter()
            asyncio.run(load([s.url for s in servers], jpegs, args.rate, seconds, outcomes, on_minute))
            wall = time.perf_counter() - t0
            for s in servers:
                rss[s.proc.pid].append(rss_mb(s.proc.pid))
            crashed = [s.proc.pid for s in servers if s.proc.poll() is not None]
        finally:
            logs = [s.log() for s in servers]
            for s in servers:
                s.stop()
        rec = reconcile(db_url, outcomes)
    drop()
    lat = sorted(v[2] * 1000 for v in outcomes.values() if v[0] == 200)
    pct = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]) if lat else (lambda q: float("nan"))
    rec.update(
        {
            "workers": args.workers,
            "rate_offered": args.rate,
            "minutes": args.minutes,
            "wall_s": round(wall, 1),
            "served_per_s": round(rec["accepted"] / wall, 2),
            "p50_ms": round(pct(0.5), 1),
            "p99_ms": round(pct(0.99), 1),
            "rss_mib": {str(p): [round(v, 1) for v in vals] for p, vals in rss.items()},
            "rss_growth_mib": {str(p): round(vals[-1] - vals[0], 1) for p, vals in rss.items()},
            "crashed_workers": crashed,
            "tracebacks_in_logs": sum(log.count("Traceback") for log in logs),
        }
    )
    ok = rec["lost"] == 0 and rec["sent"] == rec["accepted"] + rec["errors"] and not crashed
    print(f"\nsent {rec['sent']} = accepted {rec['accepted']} + errors {rec['errors']} {rec['errors_by_status'] or ''}")
    print(
        f"stored {rec['stored']}; lost (accepted but not stored with its image): {rec['lost']}; "
        f"errors whose request was stored anyway: {rec['errors_stored_anyway']}"
    )
    print(f"served {rec['served_per_s']} fruit/s, latency p50 {rec['p50_ms']} ms, p99 {rec['p99_ms']} ms")
    for p, vals in rss.items():
        print(
            f"worker {p}: RSS after warm-up {vals[0]:.0f} MiB, at the end {vals[-1]:.0f} MiB "
            f"(max {max(vals):.0f}, growth {vals[-1] - vals[0]:+.0f} MiB)"
        )
    print(f"tracebacks in worker logs: {rec['tracebacks_in_logs']}; crashed workers: {crashed or 'none'}")
    print("RECONCILED: nothing accepted was lost" if ok else "FAILED reconciliation")
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

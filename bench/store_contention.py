"""How long committing a result takes when worker processes share one SQLite file under load.

    .venv/bin/python bench/store_contention.py [--processes 2] [--threads 8] [--seconds 8] [--cpu-ms 12]

Each of --processes processes runs --threads threads that, like the requests of a `grader serve`
worker, spend about --cpu-ms of CPU (NumPy work, holding the GIL much of the time, as grading
does) and then store one result. Two ways of storing are timed, each on a fresh database:

* ``one transaction each``: every result in its own transaction, writers waiting on SQLite's busy
  handler (the service's store before group commit);
* ``group commit``: ``Repository.save_result`` as the service runs it (results waiting together
  are committed in one transaction, the processes take turns on a file lock).

Prints the time to store a result (p50, p95, p99, max) and results stored per second.
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _rows(tag: str):
    from store.tables import FruitRow, ImageRow, ResultRow

    sha = hashlib.sha256(tag.encode()).hexdigest()
    img = ImageRow(sha256=sha, path=f"/images/{sha}.jpg", media_type="image/jpeg", width_px=256, height_px=256, size_bytes=20_000)
    res = ResultRow(
        image_sha256=sha,
        model_name="apple-defect",
        model_version="0.1.0",
        standard_id="unece-ffv50-apples",
        standard_version="2020",
        n_fruits=1,
        flagged=False,
        payload={"fruits": [{"diameter_mm": 71.2, "grade": "Class I", "defect": {"label": "sound"}}]},
    )
    return img, res, [FruitRow(index=0, flagged=False, diameter_mm=71.2, grade="Class I", defect_label="sound")]


def _burn(cpu_ms: float, rng: np.random.Generator) -> None:
    """About cpu_ms of CPU in many small NumPy calls (the GIL is held between them, as in grading)."""
    a = rng.random((64, 64), dtype=np.float32)
    end = time.thread_time() + cpu_ms / 1000
    while time.thread_time() < end:
        a = np.sqrt(a * a + 1.0) - 0.5


def _worker(url: str, mode: str, threads: int, seconds: float, cpu_ms: float, pid: int, out) -> None:
    import uuid

    from store.engine import make_engine
    from store.repository import Repository, _SaveJob
    from store.tables import utcnow

    engine = make_engine(url)
    repo = Repository(engine)
    lat: list[float] = []
    stop = time.perf_counter() + seconds

    def loop(t: int) -> None:
        rng = np.random.default_rng(pid * 100 + t)
        k = 0
        while time.perf_counter() < stop:
            _burn(cpu_ms, rng)
            img, res, fruits = _rows(f"{mode}-{pid}-{t}-{k}")
            t0 = time.perf_counter()
            if mode == "group":
                repo.save_result(img, res, fruits)
            else:  # one transaction per result, waiting on SQLite's busy handler
                res.id, res.created_at, res.fruits = str(uuid.uuid4()), utcnow(), fruits
                with engine.begin() as conn:
                    Repository._insert(conn, _SaveJob(img, res, fruits))
            lat.append(time.perf_counter() - t0)
            k += 1

    ts = [threading.Thread(target=loop, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    engine.dispose()
    out.put(lat)


def run(mode: str, processes: int, threads: int, seconds: float, cpu_ms: float) -> tuple[np.ndarray, float]:
    from store.engine import init_db, make_engine

    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'grader.db'}"
        init_db(make_engine(url))
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        procs = [ctx.Process(target=_worker, args=(url, mode, threads, seconds, cpu_ms, i, out)) for i in range(processes)]
        t0 = time.perf_counter()
        for p in procs:
            p.start()
        lat = [x for _ in procs for x in out.get()]
        for p in procs:
            p.join()
        return np.array(lat) * 1000, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--threads", type=int, default=8, help="grades in progress per worker (GRADER_MAX_IN_FLIGHT is 8)")
    ap.add_argument("--seconds", type=float, default=8)
    ap.add_argument("--cpu-ms", type=float, default=12)
    args = ap.parse_args()
    print(
        f"{args.processes} processes x {args.threads} threads, {args.cpu_ms:g} ms of CPU before each result, "
        f"{args.seconds:g} s per way, one SQLite file (WAL)"
    )
    print(f"{'store':<24} {'results':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for mode, name in (("each", "one transaction each"), ("group", "group commit")):
        lat, _ = run(mode, args.processes, args.threads, args.seconds, args.cpu_ms)
        p50, p95, p99 = np.percentile(lat, [50, 95, 99])
        print(f"{name:<24} {len(lat):>8} {p50:>7.1f} {p95:>7.1f} {p99:>7.1f} {lat.max():>7.1f}")


if __name__ == "__main__":
    main()

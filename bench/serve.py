"""End-to-end serving benchmark: the real server, real JPEGs, many concurrent cameras.

    .venv/bin/python bench/serve.py [--seconds 10] [--concurrency 1,4,16] [--rate 50,75,100] [--workers N] [--database-url URL]
                                    [--sqlite-synchronous NORMAL,FULL] [--model-dirs DIR,DIR]

Starts `grader serve` (SQLite in a temporary data dir unless --database-url), posts JPEGs (FruitNet
apple photos from ../shared/data when present, else synthetic fruit) and prints, in one run:
  1. model-only ONNX Runtime throughput (crops/s) at batch 1 and 16, on this machine;
  2. closed loop: N clients posting back to back: throughput (fruit/s), p50/p95/p99 latency;
  3. open loop: fixed offered rates (the target: a 10-lane line at 10 fruit/s per lane = 100/s): p50/p95/p99.
The load generator runs on the same machine as the server and takes CPU from it. ``--model-dirs``
serves each model in turn (GRADER_MODEL_DIR) in the same run, so that their CPU per request can be
compared side by side on one machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
KEY = "bench-camera-key-0123456789"

from service.process import ServerProcess  # noqa: E402

sys.path.insert(0, str(REPO / "bench"))
from httpload import GradePoster  # noqa: E402


def images(n: int) -> list[bytes]:
    data = REPO.parent / "shared" / "data" / "fruitnet-apples" / "single"
    files = sorted((data / "good").glob("*.jpg"))[: n // 2] + sorted((data / "bad").glob("*.jpg"))[: n - n // 2] if data.is_dir() else []
    if files:
        print(f"images: {len(files)} FruitNet photos from {data}")
        return [f.read_bytes() for f in files]
    import cv2

    from datasets.synthetic import make_fruit_image

    print("images: synthetic fruit (../shared/data not present)")
    out = []
    for i in range(n):
        img, _ = make_fruit_image(seed=i, diameter_mm=70, mm_per_px=0.25)
        out.append(cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))[1].tobytes())
    return out


def model_only(jpegs: list[bytes], model_dir: Path | None = None) -> dict[int, float]:
    import cv2

    from grader.crop import crop_for_model
    from grader.segment import segment_fruits
    from service.onnx_model import OnnxDefectModel
    from service.settings import Settings

    m = OnnxDefectModel(model_dir or Settings().model_dir)  # the server's model: GRADER_MODEL_DIR, else the shipped default
    crops = []
    for b in jpegs[:16]:
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        segs = segment_fruits(rgb)
        crops.append(crop_for_model(rgb, segs[0].bbox, 0.08, segs[0].mask) if segs else rgb)
    out = {}
    for bs in (1, 16):
        batch = crops[:bs]
        m.predict(batch)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 3:
            m.predict(batch)
            n += bs
        out[bs] = n / (time.perf_counter() - t0)
    return out


_SENT = itertools.count()


def fresh(jpeg: bytes) -> bytes:
    """The photo with a numbered JPEG comment after its SOI marker: the same pixels, new bytes, so
    every request is a new image to hash, write and fsync, as every photo of a line is."""
    com = f"orchard-grader bench {next(_SENT)}".encode()
    return jpeg[:2] + b"\xff\xfe" + (len(com) + 2).to_bytes(2, "big") + com + jpeg[2:]


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) used so far by a process and its children (Linux /proc);
    None where /proc cannot tell."""
    tick = os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    try:
        while todo:
            p = todo.pop()
            stat = Path(f"/proc/{p}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
    except (OSError, ValueError):
        return None
    return total


def pct(lat: list[float]) -> tuple[float, float, float]:
    a = np.array(lat) * 1000
    return tuple(float(np.percentile(a, p)) for p in (50, 95, 99)) if len(a) else (float("nan"),) * 3


async def closed_loop(url: str, jpegs: list[bytes], clients: int, seconds: float) -> tuple[int, int, int, list[float], float]:
    """N cameras posting back to back: (graded, refused, errors, latencies of the graded, seconds).
    A camera told 503 waits the answer's Retry-After, as a line camera does, and sends the same
    fruit again; "refused" counts those answers, "errors" every other failure."""
    lat: list[float] = []
    refused = errors = 0
    stop = time.perf_counter() + seconds

    async def client(i: int) -> None:
        nonlocal refused, errors
        camera = GradePoster(url, KEY)  # one camera: one keep-alive connection
        k = i
        try:
            while time.perf_counter() < stop:
                t0 = time.perf_counter()
                try:
                    status, retry_after = await camera.post_answer(fresh(jpegs[k % len(jpegs)]))
                except ConnectionError:
                    status, retry_after = 0, None
                if status == 200:
                    lat.append(time.perf_counter() - t0)
                elif status == 503 and retry_after is not None:
                    refused += 1
                    await asyncio.sleep(min(retry_after, max(0.0, stop - time.perf_counter())))
                    continue  # the same fruit again
                else:
                    errors += 1
                k += clients
        finally:
            camera.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(i) for i in range(clients)))
    return len(lat), refused, errors, lat, time.perf_counter() - t0


async def open_loop(url: str, jpegs: list[bytes], rate: float, seconds: float) -> tuple[int, int, list[float], float]:
    lat: list[float] = []
    errors = dropped = 0
    line = GradePoster(url, KEY)  # a pool of keep-alive connections, a new one whenever all are busy

    async def one(k: int) -> None:
        nonlocal errors, dropped
        t0 = time.perf_counter()
        try:
            status = await line.post(fresh(jpegs[k % len(jpegs)]))
        except ConnectionError:
            dropped += 1
            return
        if status == 200:
            lat.append(time.perf_counter() - t0)
        else:
            errors += 1

    tasks, start, k = [], time.perf_counter(), 0
    while (now := time.perf_counter()) - start < seconds:
        due = start + k / rate
        if now < due:
            await asyncio.sleep(due - now)
        tasks.append(asyncio.create_task(one(k)))
        k += 1
    await asyncio.gather(*tasks)
    line.close()
    if dropped:
        print(f"  connections dropped before an answer: {dropped}")
    return len(lat), errors + dropped, lat, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", default="1,4,16")
    ap.add_argument("--rate", default="50,75,100", help="open-loop offered rates, fruit/s (the target line: 100)")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--max-in-flight", type=int, default=None, help="GRADER_MAX_IN_FLIGHT for the server")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="server worker processes (default: one per core)")
    ap.add_argument(
        "--sqlite-synchronous",
        default="FULL",
        help="SQLite sync modes to run one after the other, e.g. NORMAL,FULL: the cost of durable commits in one run",
    )
    ap.add_argument(
        "--model-dirs", default="", help="models to serve one after the other (GRADER_MODEL_DIR), e.g. two versions side by side"
    )
    args = ap.parse_args()

    jpegs = images(args.images)
    print(f"machine: {os.cpu_count()} CPU cores")
    for model_dir in [Path(d.strip()) for d in args.model_dirs.split(",") if d.strip()] or [None]:
        if model_dir is not None:
            print(f"\n=== model {model_dir}")
        mo = model_only(jpegs, model_dir)
        print(f"model only (ONNX Runtime, {os.cpu_count()} threads): batch 1 {mo[1]:.0f} crops/s, batch 16 {mo[16]:.0f} crops/s")
        for sync in args.sqlite_synchronous.split(","):
            serve_and_measure(args, jpegs, mo, sync.strip().upper(), model_dir)


def serve_and_measure(args, jpegs: list[bytes], mo: dict[int, float], sync: str, model_dir: Path | None = None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        env = {"GRADER_API_KEYS": f"camera:{KEY}", "GRADER_SQLITE_SYNCHRONOUS": sync}
        if model_dir is not None:
            env["GRADER_MODEL_DIR"] = str(model_dir.resolve())
        if args.database_url:
            env["GRADER_DATABASE_URL"] = args.database_url
        if args.max_in_flight:
            env["GRADER_MAX_IN_FLIGHT"] = str(args.max_in_flight)
        server = ServerProcess(Path(tmp), env, workers=args.workers).start()
        print(f"\nserver: grader serve --workers {args.workers}, {'PostgreSQL' if args.database_url else f'SQLite synchronous={sync}'}")
        try:
            base = server.url
            url = base + "/v1/grade"
            asyncio.run(closed_loop(url, jpegs, 2, 2))  # warm up
            print(f"\nclosed loop, {args.seconds:g} s each (throughput = fruit graded and stored per second)")
            print("a camera told 503 waits its Retry-After and sends the fruit again; latency is of the graded requests")
            print(
                f"{'clients':>8} {'fruit/s':>8} {'% of model-only b16':>20} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'refused':>8} {'errors':>7}"
            )
            client = {"cpu_s": 0.0, "requests": 0}  # the load generator's own CPU, over every loop below

            def run_loop(loop) -> tuple:
                c0 = time.process_time()
                out = asyncio.run(loop)
                client["cpu_s"] += time.process_time() - c0
                client["requests"] += sum(out[:-2])  # every answer: graded, refused, failed
                return out

            server_cpu0 = tree_cpu_seconds(server.proc.pid)
            for n in [int(x) for x in args.concurrency.split(",")]:
                ok, refused, err, lat, wall = run_loop(closed_loop(url, jpegs, n, args.seconds))
                p50, p95, p99 = pct(lat)
                print(
                    f"{n:>8} {ok / wall:>8.1f} {100 * ok / wall / mo[16]:>19.0f}% {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {refused:>8} {err:>7}"
                )
            print(f"\nopen loop: requests sent at a fixed rate for {args.seconds:g} s, whatever the answers (latency of served requests)")
            print(f"{'offered/s':>10} {'served/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'refused/failed':>15}")
            for rate in [float(x) for x in args.rate.split(",")]:
                ok, err, lat, wall = run_loop(open_loop(url, jpegs, rate, args.seconds))
                p50, p95, p99 = pct(lat)
                print(f"{rate:>10g} {ok / wall:>9.1f} {p50:>8.1f} {p95:>8.1f} {p99:>8.1f} {err:>15}")
            server_cpu1 = tree_cpu_seconds(server.proc.pid)
            if server_cpu0 is not None and server_cpu1 is not None:
                print(
                    f"\nserver: {1000 * (server_cpu1 - server_cpu0) / max(client['requests'], 1):.1f} ms of CPU per request "
                    "(all worker processes, every request of the closed and open loops)"
                )
            print(
                f"load generator (bench/httpload.py, same machine): {1000 * client['cpu_s'] / max(client['requests'], 1):.2f} ms of CPU per request"
            )
        finally:
            rc = server.stop()
            if rc not in (0, -15) or "Traceback" in server.log():
                print("server log:\n" + server.log()[-3000:])


if __name__ == "__main__":
    main()

"""Where a grade request's CPU time goes, stage by stage, in one process (no HTTP).

    .venv/bin/python bench/stages.py [--images 40] [--repeats 3] [--no-freeze] [--upscale K] \
        [--model-dir models/apple-defect/0.3.0 --model-dir models/apple-defect/0.4.0]

Runs the service's own request path (service/grading.py: lookup, decode, measure, crop and
preprocess, ONNX Runtime, rules, store) on the same photos as bench/serve.py, with the settings a
worker of `grader serve --workers 2` on 2 cores has (OpenCV and ONNX Runtime single-threaded), and
prints the CPU milliseconds per photo of each stage. Each photo is stored as new bytes, as on a line.
It also reports the garbage collector's full collections during the run, the first (warm-up) pass
included: the server collects and freezes what it built at start before it serves
(service/app.py: app_from_env), as this script does unless --no-freeze, which shows what the first
full collection after start costs a request without it. ``--upscale 18`` grades the same photos
enlarged 18 times (bicubic, 3456 x 4608 px: a 16-MP phone photo) at an 18th of the scale.
``--model-dir`` (repeatable) runs the same photos with each model in turn, in one process, so two
models' CPU per request and per crop are compared side by side (default: the shipped default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))


CPU: dict[str, float] = {}  # CPU seconds by stage of the current run
WRAPPED: list[bool] = []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-freeze", action="store_true", help="serve right after start-up, as the server did before freezing")
    ap.add_argument("--upscale", type=int, default=1, help="grade the photos enlarged this many times (18: a 16-MP phone photo)")
    ap.add_argument("--model-dir", action="append", type=Path, help="a model artifact (repeat to compare models side by side)")
    args = ap.parse_args()
    for model_dir in args.model_dir or [None]:
        run(args, model_dir)


def run(args, model_dir: Path | None) -> None:

    import serve  # the benchmark's photos and fresh-bytes helper

    from grader import pipeline
    from grader.defect import preprocess
    from service import batcher, grading, scale
    from service.app import build_context
    from service.imaging import decode_image
    from service.settings import Settings

    cpu = CPU
    cpu.clear()

    def timed(name: str, fn):
        def wrapper(*a, **k):
            t0 = time.thread_time()  # the CPU time of the thread that runs the stage
            try:
                return fn(*a, **k)
            finally:
                cpu[name] = cpu.get(name, 0.0) + time.thread_time() - t0

        return wrapper

    # time the stages inside the path by wrapping the functions it calls (once per process)
    if not WRAPPED:
        scale.measure_image = timed("measure (segment, size, colour, blemish)", scale.measure_image)
        pipeline.image_quality_flags = timed("image quality (blur, exposure)", pipeline.image_quality_flags)
        pipeline.crop_for_model = timed("crop for the model", pipeline.crop_for_model)
        batcher.preprocess = timed("preprocess (resize, normalise)", preprocess)
        pipeline.decide = timed("rules and flags", pipeline.decide)
        WRAPPED.append(True)

    jpegs = serve.images(args.images)
    if args.upscale > 1:
        jpegs = [enlarged(j, args.upscale) for j in jpegs]
    extra = {} if model_dir is None else {"model_dir": model_dir}
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="grader-stages-")),
        api_keys="camera:stages-key-0000000000",
        onnx_threads=1,
        opencv_threads=1,
        **extra,
    )
    ctx = build_context(settings)
    import gc

    if not args.no_freeze:
        gc.collect()
        gc.freeze()  # as the server does once its app is built
    pauses: list[float] = []
    started: list[float] = []

    def on_gc(phase: str, info: dict) -> None:
        if info["generation"] == 2:
            if phase == "start":
                started.append(time.perf_counter())
            else:
                pauses.append(time.perf_counter() - started.pop())

    gc.callbacks.append(on_gc)
    run_onnx = ctx.model.onnx.run
    ctx.model.onnx.run = timed("ONNX Runtime (batch 1)", run_onnx)
    n = 0
    total = 0.0
    for rep in range(args.repeats + 1):
        if rep == 1:  # the first pass warms caches and is not counted
            cpu.clear()
            n, total = 0, 0.0
        for data in jpegs:
            data = serve.fresh(data)
            t0 = time.process_time()
            req = grading.parse(None, "bench-cam", None, None, None, str(0.2 / args.upscale), None, None, None)
            timed("lookup (database)", grading.lookup)(ctx, req)
            rgb, media_type = timed("decode JPEG", decode_image)(data, settings.max_image_pixels)
            h, w = rgb.shape[:2]
            scaled, graded = grading.grade_rgb(ctx, req, rgb)
            timed("store (image file + fsync, rows, commit)", grading.store)(ctx, req, data, media_type, rgb, scaled, graded, None)
            total += time.process_time() - t0
            n += 1
    size = "" if args.upscale == 1 else f" enlarged {args.upscale}x ({w} x {h} px)"
    print(f"model {ctx.model.spec.name} {ctx.model.spec.version}:")
    print(f"{n} photos{size}, CPU ms per photo by stage (one process, OpenCV and ONNX Runtime on 1 thread):")
    for name, s in sorted(cpu.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<42} {1000 * s / n:6.2f}")
    print(f"  {'whole request path (no HTTP)':<42} {1000 * total / n:6.2f}")
    frozen = "none frozen" if args.no_freeze else f"{gc.get_freeze_count()} objects of the start-up frozen"
    longest = f", the longest {1000 * max(pauses):.1f} ms" if pauses else ""
    print(f"full garbage collections during the {n + len(jpegs)} requests ({frozen}): {len(pauses)}{longest}")
    ctx.batcher.close()


def enlarged(jpeg: bytes, k: int) -> bytes:
    """The photo enlarged ``k`` times (bicubic), as a JPEG of quality 90."""
    import cv2
    import numpy as np

    bgr = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    ok, out = cv2.imencode(".jpg", cv2.resize(bgr, None, fx=k, fy=k, interpolation=cv2.INTER_CUBIC), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return out.tobytes()


if __name__ == "__main__":
    main()

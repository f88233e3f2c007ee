"""The `grader` command: serve the API, train and evaluate models.

    grader serve [--host 127.0.0.1] [--port 8000] [--workers 1]
    grader train [--config FILE] [--set key=value ...] [--from-dataset DIR] --out DIR [--work-dir DIR] [--resume]
    grader compare CURRENT CANDIDATE --data DIR [--split test] [--out DIR] [--gate key=value ...]
    grader dataset build --out DIR [--since T] [--lot L] [--base ../shared/data/fruitnet-apples]
    grader dataset suggest [--limit 20] [--route]
    grader keys reset
    grader synth --video --out belt.avi [--seconds 30] [--lanes 3] [--mm-per-px 0.6]
    grader synth --out fruit.jpg [--diameter-mm 72] [--mm-per-px 0.3] [--blemish-cm2 0.8]
    grader sorter-sim [--mqtt-url mqtt://127.0.0.1:1883] [--delay-s 1] [--mis-ejection-rate 0.05] [--miss-rate 0]
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.settings import Settings

    settings = Settings()
    from service.app import announce

    announce(settings, args.host, args.port)
    if args.workers > 1 and "GRADER_ONNX_THREADS" not in os.environ:
        # each worker process runs its own ONNX Runtime session: share the cores out, not multiply them
        os.environ["GRADER_ONNX_THREADS"] = str(max(1, (os.cpu_count() or 1) // args.workers))
    if args.workers > 1:
        from service.workers import serve_workers

        return serve_workers(args.workers, args.host, args.port, args.log_level)
    uvicorn.run("service.app:app_from_env", host=args.host, port=args.port, log_level=args.log_level, **server_options(settings))
    return 0


def server_options(settings) -> dict:
    """uvicorn's options from the settings: the HTTP protocol with its head deadline, websockets
    (the live camera stream), connection limits and timeouts."""
    from service.http_protocol import NoDelayHttpProtocol

    NoDelayHttpProtocol.head_timeout_s = settings.body_read_timeout_s
    return {
        "factory": True,
        "http": NoDelayHttpProtocol,
        # the websockets package, through uvicorn's sans-I/O protocol for it (its older `websockets`
        # protocol is deprecated and will point at this one)
        "ws": "websockets-sansio",
        # a live frame is an image: the same byte limit
        "ws_max_size": settings.max_image_bytes + 1024,
        "limit_concurrency": settings.max_connections,
        "timeout_keep_alive": settings.timeout_keep_alive_s,
        "timeout_graceful_shutdown": 10,
    }


def _train(args: argparse.Namespace) -> int:
    try:
        from training import train
        from training.config import load_config
    except ImportError as exc:  # torch is an extra
        print(f"training needs the [train] extra (pip install -e '.[train]'): {exc}", file=sys.stderr)
        return 2
    cfg = load_config(Path(args.config), args.set)
    if args.from_dataset:  # a dataset built from the line (grader dataset build): its manifest gives items and splits
        cfg["data"] = {"kind": "manifest", "manifest": str(Path(args.from_dataset) / "manifest.json"),
                       "cache_size": cfg["data"].get("cache_size", 160)}
    out = Path(args.out) if args.out else Path("models") / cfg["name"] / str(cfg["version"])
    work = Path(args.work_dir) if args.work_dir else Path("var") / "train" / f"{cfg['name']}-{cfg['version']}"
    try:
        train.run(cfg, out, work, resume=args.resume, report_split="val" if args.hide_test else "test")
    except (FileNotFoundError, ValueError) as exc:  # data missing, or not in this model's classes
        print(f"grader train: {exc}", file=sys.stderr)
        return 2
    except train.TrainingFailed as exc:  # trained, but nothing worth exporting
        print(f"grader train: {exc}", file=sys.stderr)
        return 1
    finally:
        train.distributed.teardown()  # under torchrun: the process group, if a failure left it up
    return 0


def _training_command(name: str) -> Callable[[argparse.Namespace], int]:
    """A subcommand whose code lives in ``training.<name>`` (its ``run_args``): matplotlib and tqdm
    come with the [train] extra, so a serving-only install says what to add instead of failing."""

    def run(args: argparse.Namespace) -> int:
        try:
            module = importlib.import_module(f"training.{name}")
        except ImportError as exc:
            print(f"{name} needs the [train] extra (pip install -e '.[train]'): {exc}", file=sys.stderr)
            return 2
        return int(module.run_args(args))

    return run


def _repo():
    from service.settings import Settings
    from service.storage import Repository, init_db, make_engine

    settings = Settings()
    engine = make_engine(settings.resolved_database_url)
    init_db(engine)
    return settings, Repository(engine)


def _when(raw: str | None):
    import datetime as dt

    if raw is None:
        return None
    t = dt.datetime.fromisoformat(raw)
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def _commodity_classes(settings, commodity: str) -> list[str]:
    """The classes of the model that judges a commodity: its profile's artifact, else the default model's."""
    import json

    from grader.commodities import get_commodity, load_commodities

    profile = get_commodity(load_commodities(*([settings.commodities_dir] if settings.commodities_dir else [])), commodity)
    model_dir = settings.models_root / profile.model if profile.model else settings.model_dir
    if (model_dir / "DEFAULT").is_file():
        model_dir = model_dir / (model_dir / "DEFAULT").read_text().strip()
    return list(json.loads((model_dir / "metadata.json").read_text())["classes"])


def _dataset(args: argparse.Namespace) -> int:
    import json

    from datasets import line

    settings, repo = _repo()
    if args.action == "build":
        if not args.out:
            print("grader dataset build: --out DIR is required", file=sys.stderr)
            return 2
        splits = None
        if args.base:
            import yaml

            splits = yaml.safe_load(Path(args.base_config).read_text())["data"]["splits"]

        def progress(i: int, n: int) -> None:
            if i % 25 == 0:
                print(f"  exporting reviewed fruit {i}/{n}", flush=True)

        m = line.build(repo, Path(args.out), since=_when(args.since), lot=args.lot, base=Path(args.base) if args.base else None,
                       base_splits=splits, progress=progress, commodity=args.commodity,
                       classes=_commodity_classes(settings, args.commodity) if args.commodity else line.CLASSES)
        print(f"dataset {args.out}: manifest sha256 {m['sha256'][:16]}…, {len(m['items'])} items, "
              f"{m['disagreements']} where inspector and model disagree")
        for split, counts in sorted(m["counts"].items()):
            print(f"  {split:<5} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for why, n in m["skipped"].items():
            print(f"  left out: {n} ({why})")
        return 0
    from grader.defect import ModelSpec
    from service.registry import serving_metadata

    spec = ModelSpec.from_metadata(serving_metadata(repo, settings.model_dir))
    picks = line.suggest(repo, spec, limit=args.limit, lot=args.lot, since=_when(args.since))
    print(json.dumps(picks, indent=1) if args.json else
          "\n".join(f"fruit {p['fruit']:>6}  result {p['result_id']}  p(defective) {p['defect_score']:.2f}  "
                    f"uncertainty {p['uncertainty']:.2f}  {p['diameter_mm'] or '–'} mm  lot {p['lot_id'] or '–'}" for p in picks)
          or "no unreviewed, unflagged fruit with a defect score")
    if args.route and picks:
        print(f"routed {line.route_to_review(repo, picks)} fruit to the review queue (flag: suggested)")
    return 0


def _keys(args: argparse.Namespace) -> int:
    from service.auth import new_keys
    from service.settings import Settings

    path = Settings().data_dir / "api_keys.json"
    keys = new_keys(path)
    print(f"new API keys (the old ones no longer work once the service restarts); hashes in {path}:")
    for role, key in keys.items():
        print(f"  {role:<9} {key}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    import cv2

    if args.video:
        from datasets.video import make_conveyor_clip

        clip = make_conveyor_clip(args.out, lanes=args.lanes, seconds=args.seconds, mm_per_px=args.mm_per_px, seed=args.seed)
        print(f"{args.out}: {clip.n_frames} frames at {clip.fps:g} fps, {clip.lanes} lanes, belt {clip.speed_mm_s:g} mm/s, "
              f"{clip.mm_per_px:g} mm/px, {len(clip.fruits)} fruit:")
        for f in clip.fruits:
            print(f"  lane {f.lane}  enters {f.enter_s:5.2f} s  {f.diameter_mm:5.1f} mm  blemish {f.blemish_area_cm2:.2f} cm²  {f.colour}")
        return 0

    from datasets.synthetic import make_fruit_image

    img, truth = make_fruit_image(seed=args.seed, diameter_mm=args.diameter_mm, mm_per_px=args.mm_per_px,
                                  colour=args.colour, blemishes_cm2=tuple(args.blemish_cm2))
    cv2.imwrite(args.out, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    f = truth.fruits[0]
    print(f"{args.out}: one {args.colour} fruit, diameter {f.diameter_mm:g} mm at {args.mm_per_px:g} mm/px, "
          f"blemishes {f.blemish_area_cm2:.2f} cm² in total")
    return 0


def _sorter_sim(args: argparse.Namespace) -> int:
    from service.sorter_sim import run

    try:
        tally = run(args.mqtt_url, prefix=args.prefix, line=args.line, delay_s=args.delay_s, mis_ejection_rate=args.mis_ejection_rate,
                    miss_rate=args.miss_rate, seed=args.seed, count=args.count, out=None if args.quiet else lambda m: print(m, flush=True),
                    client_id=args.client_id or None)
    except KeyboardInterrupt:
        return 0
    except (OSError, ValueError) as exc:  # broker unreachable, bad URL
        print(f"grader sorter-sim: {exc}", file=sys.stderr)
        return 2
    print("sorter-sim: " + ", ".join(f"{k} {v}" for k, v in tally.items()))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grader", description="orchard-grader: fruit quality grading service")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="server processes, each with its own socket on the port (SQLite or PostgreSQL; replicas on several hosts need PostgreSQL)")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_serve)

    t = sub.add_parser("train", help="train, evaluate and export a defect model")
    # the shipped apple model's recipe: the pretrained backbone, a linear probe (retraining on the
    # inspectors' verdicts refits the head on the same ImageNet features)
    t.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "training" / "configs" / "apple_defect_lite0.yaml"))
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=5")
    t.add_argument("--out", help="artifact directory (default models/<name>/<version>)")
    t.add_argument("--work-dir", help="checkpoints and crop cache (default var/train/<name>-<version>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work-dir")
    t.add_argument("--from-dataset", metavar="DIR", help="train on a dataset built by `grader dataset build` instead of the config's data")
    t.add_argument("--hide-test", action="store_true",
                   help="print the validation figures at the end instead of the test split's, for choosing between candidates "
                        "before looking at test (metadata.json records both)")
    t.set_defaults(func=_train)

    c = sub.add_parser(
        "compare", help="compare a candidate defect model with the serving one on the same data",
        description="Score CANDIDATE and CURRENT on the same dataset split, hold the candidate to the gates "
                    "(training/configs/compare_gates.yaml) and write report.json, report.md and figures. "
                    "Exit status: 0 when the verdict is promote, 1 when it is keep current (a gate failed), "
                    "2 for bad input.",
    )
    c.add_argument("current", help="the serving model: an artifact dir (model.onnx + metadata.json) or a dir with a DEFAULT pointer")
    c.add_argument("candidate", help="the candidate model, likewise")
    c.add_argument("--data", required=True, metavar="DIR", help="dataset dir with a manifest.json")
    c.add_argument("--split", default="test", help="manifest split to compare on (default test)")
    c.add_argument("--out", metavar="DIR", help="report dir (default var/compare/<current-version>-vs-<candidate-version>)")
    c.add_argument("--gate", action="append", default=[], metavar="KEY=VALUE",
                   help="override a gate, e.g. min_defective_recall=0.97, or switch one off: max_ece=null (repeatable)")
    c.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per model (default: all cores, as serving)")
    c.add_argument("--latency-repeats", type=int, default=15, metavar="N", help="timed runs per model and batch size (median)")
    c.add_argument("--gates-file", help="gate defaults (default training/configs/compare_gates.yaml)")
    c.set_defaults(func=_training_command("compare"))

    e = sub.add_parser(
        "evaluate", help="one model's figures on the held-out split its own manifest names",
        description="Score ARTIFACT on the split its manifest.json names (every photo checked against its sha256), "
                    "overall and per capture session or source, and write report.json, report.md and figures "
                    "(ROC, reliability, confusion, defect types). Exit status 0, or 2 for bad input.",
    )
    e.add_argument("artifact", help="an artifact dir written by `grader train` (model.onnx, metadata.json, manifest.json)")
    e.add_argument("--data", metavar="DIR", help="where the manifest's photos are (default: the artifact config's data.root, "
                                                 "e.g. ../shared/data)")
    e.add_argument("--split", default="test", help="manifest split (default test)")
    e.add_argument("--out", metavar="DIR", help="report dir (default var/evaluate/<name>-<version>-<split>)")
    e.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores, as serving)")
    e.add_argument("--latency-repeats", type=int, default=15, metavar="N", help="timed runs per batch size (median)")
    e.set_defaults(func=_training_command("evaluate"))

    d = sub.add_parser("dataset", help="datasets from the line: export reviewed fruit, suggest fruit to review")
    d.add_argument("action", choices=["build", "suggest"],
                   help="build: reviewed fruit (+ a base dataset) to an ImageFolder tree with a manifest; "
                        "suggest: unreviewed fruit most worth an inspector's look (uncertainty x diversity)")
    d.add_argument("--out", help="build: the dataset directory to write")
    d.add_argument("--since", help="only fruit reviewed (build) or graded (suggest) at or after this ISO 8601 time")
    d.add_argument("--lot", help="only this lot")
    d.add_argument("--commodity", help="build: only this commodity's fruit, labelled in the classes of its model "
                                       "(an orange dataset keeps the inspectors' defect types)")
    d.add_argument("--base", help="build: merge a base dataset, e.g. ../shared/data/fruitnet-apples (referenced, not copied)")
    d.add_argument("--base-config", default=str(Path(__file__).resolve().parents[1] / "training" / "configs" / "apple_defect.yaml"),
                   help="build: the training config whose data.splits give the base dataset's session splits")
    d.add_argument("--limit", type=int, default=20, help="suggest: how many fruit")
    d.add_argument("--route", action="store_true", help="suggest: also put them in the review queue")
    d.add_argument("--json", action="store_true", help="suggest: print JSON")
    d.set_defaults(func=_dataset)

    k = sub.add_parser("keys", help="API keys kept in the data dir")
    k.add_argument("action", choices=["reset"], help="reset: generate new keys for every role and print them once")
    k.set_defaults(func=_keys)

    y = sub.add_parser("synth", help="write a synthetic fruit image with known size and blemish area")
    y.add_argument("--out", default="fruit.jpg")
    y.add_argument("--diameter-mm", type=float, default=72.0)
    y.add_argument("--mm-per-px", type=float, default=0.3)
    y.add_argument("--colour", default="red", choices=["red", "green", "yellow", "orange", "lemon"])
    y.add_argument("--blemish-cm2", type=float, action="append", default=[], help="add a blemish of this area (repeatable)")
    y.add_argument("--seed", type=int, default=0)
    y.add_argument("--video", action="store_true", help="write a conveyor clip (AVI, MJPEG) of fruit riding a belt instead")
    y.add_argument("--seconds", type=float, default=30.0, help="--video: clip length")
    y.add_argument("--lanes", type=int, default=3, help="--video: belt lanes")
    y.set_defaults(func=_synth)

    m = sub.add_parser("sorter-sim", help="a stand-in sorter: ejects each published fruit after a delay and reports it back over MQTT")
    m.add_argument("--mqtt-url", default=os.environ.get("GRADER_MQTT_URL") or "mqtt://127.0.0.1:1883",
                   help="the broker (default GRADER_MQTT_URL, else mqtt://127.0.0.1:1883)")
    m.add_argument("--prefix", default=os.environ.get("GRADER_MQTT_TOPIC_PREFIX", "orchard-grader"), help="topic prefix")
    m.add_argument("--line", default="+", help="the line to sort (default every line)")
    m.add_argument("--delay-s", type=float, default=1.0, help="from decision to ejection (the belt's travel)")
    m.add_argument("--mis-ejection-rate", type=float, default=0.0, help="share of fruit ejected at another outlet (0-1)")
    m.add_argument("--miss-rate", type=float, default=0.0, help="share of fruit never ejected (0-1)")
    m.add_argument("--count", type=int, help="stop after this many fruit (default: run until Ctrl-C)")
    m.add_argument("--seed", type=int)
    m.add_argument("--client-id", default="",
                   help="a persistent session under this MQTT client id: decisions sent while the simulator is away wait "
                        "for it at the broker (default: a clean session)")
    m.add_argument("--quiet", action="store_true", help="print only the tallies at the end")
    m.set_defaults(func=_sorter_sim)

    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

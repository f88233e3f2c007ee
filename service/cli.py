"""The `grader` command: serve the API, train and evaluate models.

    grader serve [--host 127.0.0.1] [--port 8000] [--workers 1]
    grader train [--config FILE] [--set key=value ...] --out DIR [--work-dir DIR] [--resume]
    grader keys reset
    grader synth --out fruit.jpg [--diameter-mm 72] [--mm-per-px 0.3] [--blemish-cm2 0.8]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.settings import Settings

    settings = Settings()
    from service.app import announce

    announce(settings, args.host, args.port)
    uvicorn.run(
        "service.app:app_from_env",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        timeout_graceful_shutdown=10,
    )
    return 0


def _train(args: argparse.Namespace) -> int:
    try:
        from training import train
    except ImportError as exc:  # torch is an extra
        print(f"training needs the [train] extra (pip install -e '.[train]'): {exc}", file=sys.stderr)
        return 2
    cfg = train.load_config(Path(args.config), args.set)
    out = Path(args.out) if args.out else Path("models") / cfg["name"] / str(cfg["version"])
    work = Path(args.work_dir) if args.work_dir else Path("var") / "train" / f"{cfg['name']}-{cfg['version']}"
    try:
        train.run(cfg, out, work, resume=args.resume)
    except FileNotFoundError as exc:
        print(f"grader train: {exc}", file=sys.stderr)
        return 2
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

    from datasets.synthetic import make_fruit_image

    img, truth = make_fruit_image(seed=args.seed, diameter_mm=args.diameter_mm, mm_per_px=args.mm_per_px,
                                  colour=args.colour, blemishes_cm2=tuple(args.blemish_cm2))
    cv2.imwrite(args.out, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    f = truth.fruits[0]
    print(f"{args.out}: one {args.colour} fruit, diameter {f.diameter_mm:g} mm at {args.mm_per_px:g} mm/px, "
          f"blemishes {f.blemish_area_cm2:.2f} cm² in total")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="grader", description="orchard-grader: fruit quality grading service")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the HTTP service")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (use PostgreSQL for more than one)")
    s.add_argument("--log-level", default="info")
    s.set_defaults(func=_serve)

    t = sub.add_parser("train", help="train, evaluate and export a defect model")
    t.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "training" / "configs" / "apple_defect.yaml"))
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=5")
    t.add_argument("--out", help="artifact directory (default models/<name>/<version>)")
    t.add_argument("--work-dir", help="checkpoints and crop cache (default var/train/<name>-<version>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work-dir")
    t.set_defaults(func=_train)

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
    y.set_defaults(func=_synth)

    args = p.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())

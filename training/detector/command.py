"""A fruit detector for orchard photos (apples and the tennis-ball size references hung in the canopy):
a centre-heatmap head (CenterNet, Zhou et al. 2019) on the pretrained EfficientNet-Lite0's stride-8
and stride-16 features.

    python -m training.detector --config training/configs/orchard_detector.yaml --out models/orchard-detector/0.1.0 \
        [--set train.epochs=10 ...]
    python -m training.detector --audit MODEL_DIR | --apply-audit MODEL_DIR | --card MODEL_DIR | --sweep-scales MODEL_DIR
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import yaml

from training.detector.audit import apply_audit, audit_sheet
from training.detector.config import DEFAULT_CONFIG, load_config
from training.detector.evaluation import scale_sweep
from training.detector.export import json_safe
from training.detector.recipe import run


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m training.detector", description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--out", type=Path, help="artifact directory to train into (model.onnx, metadata.json, config.yaml, README.md)")
    ap.add_argument(
        "--audit",
        type=Path,
        metavar="MODEL_DIR",
        help="write audit_sheet.png + audit.json of an artifact's unmatched held-out apple detections",
    )
    ap.add_argument("--audit-sample", type=int, default=120)
    ap.add_argument("--apply-audit", type=Path, metavar="MODEL_DIR", help="fold the judged audit.json into metadata.json")
    ap.add_argument(
        "--sweep-scales",
        type=Path,
        metavar="MODEL_DIR",
        help="AP50 and ms per frame at other input scales (--scales); kept in metadata.json",
    )
    ap.add_argument("--scales", type=float, nargs="+", default=[0.375, 0.5, 0.625, 0.75, 1.0])
    ap.add_argument("--card", type=Path, metavar="MODEL_DIR", help="write README.md from metadata.json (and --notes)")
    ap.add_argument("--notes", type=Path, help="markdown added to the model card as it is")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.audit:
        cfg = yaml.safe_load((args.audit / "config.yaml").read_text())
        rec = audit_sheet(args.audit, cfg, args.audit_sample)
        log(
            f"audit: {rec['detections']} apple detections, {rec['matched_boxes']} match a box, {rec['on_tennis_balls']} on tennis balls, "
            f"{rec['unmatched']} unmatched; {len(rec['sampled'])} sampled on {args.audit / 'audit_sheet.png'}"
        )
        return 0
    if args.sweep_scales:
        res = scale_sweep(args.sweep_scales, args.scales)
        for sc, r in res.items():
            log(
                f"scale {sc}: "
                + "; ".join(
                    f"{sp} "
                    + ", ".join(f"{c} AP50 {v['ap50']:.3f}" for c, v in r[sp].items() if c != "median_ms")
                    + f" ({r[sp]['median_ms']:.0f} ms)"
                    for sp in r
                )
            )
        meta_path = args.sweep_scales / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["metrics"]["scale_sweep"] = res
        meta_path.write_text(json.dumps(json_safe(meta), indent=2))
        return 0
    if args.apply_audit:
        out = apply_audit(args.apply_audit)
        log(
            f"audited precision {out['precision_audited']:.3f} (95 % {out['precision_audited_ci95'][0]:.3f}-{out['precision_audited_ci95'][1]:.3f})"
        )
    if args.card:
        from training.detector.card import write_card

        write_card(args.card, args.notes)
        return 0
    if args.apply_audit:
        return 0
    if args.out is None:
        ap.error("--out is needed to train")
    run(cfg, args.out, log)
    write_card_safe(args.out, log)
    return 0


def write_card_safe(out_dir: Path, log: Callable[[str], None]) -> None:
    from training.detector.card import write_card

    write_card(out_dir, None)
    log(f"model card: {out_dir / 'README.md'}")

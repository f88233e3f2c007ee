"""The training subcommands, `grader train`, `grader compare` and `grader evaluate`: their arguments
and what runs them. The `grader` command (cli/) adds them to its parser; ``python -m training.train``
(also under torchrun) and ``python -m training.compare`` parse the same arguments here, so training
needs nothing above it to be run on its own.

Importing this module imports no torch, matplotlib or tqdm: they come with the [train] extra, so a
serving-only install says what to add when a subcommand runs instead of failing at start-up.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable
from pathlib import Path

CONFIGS = Path(__file__).resolve().parent / "configs"


def _train(args: argparse.Namespace) -> int:
    try:
        from training import train
        from training.config import load_config
    except ImportError as exc:  # torch is an extra
        print(f"training needs the [train] extra (pip install -e '.[train]'): {exc}", file=sys.stderr)
        return 2
    cfg = load_config(Path(args.config), args.set)
    if args.from_dataset:  # a dataset built from the line (grader dataset build): its manifest gives items and splits
        cfg["data"] = {
            "kind": "manifest",
            "manifest": str(Path(args.from_dataset) / "manifest.json"),
            "cache_size": cfg["data"].get("cache_size", 160),
        }
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


def add_train(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("train", help="train, evaluate and export a defect model")
    # the shipped apple model's recipe: the pretrained backbone, a linear probe (retraining on the
    # inspectors' verdicts refits the head on the same ImageNet features)
    t.add_argument("--config", default=str(CONFIGS / "apple_defect_lite0.yaml"))
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. train.epochs=5")
    t.add_argument("--out", help="artifact directory (default models/<name>/<version>)")
    t.add_argument("--work-dir", help="checkpoints and crop cache (default var/train/<name>-<version>)")
    t.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --work-dir")
    t.add_argument("--from-dataset", metavar="DIR", help="train on a dataset built by `grader dataset build` instead of the config's data")
    t.add_argument(
        "--hide-test",
        action="store_true",
        help="print the validation figures at the end instead of the test split's, for choosing between candidates "
        "before looking at test (metadata.json records both)",
    )
    t.set_defaults(func=_train)


def add_compare(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser(
        "compare",
        help="compare a candidate defect model with the serving one on the same data",
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
    c.add_argument(
        "--gate",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a gate, e.g. min_defective_recall=0.97, or switch one off: max_ece=null (repeatable)",
    )
    c.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads per model (default: all cores, as serving)")
    c.add_argument("--latency-repeats", type=int, default=15, metavar="N", help="timed runs per model and batch size (median)")
    c.add_argument("--gates-file", help="gate defaults (default training/configs/compare_gates.yaml)")
    c.set_defaults(func=_training_command("compare"))


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "evaluate",
        help="one model's figures on the held-out split its own manifest names",
        description="Score ARTIFACT on the split its manifest.json names (every photo checked against its sha256), "
        "overall and per capture session or source, and write report.json, report.md and figures "
        "(ROC, reliability, confusion, defect types). Exit status 0, or 2 for bad input.",
    )
    e.add_argument("artifact", help="an artifact dir written by `grader train` (model.onnx, metadata.json, manifest.json)")
    e.add_argument(
        "--data", metavar="DIR", help="where the manifest's photos are (default: the artifact config's data.root, e.g. ../shared/data)"
    )
    e.add_argument("--split", default="test", help="manifest split (default test)")
    e.add_argument("--out", metavar="DIR", help="report dir (default var/evaluate/<name>-<version>-<split>)")
    e.add_argument("--threads", type=int, default=0, help="ONNX Runtime threads (default: all cores, as serving)")
    e.add_argument("--latency-repeats", type=int, default=15, metavar="N", help="timed runs per batch size (median)")
    e.set_defaults(func=_training_command("evaluate"))


def main(command: str, argv: list[str] | None = None) -> int:
    """``python -m training.<command> ARGS``: the same as ``grader <command> ARGS``."""
    p = argparse.ArgumentParser(prog="grader", description="orchard-grader: the training subcommands")
    sub = p.add_subparsers(dest="cmd", required=True)
    for add in (add_train, add_compare, add_evaluate):
        add(sub)
    args = p.parse_args([command, *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))

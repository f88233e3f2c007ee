"""`grader dataset`: datasets from the line (reviewed fruit to an ImageFolder tree with a manifest)
and the unreviewed fruit most worth an inspector's look."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from training.commands import CONFIGS


def _repo():
    from service.settings import Settings
    from store.engine import init_db, make_engine
    from store.repository import Repository

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

        m = line.build(
            repo,
            Path(args.out),
            since=_when(args.since),
            lot=args.lot,
            base=Path(args.base) if args.base else None,
            base_splits=splits,
            progress=progress,
            commodity=args.commodity,
            classes=_commodity_classes(settings, args.commodity) if args.commodity else line.CLASSES,
        )
        print(
            f"dataset {args.out}: manifest sha256 {m['sha256'][:16]}…, {len(m['items'])} items, "
            f"{m['disagreements']} where inspector and model disagree"
        )
        for split, counts in sorted(m["counts"].items()):
            print(f"  {split:<5} " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
        for why, n in m["skipped"].items():
            print(f"  left out: {n} ({why})")
        return 0
    from inference.metadata import read_spec
    from service.registry import serving_metadata

    spec = read_spec(serving_metadata(repo, settings.model_dir))
    picks = line.suggest(repo, spec, limit=args.limit, lot=args.lot, since=_when(args.since))
    print(
        json.dumps(picks, indent=1)
        if args.json
        else "\n".join(
            f"fruit {p['fruit']:>6}  result {p['result_id']}  p(defective) {p['defect_score']:.2f}  "
            f"uncertainty {p['uncertainty']:.2f}  {p['diameter_mm'] or '–'} mm  lot {p['lot_id'] or '–'}"
            for p in picks
        )
        or "no unreviewed, unflagged fruit with a defect score"
    )
    if args.route and picks:
        print(f"routed {line.route_to_review(repo, picks)} fruit to the review queue (flag: suggested)")
    return 0


def add_dataset(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("dataset", help="datasets from the line: export reviewed fruit, suggest fruit to review")
    d.add_argument(
        "action",
        choices=["build", "suggest"],
        help="build: reviewed fruit (+ a base dataset) to an ImageFolder tree with a manifest; "
        "suggest: unreviewed fruit most worth an inspector's look (uncertainty x diversity)",
    )
    d.add_argument("--out", help="build: the dataset directory to write")
    d.add_argument("--since", help="only fruit reviewed (build) or graded (suggest) at or after this ISO 8601 time")
    d.add_argument("--lot", help="only this lot")
    d.add_argument(
        "--commodity",
        help="build: only this commodity's fruit, labelled in the classes of its model "
        "(an orange dataset keeps the inspectors' defect types)",
    )
    d.add_argument("--base", help="build: merge a base dataset, e.g. ../shared/data/fruitnet-apples (referenced, not copied)")
    d.add_argument(
        "--base-config",
        default=str(CONFIGS / "apple_defect.yaml"),
        help="build: the training config whose data.splits give the base dataset's session splits",
    )
    d.add_argument("--limit", type=int, default=20, help="suggest: how many fruit")
    d.add_argument("--route", action="store_true", help="suggest: also put them in the review queue")
    d.add_argument("--json", action="store_true", help="suggest: print JSON")
    d.set_defaults(func=_dataset)

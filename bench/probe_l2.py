"""How wide the L2 grid of the apple defect probe should be: the config's grid (10 to 3000) had every
pooling variant of bench/probe_pooling.py choose its largest value, so the grid is widened upwards
and the choice made again with the config's own protocol, on the global average of the final map
(the served pooling) at 128 px.

training/probe.py ``run_cross_session`` runs on the train and val sessions with the grid of
``--l2`` (each pair of a sound-only and a defective-only session, and each session of both classes,
held out in turn): it chooses the L2 with the largest mean per-fold AUC and refits the head on all
five sessions. Then the temperature and the threshold come from the held-out logits
(training/calibrate.py ``calibrate``, as training/artifact.py does). For the table every L2 of the
grid is also run alone, giving its held-out logits: the fold AUC (the score L2 is chosen on), the
pooled AUC and balanced accuracy of all held-out logits at the threshold chosen on them (an
artifact's ``metrics.val``), and the mean and worst per-fold balanced accuracy. The test sessions
are scored once, for the chosen L2 only.

    PYTHONPATH=. .venv/bin/python bench/probe_l2.py     # about 2 min on 2 cores (1 of it the features, then cached); needs ../shared/data
    PYTHONPATH=. .venv/bin/python bench/probe_l2.py --l2 10,30,100,300,1000,3000
    PYTHONPATH=. .venv/bin/python bench/probe_l2.py --colour-normalised     # the 0.6.0 recipe's crops

The crops and the feature arrays are cached in var/bench/pooling/ (shared with bench/probe_pooling.py).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.probe_colour import final_avg
from bench.probe_pooling import (
    VARIANTS,
    WORK,
    cross_session,
    features,
    fold_figures,
    print_test_table,
    recipe_as_measured,
    stack,
    test_figures,
)
from training.data import load_data, resolve_colour_normalise

WIDE = (100.0, 300.0, 1000.0, 3000.0, 10000.0, 30000.0, 100000.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--l2", default=",".join(f"{v:g}" for v in WIDE), help="the L2 grid, comma-separated (default %(default)s)")
    ap.add_argument(
        "--colour-normalised",
        action="store_true",
        help="on the colour-normalised crops of the shipped 0.6.0 recipe (bench/probe_colour.py) instead of the plain ones",
    )
    args = ap.parse_args()
    grid = [float(v) for v in args.l2.split(",")]

    torch.set_num_threads(1)
    cfg = recipe_as_measured()
    cfg["train"]["probe_l2"] = grid
    crops, labels, sessions, _manifest, _digest = load_data(cfg, WORK)
    if args.colour_normalised:
        cfg = resolve_colour_normalise({**cfg, "model": {**cfg["model"], "colour_normalise": "reinhard-lab"}}, crops["train"])
        x = final_avg(cfg, list(np.concatenate([crops["train"], crops["val"]])), "normalised")
        x_test = final_avg(cfg, list(crops["test"]), "normalised")
    else:
        avg = VARIANTS[0]  # the global average of the final map at 128 px: the served pooling
        feats = features(cfg, crops, avg.size)
        x = np.concatenate([stack(feats["train"], avg), stack(feats["val"], avg)])
        x_test = stack(feats["test"], avg)
    y = np.concatenate([labels["train"], labels["val"]])
    groups = list(sessions["train"]) + list(sessions["val"])

    # the protocol itself, over the whole grid: its choice and its head
    t0 = time.time()
    got = cross_session(cfg, x, y, groups)
    print(f"grid {', '.join(f'{v:g}' for v in grid)}: chose L2 {got['l2']:g} in {time.time() - t0:.0f}s", flush=True)

    # every L2 alone, for its held-out figures (the same fits, so the same fold AUC as in the grid run)
    rows = {}
    for l2 in grid:
        one = cross_session({**cfg, "train": {**cfg["train"], "probe_l2": [l2]}}, x, y, groups)
        rows[l2] = fold_figures(one)
        per_fold = next(h for h in one["history"] if h.get("l2") == l2)["fold_scores"]
        rows[l2]["per_fold"] = per_fold
    grid_scores = {h["l2"]: h["val_score"] for h in got["history"] if "l2" in h}
    assert all(abs(grid_scores[l2] - rows[l2]["fold_auc"]) < 1e-9 for l2 in grid)

    folds = list(rows[grid[0]]["per_fold"])
    print(
        f"\nheld-out folds (train + val sessions), average pooling at 128 px{', colour-normalised crops' if args.colour_normalised else ''}"
    )
    print("| L2 | fold AUC (mean) | pooled AUC | pooled BA | mean fold BA | worst fold BA | " + " | ".join(folds) + " |")
    print("|---|---|---|---|---|---|" + "---|" * len(folds))
    for l2, f in rows.items():
        mark = " (chosen)" if l2 == got["l2"] else ""
        print(
            f"| {l2:g}{mark} | {f['fold_auc']:.3f} | {f['pooled_auc']:.3f} | {f['pooled_ba']:.3f} | {f['mean_fold_ba']:.3f} | "
            f"{f['min_fold_ba']:.3f} | " + " | ".join(f"{f['per_fold'][k]:.3f}" for k in folds) + " |"
        )

    print(f"\ntest sessions ({', '.join(sorted(set(sessions['test'])))}), scored once at the chosen L2 {got['l2']:g}")
    print_test_table({f"{got['l2']:g}": test_figures(cfg, got, x_test, labels["test"], list(sessions["test"]))}, first="L2")


if __name__ == "__main__":
    main()

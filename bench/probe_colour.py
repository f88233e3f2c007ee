"""Whether the apple defect probe should learn colour apart from its sessions: every train and val
session of FruitNet apples holds one camera, one light and mostly one variety, and most of them one
class, so a sound green apple and a defective red one differ in session as much as in defect. Two
ways to take the session's colour away from the head, against the shipped plain crops:

- **colour copies**: each train and val crop is copied once in the
  fruit colour of a random crop of every train and val session (Reinhard transfer of the fruit
  pixels' Lab mean and spread, grader/colour.py: colour_transfer), and the head learns from the plain
  crops and the copies. Serving is unchanged (same network, same crop). A held-out fold learns only
  from copies whose crop and colour both come from its training sessions
  (training/probe.py: Copies).
- **colour normalised** (``model.colour_normalise: reinhard-lab``): every crop's fruit pixels get one
  canonical Lab mean and spread before the network, in training and in serving alike
  (grader/defect.py: preprocess), the canonical colour fitted on the train crops.

Each runs the config's own cross-session protocol (training/probe.py: run_cross_session, then the
temperature and threshold from the held-out logits). The rule, fixed before the run: the largest mean
fold AUC wins if it also beats the plain crops' mean fold balanced accuracy; then the test sessions
are scored once, for the plain crops and the winner.

    PYTHONPATH=. .venv/bin/python bench/probe_colour.py     # about 4 min on 2 cores; needs ../shared/data

The crops are cached in var/bench/pooling/ (shared with bench/probe_pooling.py), the features of
this bench in var/bench/colour/.
"""

from __future__ import annotations

import copy
import hashlib
import time
from typing import Any

import numpy as np
import torch

from bench.probe_pooling import WORK, extract, fold_figures, print_test_table, recipe_as_measured, test_figures
from grader.colour import colour_transfer, fruit_colour_stats
from grader.defect import preprocess
from training import probe
from training.calibrate import calibrate
from training.config import classes_of, spec_for
from training.data import load_data, resolve_colour_normalise
from training.models_registry import build_model

CACHE = WORK.parent / "colour"
SEED = 7


def final_avg(cfg: dict[str, Any], crops: list[np.ndarray], tag: str) -> np.ndarray:
    """The served features (global average of the final map) of ``crops`` as ``cfg`` preprocesses them."""
    h = hashlib.sha256(tag.encode())
    for c in crops:
        h.update(c.tobytes())
    path = CACHE / f"{tag}-{h.hexdigest()[:12]}.npy"
    if path.exists():
        return np.load(path)
    size = int(cfg["model"]["input_size"])
    model = build_model(cfg["model"]["arch"], len(classes_of(cfg)), size)
    t0 = time.time()
    out = extract(model, preprocess(crops, spec_for(cfg)))["final_avg"].astype(np.float32)
    print(f"{tag}: {len(crops)} crops' features in {time.time() - t0:.0f}s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, out)
    return out


def colour_copies(crops: np.ndarray, labels: np.ndarray, groups: list[str]) -> tuple[list[np.ndarray], np.ndarray, list[str], list[str]]:
    """Each crop once in the fruit colour of a random crop of every session."""
    rng = np.random.default_rng(SEED)
    g = np.asarray(groups)
    stats = [fruit_colour_stats(c) for c in crops]
    by_session = {s: [i for i in np.flatnonzero(g == s) if stats[i] is not None] for s in sorted(set(groups))}
    out, ys, own, donors = [], [], [], []
    for i, crop in enumerate(crops):
        for s, pool in by_session.items():
            out.append(colour_transfer(crop, stats[int(rng.choice(pool))]))
            ys.append(labels[i])
            own.append(groups[i])
            donors.append(s)
    return out, np.asarray(ys), own, donors


def main() -> None:
    torch.set_num_threads(2)
    cfg = recipe_as_measured()  # both variants calibrated by a temperature alone, as when they were chosen
    crops, labels, sessions, _manifest, _digest = load_data(cfg, WORK)
    tv = np.concatenate([crops["train"], crops["val"]])
    y = np.concatenate([labels["train"], labels["val"]])
    groups = list(sessions["train"]) + list(sessions["val"])
    s_test = list(sessions["test"])

    plain = {"tv": final_avg(cfg, list(tv), "plain"), "test": final_avg(cfg, list(crops["test"]), "plain")}
    cc, cy, cown, cdon = colour_copies(tv, y, groups)
    copies = probe.Copies(final_avg(cfg, cc, "colour-copies"), cy, cown, cdon)
    norm_cfg = resolve_colour_normalise(
        copy.deepcopy({**cfg, "model": {**cfg["model"], "colour_normalise": "reinhard-lab"}}), crops["train"]
    )
    normed = {"tv": final_avg(norm_cfg, list(tv), "normalised"), "test": final_avg(norm_cfg, list(crops["test"]), "normalised")}

    def run(x: np.ndarray, run_cfg: dict[str, Any], cp: probe.Copies | None) -> dict[str, Any]:
        got = probe.cross_session_for(run_cfg, x, y, groups, cp)
        got["cal"] = calibrate(run_cfg, {"val": got["oof_logits"]}, {"val": got["oof_labels"]}, {"val": got["oof_groups"]})
        return got

    variants = {
        "plain crops (0.5.1's recipe)": (plain, cfg, None),
        "plain + colour copies": (plain, cfg, copies),
        "colour normalised": (normed, norm_cfg, None),
    }
    rows = {}
    for name, (feats, run_cfg, cp) in variants.items():
        t0 = time.time()
        got = run(feats["tv"], run_cfg, cp)
        rows[name] = (got, fold_figures(got))
        print(f"{name}: {time.time() - t0:.0f}s", flush=True)

    folds = list(next(h for h in rows["plain crops (0.5.1's recipe)"][0]["history"] if "fold_scores" in h)["fold_scores"])
    print("\nheld-out folds (train + val sessions), global average at 128 px")
    print("| variant | L2 | fold AUC (mean) | pooled AUC | pooled BA | mean fold BA | worst fold BA | " + " | ".join(folds) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(folds))
    for name, (got, f) in rows.items():
        per_fold = next(h for h in got["history"] if h.get("l2") == got["l2"])["fold_scores"]
        print(
            f"| {name} | {f['l2']:g} | {f['fold_auc']:.3f} | {f['pooled_auc']:.3f} | {f['pooled_ba']:.3f} | {f['mean_fold_ba']:.3f} | "
            f"{f['min_fold_ba']:.3f} | " + " | ".join(f"{per_fold[k]:.3f}" for k in folds) + " |"
        )

    base = "plain crops (0.5.1's recipe)"
    chosen = max(rows, key=lambda n: rows[n][1]["fold_auc"])
    beats = chosen != base and rows[chosen][1]["mean_fold_ba"] > rows[base][1]["mean_fold_ba"]
    print(f"\nchosen on the folds: {chosen} ({'beats' if beats else 'does not beat'} the plain crops on fold BA too)")

    print("\ntest sessions (IMG_9xxx sound, 20190824 defective), looked at once")
    print_test_table(
        {
            name: test_figures(variants[name][1], rows[name][0], variants[name][0]["test"], labels["test"], s_test)
            for name in dict.fromkeys([base, chosen])
        }
    )


if __name__ == "__main__":
    main()

"""How the frozen EfficientNet-Lite0 features are pooled for the apple defect probe: the shipped
global average of the final 1280-channel map against max pooling, GeM (p = 3), average and max
concatenated, and the average and max of an intermediate block's output added to the final average
(same forward pass, so no extra CPU when served), and the final average at 160 px input (about 1.6x
the CPU of 128 px).

The crops are the shipped model's training crops (training/data.py: load_data on the apple config,
cached under var/bench/pooling/cache), preprocessed as the service does (grader.defect.preprocess).
Every variant runs the config's own cross-session protocol on the train and val sessions
(training/probe.py: run_cross_session, then training/calibrate.py: calibrate on the held-out
logits, as training/artifact.py does): the held-out-fold AUC, the balanced accuracy of the pooled
held-out logits and the mean per-fold balanced accuracy at the threshold chosen on the folds. The
variant is chosen on those fold figures alone, among the variants that cost what the shipped model
costs (128 px): the largest mean per-fold AUC (the score run_cross_session chooses L2 on). Then,
once, the chosen variant and the shipped average are scored on the test sessions.

    PYTHONPATH=. .venv/bin/python bench/probe_pooling.py     # about 4 min on 2 cores (1.5 from cached features); needs ../shared/data

The feature arrays are cached per input side in var/bench/pooling/features-<side>-<key>.npz.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from grader.defect import preprocess
from training import probe
from training.calibrate import calibrate
from training.config import classes_of, load_config, spec_for
from training.data import load_data
from training.efficientnet_lite import EfficientNetLite
from training.models_registry import build_model

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "training" / "configs" / "apple_defect_lite0.yaml"
WORK = ROOT / "var" / "bench" / "pooling"
#: intermediate blocks tapped (EfficientNet-Lite0 at 128 px: _blocks.10 112 channels at 8x8, the end
#: of the stride-16 stage; _blocks.12 192 channels at 4x4, mid stride-32 stage; _blocks.15 320
#: channels at 4x4, the input of the 1x1 head convolution)
BLOCKS = ("_blocks.10", "_blocks.12", "_blocks.15")
GEM_P = 3.0
SIZES = (128, 160)


def gem(x: torch.Tensor, p: float = GEM_P, eps: float = 1e-6) -> torch.Tensor:
    """Generalised mean over H, W: (mean x^p)^(1/p) per channel, (N, C, H, W) -> (N, C)."""
    return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def extract(model: EfficientNetLite, batch: np.ndarray, bs: int = 64) -> dict[str, np.ndarray]:
    """The pooled statistics of the final map and of :data:`BLOCKS` for a preprocessed batch."""
    taps: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    hooks = [modules[b].register_forward_hook(lambda _m, _i, out, b=b: taps.__setitem__(b, out.detach())) for b in BLOCKS]
    got: dict[str, list[np.ndarray]] = {}
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(batch), bs):
                fmap = model.features(torch.from_numpy(np.ascontiguousarray(batch[i : i + bs])))
                parts = {"final_avg": fmap.mean(dim=(2, 3)), "final_max": fmap.amax(dim=(2, 3)), "final_gem": gem(fmap)}
                for b in BLOCKS:
                    parts[f"{b}_avg"] = taps[b].mean(dim=(2, 3))
                    parts[f"{b}_max"] = taps[b].amax(dim=(2, 3))
                for k, v in parts.items():
                    got.setdefault(k, []).append(v.numpy())
    finally:
        for h in hooks:
            h.remove()
    return {k: np.concatenate(v) for k, v in got.items()}


def features(cfg: dict[str, Any], crops: dict[str, np.ndarray], size: int) -> dict[str, dict[str, np.ndarray]]:
    """{split: {statistic: (N, C)}} at input side ``size``, cached on the crops' bytes and the side."""
    h = hashlib.sha256(str(size).encode())
    for s in sorted(crops):
        h.update(s.encode() + crops[s].tobytes())
    cache = WORK / f"features-{size}-{h.hexdigest()[:12]}.npz"
    if cache.exists():
        z = np.load(cache)
        out: dict[str, dict[str, np.ndarray]] = {}
        for key in z.files:
            split, stat = key.split("/", 1)
            out.setdefault(split, {})[stat] = z[key]
        return out
    sized = {**cfg, "model": {**cfg["model"], "input_size": size}}
    spec = spec_for(sized)
    model = build_model(cfg["model"]["arch"], len(classes_of(cfg)), size)
    assert isinstance(model, EfficientNetLite)
    t0 = time.time()
    out = {split: extract(model, preprocess(list(crops[split]), spec)) for split in crops}
    print(f"features at {size} px: {time.time() - t0:.0f}s", flush=True)
    WORK.mkdir(parents=True, exist_ok=True)
    np.savez(cache, **{f"{split}/{stat}": v for split, d in out.items() for stat, v in d.items()})
    return out


def recipe_as_measured() -> dict[str, Any]:
    """The apple config as this bench, bench/probe_l2.py and the plain rows of bench/probe_colour.py
    measured it: 0.5.1's recipe, the crops as they are and a temperature alone (0.6.0 added the
    colour normalisation and ``calibration.method: temperature_and_bias``, chosen by
    bench/probe_colour.py and bench/probe_calibration.py)."""
    cfg = load_config(CONFIG)
    cfg["model"]["colour_normalise"] = None
    cfg["calibration"] = {"method": "temperature"}
    return cfg


@dataclass(frozen=True)
class Variant:
    name: str
    size: int
    stats: tuple[str, ...]  # statistics concatenated into the feature vector the head reads


VARIANTS = (
    Variant("avg (shipped)", 128, ("final_avg",)),
    Variant("max", 128, ("final_max",)),
    Variant("gem p=3", 128, ("final_gem",)),
    Variant("avg+max", 128, ("final_avg", "final_max")),
    *(Variant(f"avg + {b} avg+max", 128, ("final_avg", f"{b}_avg", f"{b}_max")) for b in BLOCKS),
    Variant("avg @160 px (1.6x CPU)", 160, ("final_avg",)),
    Variant("avg+max @160 px (1.6x CPU)", 160, ("final_avg", "final_max")),
)


def stack(feats: dict[str, np.ndarray], v: Variant) -> np.ndarray:
    return np.concatenate([feats[s] for s in v.stats], axis=1).astype(np.float32)


def cross_session(cfg: dict[str, Any], x: np.ndarray, y: np.ndarray, groups: list[str]) -> dict[str, Any]:
    """run_cross_session exactly as training/train.py calls it for ``train.probe_fit: cross_session``,
    then calibrate on the held-out logits as training/artifact.py does."""
    got = probe.cross_session_for(cfg, x, y, groups)
    got["cal"] = calibrate(cfg, {"val": got["oof_logits"]}, {"val": got["oof_labels"]}, {"val": got["oof_groups"]})
    return got


def fold_figures(got: dict[str, Any]) -> dict[str, float]:
    val = got["cal"]["metrics"]["val"]
    chosen = next(h for h in got["history"] if h.get("l2") == got["l2"])
    return {
        "l2": got["l2"],
        "fold_auc": float(chosen["val_score"]),  # mean per-fold AUC at the chosen L2
        "pooled_auc": float(val["auc"]),
        "pooled_ba": float(val["balanced_accuracy"]),
        "mean_fold_ba": float(np.mean([r["balanced_accuracy"] for r in val["per_session"].values()])),
        "min_fold_ba": float(np.min([r["balanced_accuracy"] for r in val["per_session"].values()])),
    }


def test_figures(cfg: dict[str, Any], got: dict[str, Any], x_test: np.ndarray, y_test: np.ndarray, s_test: list[str]) -> dict[str, Any]:
    """The head fitted on every train and val session, temperature and threshold from the folds."""
    logits = x_test @ got["w"].T + got["b"]
    cal = calibrate(
        cfg,
        {"val": got["oof_logits"], "test": logits},
        {"val": got["oof_labels"], "test": y_test},
        {"val": got["oof_groups"], "test": s_test},
    )
    return {"threshold": cal["threshold"], "temperature": cal["temperature"], **cal["metrics"]["test"]}


def print_test_table(figures: dict[str, dict[str, Any]], first: str = "variant") -> None:
    """The test sessions' figures (:func:`test_figures`) of each named run, one row each."""
    print(f"| {first} | test BA | 95 % CI | recall defective | recall sound | test AUC | ECE | threshold | temperature |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, t in figures.items():
        lo, hi = t["balanced_accuracy_ci95"]
        print(
            f"| {name} | {t['balanced_accuracy']:.3f} | {lo:.3f}–{hi:.3f} | {t['recall_defective']:.3f} | {t['recall_sound']:.3f} | "
            f"{t['auc']:.3f} | {t['ece_after']:.3f} | {t['threshold']:.3f} | {t['temperature']:.3f} |"
        )


def main() -> None:
    torch.set_num_threads(1)
    cfg = recipe_as_measured()
    crops, labels, sessions, _manifest, _digest = load_data(cfg, WORK)
    feats = {size: features(cfg, crops, size) for size in SIZES}
    y = np.concatenate([labels["train"], labels["val"]])
    groups = list(sessions["train"]) + list(sessions["val"])

    rows: dict[str, tuple[Variant, dict[str, Any], dict[str, float]]] = {}
    for v in VARIANTS:
        t0 = time.time()
        x = np.concatenate([stack(feats[v.size]["train"], v), stack(feats[v.size]["val"], v)])
        got = cross_session(cfg, x, y, groups)
        rows[v.name] = (v, got, fold_figures(got))
        print(f"{v.name}: {x.shape[1]} features, {time.time() - t0:.0f}s", flush=True)

    print("\nheld-out folds (train + val sessions; each fold a sound and a defective session never seen by its head)")
    print("| variant | features | L2 | fold AUC (mean) | pooled AUC | pooled BA | mean fold BA | worst fold BA |")
    print("|---|---|---|---|---|---|---|---|")
    for v, _got, f in rows.values():
        dims = sum(feats[v.size]["train"][s].shape[1] for s in v.stats)
        print(
            f"| {v.name} | {dims} | {f['l2']:g} | {f['fold_auc']:.3f} | {f['pooled_auc']:.3f} | {f['pooled_ba']:.3f} | "
            f"{f['mean_fold_ba']:.3f} | {f['min_fold_ba']:.3f} |"
        )

    # the choice: fold figures only, among the variants that cost what the shipped model costs
    same_cost = [name for name, (v, _g, _f) in rows.items() if v.size == 128]
    chosen = max(same_cost, key=lambda name: rows[name][2]["fold_auc"])
    baseline = VARIANTS[0].name
    base_f, chosen_f = rows[baseline][2], rows[chosen][2]
    beats = chosen != baseline and chosen_f["fold_auc"] > base_f["fold_auc"] and chosen_f["mean_fold_ba"] > base_f["mean_fold_ba"]
    print(f"\nchosen on the folds: {chosen} ({'beats' if beats else 'does not beat'} the shipped average on fold AUC and fold BA)")

    print("\ntest sessions (IMG_9xxx sound, 20190824 defective), looked at once")
    print_test_table(
        {
            name: test_figures(
                cfg, rows[name][1], stack(feats[rows[name][0].size]["test"], rows[name][0]), labels["test"], list(sessions["test"])
            )
            for name in dict.fromkeys([baseline, chosen])
        }
    )


if __name__ == "__main__":
    main()

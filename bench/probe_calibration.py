"""How the apple defect model's scores are calibrated: a temperature alone, or a temperature and a
shift of the defective logit (Platt scaling; ``calibration.method: temperature_and_bias``), with
every photo or both classes weighing the same.

The held-out logits are the shipped recipe's own (training/configs/apple_defect_lite0.yaml: the
colour-normalised crops, the cross-session protocol of training/probe.py): one fold per held-out
pair of sessions. Each calibration is fitted on four folds and its expected calibration error (ECE,
10 bins, as every model card reports it) read on the fifth, in turn; the smallest mean wins. Then,
once, the test sessions' ECE of each, the calibration fitted on all five folds as training fits it.

    PYTHONPATH=. .venv/bin/python bench/probe_calibration.py     # about 2 min on 2 cores; needs ../shared/data
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import torch

from bench.probe_colour import final_avg
from bench.probe_pooling import CONFIG, WORK
from training import probe
from training.config import load_config
from training.data import load_data, resolve_colour_normalise
from training.metrics import expected_calibration_error, fit_temperature, fit_temperature_and_bias


def _sigmoid(v: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-v))


def _temperature(d: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    t = fit_temperature(np.stack([np.zeros_like(d), d], axis=1), y)
    return lambda m: _sigmoid(m / t)


def _platt(balanced: bool) -> Callable[[np.ndarray, np.ndarray], Callable[[np.ndarray], np.ndarray]]:
    def fit(d: np.ndarray, y: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        t, shift = fit_temperature_and_bias(d, y, balanced=balanced)
        return lambda m: _sigmoid((m + shift) / t)

    return fit


CALIBRATIONS = {
    "none (T = 1)": lambda d, y: _sigmoid,
    "temperature": _temperature,
    "temperature and bias": _platt(False),
    "temperature and bias, classes weighing the same": _platt(True),
}


def main() -> None:
    torch.set_num_threads(2)
    cfg = load_config(CONFIG)
    crops, labels, sessions, _manifest, _digest = load_data(cfg, WORK)
    if cfg["model"].get("colour_normalise"):
        cfg = resolve_colour_normalise(copy.deepcopy(cfg), crops["train"])
    tv = np.concatenate([crops["train"], crops["val"]])
    y = np.concatenate([labels["train"], labels["val"]])
    groups = list(sessions["train"]) + list(sessions["val"])
    tag = "normalised" if cfg["model"].get("colour_normalise") else "plain"
    got = probe.cross_session_for(cfg, final_avg(cfg, list(tv), tag), y, groups)
    z = got["oof_logits"]
    d, yy, folds = z[:, 1] - z[:, 0], got["oof_labels"].astype(int), np.asarray(got["oof_groups"])
    zt = final_avg(cfg, list(crops["test"]), tag) @ got["w"].T + got["b"]
    dt, yt = zt[:, 1] - zt[:, 0], labels["test"].astype(int)

    names = sorted(set(folds))
    rows = {}
    for name, fit in CALIBRATIONS.items():
        per_fold = [expected_calibration_error(yy[folds == f], fit(d[folds != f], yy[folds != f])(d[folds == f])) for f in names]
        rows[name] = (float(np.mean(per_fold)), per_fold)
    print("\nECE on each held-out fold, the calibration fitted on the other four")
    print("| calibration | mean | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for name, (mean, per_fold) in rows.items():
        print(f"| {name} | {mean:.3f} | " + " | ".join(f"{v:.3f}" for v in per_fold) + " |")
    chosen = min(rows, key=lambda n: rows[n][0])
    print(f"\nchosen on the folds: {chosen}")

    print("\ntest sessions, looked at once (each calibration fitted on all five folds)")
    print("| calibration | test ECE |")
    print("|---|---|")
    for name, fit in CALIBRATIONS.items():
        print(f"| {name} | {expected_calibration_error(yt, fit(d, yy)(dt)):.3f} |")


if __name__ == "__main__":
    main()

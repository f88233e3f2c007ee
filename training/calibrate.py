"""What an artifact decides from its logits: P(defective), the temperature, the threshold by the
config's rule, the out-of-distribution energy threshold, and the figures of every split."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from grader.defect import energy, softmax
from training.config import (
    CLASSES,
    classes_of,
    defective_of,
    is_defective,
)
from training.finetune import head_prefix
from training.metrics import auc, binary_report, expected_calibration_error, fit_temperature, fit_temperature_and_bias, pick_threshold


def predict_logits(model: nn.Module, batch: np.ndarray, bs: int = 128) -> np.ndarray:
    model.eval()
    outs = []
    device = next(model.parameters()).device  # a GPU under torchrun (training/distributed.py)
    with torch.no_grad():
        for i in range(0, len(batch), bs):
            outs.append(model(torch.from_numpy(batch[i : i + bs]).to(device)).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, len(CLASSES)), np.float32)


def selection_score(cfg: dict[str, Any], val_labels: np.ndarray, val_logits: np.ndarray) -> float:
    """What chooses between candidates on val: the AUC of sound vs defective; for a model that also
    tells defect types apart, the mean of that AUC and the type balanced accuracy."""
    val = binary_report(is_defective(val_labels, cfg), defective_scores(val_logits, 1.0, cfg), 0.5)
    if len(defective_of(cfg)) > 1:
        return (val["auc"] + type_report(val_labels, val_logits, cfg)["balanced_accuracy"]) / 2
    return val["auc"]


#: an epoch whose val logits all lie within this share of their size of each other (every class) has
#: collapsed: its output is one constant plus float32 rounding noise (about 1e-7 of the size), and an
#: AUC ranked on that noise can look good by chance (seen: val AUC 0.93 from a spread of 6e-8)
MIN_VAL_LOGIT_SPREAD = 1e-5


def outputs_collapsed(logits: np.ndarray) -> bool:
    """Whether a network's logits on a split are not finite or constant up to rounding (a diverged
    or collapsed network): such an epoch is never selected, whatever its val AUC."""
    if not np.isfinite(logits).all():
        return True
    return len(logits) > 1 and float(np.ptp(logits, axis=0).max()) < MIN_VAL_LOGIT_SPREAD * max(1.0, float(np.abs(logits).max()))


def defective_scores(logits: np.ndarray, temperature: float = 1.0, cfg: dict[str, Any] | None = None) -> np.ndarray:
    """P(defective), the sum over the defective classes: the same calibrated softmax serving applies."""
    if cfg is None:
        return softmax(logits, temperature)[:, CLASSES.index("defective")]
    classes = classes_of(cfg)
    return softmax(logits, temperature)[:, [classes.index(c) for c in defective_of(cfg)]].sum(axis=1)


def pick_threshold_by_group(y: np.ndarray, scores: np.ndarray, groups: list[str], worst: bool = True) -> float:
    """The threshold whose smallest balanced accuracy over the groups holding both classes is the
    largest (ties: the larger pooled balanced accuracy, then the lower threshold); with
    ``worst=False``, whose mean balanced accuracy over those groups is the largest."""
    g = np.array(groups)
    both = [k for k in sorted(set(groups)) if 0 < y[g == k].sum() < (g == k).sum()] or sorted(set(groups))
    best: tuple[float, float, float] | None = None
    for t in np.unique(np.clip(scores, 0.02, 0.98)):
        per = [binary_report(y[g == k], scores[g == k], float(t), counts_only=True)["balanced_accuracy"] for k in both]
        key = (
            float(np.nanmin(per) if worst else np.nanmean(per)),
            float(binary_report(y, scores, float(t), counts_only=True)["balanced_accuracy"]),
            -float(t),
        )
        if best is None or key > best:
            best = key
    return 0.5 if best is None else -best[2]


def type_report(labels: np.ndarray, logits: np.ndarray, cfg: dict[str, Any]) -> dict[str, Any]:
    """How well the defect type is told among the truly defective fruit: the most probable
    defective class against the true one (accuracy, balanced accuracy, per-type recall, confusion)."""
    classes, defective = classes_of(cfg), defective_of(cfg)
    idx = [classes.index(c) for c in defective]
    sel = np.isin(labels, idx)
    true = np.array([idx.index(int(v)) for v in labels[sel]], dtype=int)
    pred = np.argmax(logits[sel][:, idx], axis=1) if sel.any() else np.zeros(0, int)
    matrix = [[int(((true == a) & (pred == b)).sum()) for b in range(len(idx))] for a in range(len(idx))]
    recall = {c: (matrix[a][a] / sum(matrix[a]) if sum(matrix[a]) else float("nan")) for a, c in enumerate(defective)}
    seen = [r for r in recall.values() if r == r]
    return {
        "n": int(sel.sum()),
        "accuracy": float((true == pred).mean()) if len(true) else float("nan"),
        "balanced_accuracy": float(np.mean(seen)) if seen else float("nan"),
        "recall": recall,
        "confusion": {"labels": defective, "matrix": matrix},
    }


TEMPERATURE = "temperature"
TEMPERATURE_AND_BIAS = "temperature_and_bias"


def calibration_method(cfg: dict[str, Any]) -> str:
    """``calibration.method``: ``temperature`` (default; one temperature on the logits, fitted by
    log-likelihood on val) or ``temperature_and_bias`` (two-class models: Platt scaling, a shift of
    the defective logit as well, both classes weighing the same)."""
    method = (cfg.get("calibration") or {}).get("method", TEMPERATURE)
    if method not in (TEMPERATURE, TEMPERATURE_AND_BIAS):
        raise ValueError(f"calibration.method must be {TEMPERATURE} or {TEMPERATURE_AND_BIAS}, got {method!r}")
    if method == TEMPERATURE_AND_BIAS and len(classes_of(cfg)) != 2:
        raise ValueError(f"calibration.method {TEMPERATURE_AND_BIAS} needs a two-class model, this one has {classes_of(cfg)}")
    return method


def shift_head_bias(model: nn.Module, column: int, shift: float) -> None:
    """Add ``shift`` to one class's bias in the network's last Linear layer (its classifier head)."""
    head = dict(model.named_modules())[head_prefix(model)]
    with torch.no_grad():
        head.bias[column] += shift


def shifted(logits: np.ndarray, column: int, shift: float) -> np.ndarray:
    """``logits`` with ``shift`` added to one class's column (a copy)."""
    out = np.array(logits, np.float32, copy=True)
    out[:, column] += np.float32(shift)
    return out


def calibrate(
    cfg: dict[str, Any], logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], sessions: dict[str, list[str]]
) -> dict[str, Any]:
    """Everything the artifact decides from its logits: the temperature fitted on val, the
    defective threshold and review band by the config's rule on val, the energy threshold for
    out-of-distribution, and the figures of every split (``logits`` holds val and the other
    evaluated splits). Training calls it on torch's logits, training/views.py on a graph's."""
    group_key = cfg["data"].get("report_by", "session")  # "source" for citrus: per-source figures
    multi = len(defective_of(cfg)) > 1
    raw_logits = logits
    method = calibration_method(cfg)
    shift = 0.0
    if method == TEMPERATURE_AND_BIAS:
        # Platt scaling: a shift of the defective logit and a temperature, both fitted on val; the
        # shift goes into the head's bias (training/artifact.py), so serving applies a temperature only
        d = classes_of(cfg).index(defective_of(cfg)[0])
        try:
            temperature, shift = fit_temperature_and_bias(
                logits["val"][:, d] - logits["val"][:, 1 - d], is_defective(labels["val"], cfg), balanced=True
            )
        except ValueError as exc:  # val of one class, or ranked the wrong way round (a tiny dataset)
            print(f"calibration: {exc}; a temperature alone instead")
            method = TEMPERATURE
        else:
            logits = {split: shifted(z, d, shift) for split, z in logits.items()}
    val_logits = logits["val"]
    if method == TEMPERATURE:
        temperature = fit_temperature(val_logits, labels["val"])
    val_scores = defective_scores(val_logits, temperature, cfg)
    # out of distribution: a crop whose energy (grader.defect.energy at the calibrated temperature,
    # as serving computes it) lies above this high quantile of the val crops' energies is unlike
    # the fruit the model was chosen on; serving sets DefectEvidence.ood and the grader an "ood" flag
    ood_q = float(cfg["thresholds"].get("ood_energy_quantile", 0.99))
    ood_threshold = float(np.quantile(energy(val_logits, temperature), ood_q))
    th = cfg["thresholds"]
    y_val, min_recall = is_defective(labels["val"], cfg), float(th["min_recall_defective"])
    threshold = pick_threshold(y_val, val_scores, min_recall)
    rule = f"largest threshold keeping val recall on defective >= {min_recall}"
    if th.get("rule", "recall") == "balanced_in_every_group":
        # sources whose defects score on different scales (lab-shot diseases near 1, stock-photo rot
        # lower) cannot all keep the recall at one threshold without giving up their sound fruit:
        # the threshold that serves the worst-served source best
        threshold = pick_threshold_by_group(y_val, val_scores, sessions["val"])
        rule = f"threshold maximising the smallest per-{group_key} balanced accuracy on val (ties: the larger pooled one, then the lower threshold)"
    elif th.get("rule", "recall") == "balanced_mean_over_groups":
        # held-out session folds (train.probe_fit: cross_session): the threshold that does best on
        # average over the folds, each a pair of sessions never seen by the head that scored it
        threshold = pick_threshold_by_group(y_val, val_scores, sessions["val"], worst=False)
        rule = f"threshold maximising the mean per-{group_key} balanced accuracy on val (ties: the lower threshold)"
    elif th.get("rule", "recall") != "recall":
        raise ValueError(f"thresholds.rule must be recall, balanced_in_every_group or balanced_mean_over_groups, got {th['rule']!r}")
    # the review band spans the threshold: from (1 - m)·t below it to t + m·(1 - t) above it, so a
    # low threshold does not send every sound fruit to an inspector
    m = float(th["review_margin"])
    band = (threshold * (1 - m), threshold + m * (1 - threshold))

    metrics: dict[str, Any] = {}
    for split, split_logits in logits.items():
        s_raw, s_cal = defective_scores(raw_logits[split], 1.0, cfg), defective_scores(split_logits, temperature, cfg)
        y = is_defective(labels[split], cfg)
        rep = binary_report(y, s_cal, threshold)
        rep["ece_before"] = expected_calibration_error(y, s_raw)
        rep["ece_after"] = expected_calibration_error(y, s_cal)
        rep["ood_share"] = float((energy(split_logits, temperature) > ood_threshold).mean())
        if multi:
            rep["types"] = type_report(labels[split], split_logits, cfg)
        per_group = {}
        for sess in sorted(set(sessions[split])):
            idx = np.array([i for i, s in enumerate(sessions[split]) if s == sess])
            per_group[sess] = binary_report(y[idx], s_cal[idx], threshold, counts_only=True)
            if group_key != "session":
                per_group[sess]["auc"] = auc(y[idx], s_cal[idx])
            if multi:
                per_group[sess]["types"] = type_report(labels[split][idx], split_logits[idx], cfg)
        rep[f"per_{group_key}"] = per_group
        metrics[split] = rep
    return {
        "temperature": temperature,
        "method": method,
        "logit_shift": shift,
        "threshold": threshold,
        "band": band,
        "rule": rule,
        "ood_threshold": ood_threshold,
        "ood_rule": (
            f"quantile {ood_q:g} of the val crops' energy -T*logsumexp(logits/T) "
            "at the calibration temperature T; above it a crop is out of distribution"
        ),
        "metrics": metrics,
    }

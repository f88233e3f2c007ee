"""Evaluation figures for a binary sound/defective model (numpy only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney), ties counted half."""
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    # average ranks for ties
    i = 0
    r = np.arange(1, len(allv) + 1, dtype=np.float64)
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        r[i : j + 1] = (i + j + 2) / 2
        i = j + 1
    ranks[order] = r
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % (z = 1.96) Wilson score interval of a proportion k / n: sound at 0 and n successes, where
    the textbook p ± z·se collapses to a point; (nan, nan) without trials."""
    if n <= 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def intervals(tp: int, fn: int, tn: int, fp: int) -> dict[str, list[float]]:
    """95 % intervals over the photos: each recall's Wilson interval, and for balanced accuracy the
    mean of the two recalls' lower bounds and of their upper bounds (wider than an exact interval:
    both recalls at a bound at once is rarer than 2.5 %). Photos of one capture session or source
    are not independent draws, so what a new session would give is less certain than these say."""
    rd, rs = wilson_interval(tp, tp + fn), wilson_interval(tn, tn + fp)
    out = {"recall_defective_ci95": list(rd), "recall_sound_ci95": list(rs)}
    both = [r for r in (rd, rs) if r[0] == r[0]]
    if both:
        out["balanced_accuracy_ci95"] = [float(np.mean([r[0] for r in both])), float(np.mean([r[1] for r in both]))]
    return out


def binary_report(y: np.ndarray, scores: np.ndarray, threshold: float, counts_only: bool = False) -> dict[str, Any]:
    y = np.asarray(y).astype(int)
    pred = (scores >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    rec = tp / (tp + fn) if tp + fn else float("nan")
    spec = tn / (tn + fp) if tn + fp else float("nan")
    rates = [r for r in (rec, spec) if r == r]
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": (tp + tn) / max(len(y), 1),
        "balanced_accuracy": float(np.mean(rates)) if rates else float("nan"),
        "recall_defective": rec,
        "recall_sound": spec,
        "confusion": {"labels": ["sound", "defective"], "matrix": [[tn, fp], [fn, tp]]},
        **intervals(tp, fn, tn, fp),
    }
    if not counts_only:
        out["auc"] = auc(y, scores)
        out["threshold"] = threshold
    return out


def expected_calibration_error(y: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """ECE of P(defective) over equal-width bins."""
    y = np.asarray(y).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (scores >= lo) & (scores < hi if hi < 1 else scores <= hi)
        if sel.any():
            ece += sel.mean() * abs(scores[sel].mean() - y[sel].mean())
    return float(ece)


#: the temperatures a calibration may choose
TEMPERATURE_RANGE = (0.05, 20.0)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood on held-out logits (golden search)."""
    y = np.asarray(y).astype(int)

    def nll(t: float) -> float:
        z = logits.astype(np.float64) / t
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[np.arange(len(y)), y].mean())

    lo, hi = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    for _ in range(60):
        if nll(np.exp(a)) < nll(np.exp(b)):
            hi = b
        else:
            lo = a
        a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    return float(np.exp((lo + hi) / 2))


def fit_temperature_and_bias(margin: np.ndarray, y: np.ndarray, balanced: bool = True) -> tuple[float, float]:
    """Platt scaling of a two-class model: P(class 1) = sigmoid((margin + shift) / T), ``margin``
    the logit of class 1 minus that of class 0, (T, shift) minimising the negative log-likelihood on
    held-out logits (Newton steps of a one-feature logistic regression; ``balanced``: both classes
    weigh the same, as balanced accuracy counts them). Temperature scaling is the case shift = 0."""
    d, t = np.asarray(margin, np.float64), np.asarray(y, np.float64)
    if not (0 < t.sum() < len(t)):
        raise ValueError("temperature and bias need held-out logits of both classes")
    w = np.where(t == 1, 0.5 / t.sum(), 0.5 / (len(t) - t.sum())) * len(t) if balanced else np.ones_like(d)
    x = np.stack([d, np.ones_like(d)], axis=1)
    beta = np.array([1.0, 0.0])
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ beta, -50, 50)))
        hess = (x * (w * p * (1 - p))[:, None]).T @ x + 1e-9 * np.eye(2)
        step = np.linalg.solve(hess, x.T @ (w * (t - p)))
        beta += step
        if np.abs(step).max() < 1e-10:
            break
    a, c = float(beta[0]), float(beta[1])
    if not a > 0:
        raise ValueError(f"the held-out logits rank the classes the wrong way round (slope {a:.3g}): no calibration fits")
    if not TEMPERATURE_RANGE[0] <= 1.0 / a <= TEMPERATURE_RANGE[1]:
        # held-out logits that barely differ (an untrained or degenerate head): the fit's temperature
        # would blow their noise up into scores
        raise ValueError(f"the fitted temperature {1.0 / a:.3g} lies outside {TEMPERATURE_RANGE}")
    return 1.0 / a, c / a


def pick_threshold(y: np.ndarray, scores: np.ndarray, min_recall: float) -> float:
    """The largest threshold whose recall on defective fruit stays >= min_recall; fewer false
    alarms at the recall the packhouse asked for. Falls back to 0.5 without defective examples."""
    pos = np.sort(scores[np.asarray(y) == 1])
    if len(pos) == 0:
        return 0.5
    k = int(np.floor((1 - min_recall) * len(pos)))  # may miss at most k defective fruit
    t = float(pos[k])
    return float(min(max(t, 0.02), 0.98))


def json_safe(x: Any) -> Any:
    """NaN (e.g. recall of a class a session lacks) becomes null: metadata stays strict JSON."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x

"""The linear probe: a pretrained backbone kept as it is, its classifier head fitted by L2-regularised
multinomial logistic regression on the pooled features of the train crops (``train.method: linear_probe``).

The regularisation strength is chosen on val among ``train.probe_l2`` (val AUC of sound vs
defective; for a typed model the mean of that AUC and the type balanced accuracy, as the
fine-tuning recipe selects epochs). ``train.probe_views`` > 1 adds that many augmented copies of
each train crop (the config's augmentation) to the features. The fitted head is written into the
network's last Linear layer, so export, calibration, thresholds and the explanation outputs run
exactly as after fine-tuning.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from training.finetune import head_prefix

DEFAULT_L2 = (0.3, 1.0, 3.0, 10.0, 30.0)


def pooled(model: nn.Module, batch: np.ndarray, bs: int = 64) -> np.ndarray:
    """The features the head reads (the input of its last Linear layer), for a preprocessed batch."""
    head = dict(model.named_modules())[head_prefix(model)]
    got: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _m, args: got.append(args[0].detach()))
    model.eval()
    try:
        with torch.no_grad():
            for i in range(0, len(batch), bs):
                model(torch.from_numpy(np.ascontiguousarray(batch[i : i + bs])))
    finally:
        hook.remove()
    return torch.cat(got).numpy() if got else np.zeros((0, head.in_features), np.float32)


def sample_weights(labels: np.ndarray, groups: list[str], balance: str | None) -> np.ndarray:
    """Every (group, label) pair weighing the same (``group_label``), else every class the same."""
    keys = [f"{g}\t{y}" for g, y in zip(groups, labels)] if balance == "group_label" else [str(y) for y in labels]
    size = Counter(keys)
    w = np.array([1.0 / size[k] for k in keys])
    return w / w.mean()


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted multinomial logistic regression with an L2 penalty ``l2``·|W|²/2 (per sample),
    standardisation folded back: (W (classes, features), b) on the raw features."""
    mu, sd = x.mean(0), x.std(0) + 1e-6
    xs = torch.tensor((x - mu) / sd, dtype=torch.float64)
    ys = torch.tensor(y, dtype=torch.long)
    ws = torch.tensor(weights, dtype=torch.float64)
    w = torch.zeros(n_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=500, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (ws * nn.functional.cross_entropy(xs @ w.T + b, ys, reduction="none")).mean() + l2 * (w * w).sum() / (2 * len(ys))
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach().numpy() / sd
    b_raw = b.detach().numpy() - w_raw @ mu
    return w_raw.astype(np.float32), b_raw.astype(np.float32)


def set_head(model: nn.Module, w: np.ndarray, b: np.ndarray) -> None:
    head = dict(model.named_modules())[head_prefix(model)]
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w))
        head.bias.copy_(torch.from_numpy(b))


def run_probe(
    model: nn.Module,
    cfg: dict[str, Any],
    train_batches: list[np.ndarray],
    train_labels: np.ndarray,
    train_groups: list[str],
    val_batch: np.ndarray,
    score: Callable[[np.ndarray], float],
    n_classes: int,
) -> list[dict[str, Any]]:
    """Fit the head for each ``train.probe_l2`` on the train features (``train_batches``: the plain
    crops and any augmented copies, each aligned with ``train_labels``), keep the one whose val
    logits ``score`` best; the model's head is left at the chosen fit. Returns the history."""
    tr = cfg["train"]
    strengths = [float(v) for v in (tr.get("probe_l2") or DEFAULT_L2)]
    t0 = time.time()
    feats = np.concatenate([pooled(model, b) for b in train_batches])
    labels = np.concatenate([train_labels] * len(train_batches))
    groups = list(train_groups) * len(train_batches)
    val_feats = pooled(model, val_batch)
    weights = sample_weights(labels, groups, tr.get("balance"))
    print(
        f"linear probe: {len(feats)} train features ({len(train_batches)} view(s) of {len(train_labels)} crops), "
        f"{len(val_feats)} val, in {time.time() - t0:.0f}s"
    )
    history, best = [], None
    for i, l2 in enumerate(strengths):
        w, b = fit_softmax(feats, labels, n_classes, l2, weights)
        val_logits = val_feats @ w.T + b
        s = float(score(val_logits))
        history.append({"epoch": i + 1, "phase": "linear probe", "l2": l2, "val_score": s})
        print(f"linear probe l2={l2:g}: val score {s:.4f}")
        if best is None or s > best[0]:
            best = (s, w, b, l2)
    assert best is not None
    set_head(model, best[1], best[2])
    history.append({"chosen_l2": best[3], "val_score": best[0]})
    return history


@dataclass(frozen=True)
class Copies:
    """Altered copies of the train and val crops that the head learns from and that are never
    scored (bench/probe_colour.py: each crop in other sessions' fruit colour): their features,
    labels, the session of the crop each one copies (``groups``) and the session whose fruit colour
    it was given (``donors``). A fold learns from a copy only when neither session is held out, so
    no held-out session lends its colour to the head that scores it."""

    feats: np.ndarray
    labels: np.ndarray
    groups: list[str]
    donors: list[str]

    def outside(self, fold: list[str]) -> np.ndarray:
        return ~(np.isin(np.asarray(self.groups), fold) | np.isin(np.asarray(self.donors), fold))


def session_folds(is_bad: np.ndarray, groups: list[str]) -> list[list[str]]:
    """Held-out folds that each hold both classes, from whole sessions: every pair of a sound-only
    and a defective-only session, and every session holding both classes alone. Sessions of one
    class cannot be held out alone (a fold of one class has no ranking to score), and holding out a
    pair asks what a packhouse asks: are the sound and the defective fruit of sessions never seen
    told apart."""
    g = np.asarray(groups)
    sessions = sorted(set(groups))
    kinds = {s: set(np.unique(np.asarray(is_bad)[g == s]).astype(bool).tolist()) for s in sessions}
    sound = [s for s in sessions if kinds[s] == {False}]
    bad = [s for s in sessions if kinds[s] == {True}]
    mixed = [s for s in sessions if len(kinds[s]) == 2]
    return [[a, b] for a in sound for b in bad] + [[m] for m in mixed]


def cross_session_for(
    cfg: dict[str, Any], feats: np.ndarray, labels: np.ndarray, groups: list[str], copies: Copies | None = None
) -> dict[str, Any]:
    """:func:`run_cross_session` with everything else from the config (``train.probe_l2``,
    ``train.balance``, the classes and the selection score): how ``train.probe_fit: cross_session``
    fits the head, for training/train.py and the benches that replay it."""
    from training.calibrate import selection_score
    from training.config import classes_of, is_defective

    tr = cfg["train"]
    return run_cross_session(
        feats,
        labels,
        is_defective(labels, cfg),
        groups,
        [float(v) for v in (tr.get("probe_l2") or DEFAULT_L2)],
        len(classes_of(cfg)),
        tr.get("balance"),
        lambda yy, z: selection_score(cfg, yy, z),
        copies,
    )


def run_cross_session(
    feats: np.ndarray,
    labels: np.ndarray,
    is_bad: np.ndarray,
    groups: list[str],
    strengths: list[float],
    n_classes: int,
    balance: str | None,
    score: Callable[[np.ndarray, np.ndarray], float],
    copies: Copies | None = None,
) -> dict[str, Any]:
    """``train.probe_fit: cross_session``: the head is fitted on every session of train and val, and
    everything is chosen on held-out sessions. For each L2 strength, each fold of
    :func:`session_folds` is scored by a head fitted on the other sessions; the strength whose mean
    fold ``score`` (labels, logits) is best wins and its head is refitted on all the features.
    Returns the head (``w``, ``b``), the chosen strength, the history and the held-out logits of
    every fold (``oof_logits``, ``oof_labels``, ``oof_groups`` naming each fold), which calibrate
    the temperature and the threshold as val logits would. ``copies`` (:class:`Copies`) join each
    fit they are allowed in, the final one included; only the plain crops are scored."""
    folds = session_folds(is_bad, groups)
    if not folds:
        raise ValueError("train.probe_fit cross_session needs sessions of both classes among train and val")
    g = np.asarray(groups)

    def fit(keep: np.ndarray, extra: np.ndarray | None, l2: float) -> tuple[np.ndarray, np.ndarray]:
        x, y, gg = feats[keep], labels[keep], list(g[keep])
        if copies is not None and extra is not None:
            x = np.concatenate([x, copies.feats[extra]])
            y = np.concatenate([y, copies.labels[extra]])
            gg += list(np.asarray(copies.groups)[extra])
        return fit_softmax(x, y, n_classes, l2, sample_weights(y, gg, balance))

    history, best = [], None
    for i, l2 in enumerate(strengths):
        outs = []
        for fold in folds:
            held = np.isin(g, fold)
            w, b = fit(~held, None if copies is None else copies.outside(fold), l2)
            outs.append((fold, held, feats[held] @ w.T + b))
        per_fold = [float(score(labels[held], z)) for _f, held, z in outs]
        s = float(np.mean(per_fold))
        history.append(
            {
                "epoch": i + 1,
                "phase": "linear probe, cross-session",
                "l2": l2,
                "val_score": s,
                "fold_scores": {"+".join(f): v for (f, _h, _z), v in zip(outs, per_fold)},
            }
        )
        print(f"linear probe l2={l2:g}: mean held-out-session score {s:.4f} ({', '.join(f'{v:.3f}' for v in per_fold)})")
        if best is None or s > best[0]:
            best = (s, l2, outs)
    assert best is not None
    _s, l2, outs = best
    w, b = fit(np.ones(len(g), bool), None if copies is None else np.ones(len(copies.labels), bool), l2)
    history.append({"chosen_l2": l2, "val_score": best[0], "folds": ["+".join(f) for f in folds]})
    return {
        "w": w,
        "b": b,
        "l2": l2,
        "history": history,
        "oof_logits": np.concatenate([z for _f, _h, z in outs]),
        "oof_labels": np.concatenate([labels[h] for _f, h, _z in outs]),
        "oof_groups": [("+".join(f)) for f, h, _z in outs for _ in range(int(h.sum()))],
    }

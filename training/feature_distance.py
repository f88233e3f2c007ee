"""The Mahalanobis feature distance behind the defect model's ``ood_distance`` outputs: the distance
of a feature vector to the nearest class mean of the train crops under their shared within-class
covariance (Ledoit-Wolf shrunk; its top ``MAX_DIMS`` principal directions kept exactly, the rest as
one isotropic residual term), fitted in numpy. training/explain.py writes a fitted
:class:`DistanceModel` into the graph as initializers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_DIMS = 128  # principal directions of the feature covariance kept exactly (the graph stays small)


@dataclass
class DistanceModel:
    """Mahalanobis distance to the nearest class mean under a shared covariance, as a small PPCA:
    exact in the top ``dims`` principal directions, one variance for the rest."""

    means: np.ndarray  # (K, C) class means of the train features
    classes: list[int]  # class index of each mean
    directions: np.ndarray  # (C, k) orthonormal principal directions
    variances: np.ndarray  # (k,) their variances
    residual_variance: float | None  # variance of every other direction; None when k == C
    shrinkage: float
    n_train: int

    def distance(self, feats: np.ndarray) -> np.ndarray:
        d = feats.astype(np.float64)[:, None, :] - self.means[None]  # (N, K, C)
        p = d @ self.directions  # (N, K, k)
        q = (p**2 / self.variances).sum(-1)
        if self.residual_variance is not None:
            r = d - p @ self.directions.T
            q = q + (r**2).sum(-1) / self.residual_variance
        return np.sqrt(np.maximum(q.min(axis=1), 0.0))


def ledoit_wolf_shrinkage(x: np.ndarray) -> float:
    """Ledoit & Wolf (2004)'s shrinkage of the covariance of the centred rows ``x`` towards
    (trace/p)·I: the weight in [0, 1] of the identity part."""
    n, p = x.shape
    x2 = x**2
    tr = x2.sum(axis=0) / n
    mu = tr.sum() / p
    delta = ((x.T @ x) ** 2).sum() / n**2
    beta = 1.0 / (p * n) * ((x2.T @ x2).sum() / n - delta)
    delta = (delta - 2.0 * mu * tr.sum() + p * mu**2) / p
    beta = min(beta, delta)
    return 0.0 if beta <= 0 or delta <= 0 else float(beta / delta)


def fit_distance(feats: np.ndarray, labels: np.ndarray, max_dims: int = MAX_DIMS) -> DistanceModel:
    feats = feats.astype(np.float64)
    labels = np.asarray(labels).astype(int)
    classes = sorted(set(labels.tolist()))
    means = np.stack([feats[labels == c].mean(axis=0) for c in classes])
    centred = feats - means[[classes.index(c) for c in labels]]
    n, c = centred.shape
    cov = centred.T @ centred / n
    s = ledoit_wolf_shrinkage(centred)
    mu = np.trace(cov) / c
    # features that vary less than float32 can tell apart (a spread under 1e-5 of their size) are a
    # collapsed network's: no distance measured in the float32 graph would match its fit
    if mu <= 1e-10 * float(np.mean(means**2)):
        raise ValueError(
            f"the train features do not vary (variance {mu:.3g} per feature against a mean square of "
            f"{float(np.mean(means**2)):.3g}): no covariance to measure a distance with"
        )
    cov = (1 - s) * cov + s * mu * np.eye(c)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1]
    vals, vecs = np.maximum(vals[order], 1e-12 * mu), vecs[:, order]
    k = min(max_dims, c)
    rest = vals[k:]
    return DistanceModel(
        means=means,
        classes=classes,
        directions=vecs[:, :k],
        variances=vals[:k],
        residual_variance=float(rest.mean()) if len(rest) else None,
        shrinkage=s,
        n_train=n,
    )


def held_out_distances(feats: np.ndarray, labels: np.ndarray, groups: list[str], max_dims: int = MAX_DIMS) -> np.ndarray:
    """Each crop's distance under a fit on the other groups' crops only (leave one session out): how
    far a fruit of a session never seen lies, the scale a threshold for unseen sessions is read on."""
    g = np.asarray(groups)
    out = np.zeros(len(feats))
    for k in np.unique(g):
        held = g == k
        if held.all():
            raise ValueError("held-out distances need two groups or more")
        out[held] = fit_distance(feats[~held], labels[~held], max_dims).distance(feats[held])
    return out

"""The colour model of one fruit on the tree, trained on the frame itself (the probability method's
segmentation step, besides GrabCut): pixel features (Lab, HSV saturation and value, local texture),
a quadratic logistic regression from a sure-fruit disc and a sure-background annulus, and the
fruit region as the component touching the sure-fruit disc with its holes filled.

Pure functions: numpy and OpenCV only."""

from __future__ import annotations

import cv2
import numpy as np


def pixel_features(crop_rgb: np.ndarray, blur_px: int, texture_px: int) -> np.ndarray:
    """(H, W, F) float32 pixel features: Lab, HSV saturation/value, local std of L."""
    sm = cv2.GaussianBlur(crop_rgb, (blur_px, blur_px), 0) if blur_px > 1 else crop_rgb
    sm = np.ascontiguousarray(sm)
    lab = cv2.cvtColor(sm, cv2.COLOR_RGB2LAB).astype(np.float32)
    hsv = cv2.cvtColor(sm, cv2.COLOR_RGB2HSV).astype(np.float32)
    L = cv2.cvtColor(np.ascontiguousarray(crop_rgb), cv2.COLOR_RGB2LAB)[..., 0].astype(np.float32)
    k = (texture_px, texture_px)
    mu = cv2.blur(L, k)
    sd = np.sqrt(np.maximum(cv2.blur(L * L, k) - mu * mu, 0.0))
    return np.dstack([lab, hsv[..., 1:], sd])


def _expand(x: np.ndarray) -> np.ndarray:
    """Quadratic feature expansion of standardised features (N, F) -> (N, 1 + F + F(F+1)/2)."""
    n, f = x.shape
    iu = np.triu_indices(f)
    quad = (x[:, :, None] * x[:, None, :])[:, iu[0], iu[1]]
    return np.hstack([np.ones((n, 1), x.dtype), x, quad])


def train_pixel_classifier(pos: np.ndarray, neg: np.ndarray, l2: float = 1e-2, steps: int = 8):
    """Logistic regression (quadratic features, Newton steps, classes weighted equally) on pixel
    feature rows; returns a function mapping (N, F) features to P(fruit)."""
    x = np.vstack([pos, neg]).astype(np.float64)
    mu, sd = x.mean(axis=0), x.std(axis=0) + 1e-6
    phi = _expand((x - mu) / sd)
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
    sw = np.r_[np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))]
    w = np.zeros(phi.shape[1])
    reg = l2 * np.eye(len(w))
    reg[0, 0] = 0.0
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-np.clip(phi @ w, -30, 30)))
        g = phi.T @ (sw * (p - y)) + reg @ w
        h = (phi * (sw * p * (1 - p))[:, None]).T @ phi + reg
        w -= np.linalg.solve(h + 1e-9 * np.eye(len(w)), g)

    def predict(f: np.ndarray) -> np.ndarray:
        z = _expand((f.astype(np.float64) - mu) / sd) @ w
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    return predict


def fill_component(mask: np.ndarray, seed: np.ndarray) -> np.ndarray:
    """The connected parts of ``mask`` touching ``seed``, with their holes filled."""
    m = mask.astype(np.uint8)
    _, lab = cv2.connectedComponents(m, connectivity=4)
    keep = np.unique(lab[seed & (m > 0)])
    keep = keep[keep > 0]
    region = np.isin(lab, keep).astype(np.uint8)
    # holes: background not reachable from the crop border
    inv = np.pad(1 - region, 1, constant_values=1)
    ff = inv.copy()
    cv2.floodFill(ff, None, (0, 0), 2)
    return (region > 0) | (ff[1:-1, 1:-1] == 1)

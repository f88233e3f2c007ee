"""Augmented training tiles of the orchard detector: a square crop of a frame at a jittered scale
(mostly centred on a boxed object), mirrored, apples recoloured towards ripeness, and the light
and camera of an orchard (photometric)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import cv2
import numpy as np

from training.detector.frames import Frame


@dataclass(frozen=True)
class TileGeom:
    """A tile: the frame's square [x0, x0+side) x [y0, y0+side), resized to ``tile``, mirrored if ``flip``."""

    frame: int
    x0: int
    y0: int
    side: int
    tile: int
    flip: bool

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        k = self.tile / self.side
        b = (np.asarray(boxes, np.float64).reshape(-1, 4) - [self.x0, self.y0, self.x0, self.y0]) * k
        if self.flip:
            b = np.stack([self.tile - b[:, 2], b[:, 1], self.tile - b[:, 0], b[:, 3]], 1)
        return b


def sample_geom(frames: Sequence[Frame], i: int, rng: np.random.Generator, cfg: dict[str, Any]) -> TileGeom:
    aug, scale = cfg["augment"], float(cfg["input"]["scale"])
    fr = frames[i]
    lo, hi = aug["scale_jitter"]
    s = scale * math.exp(rng.uniform(math.log(lo), math.log(hi)))
    tile = int(aug["tile"])
    side = max(8, int(round(tile / s)))
    h, w = fr.image.shape[:2]
    if len(fr.boxes) and rng.random() < aug["centre_on_object"]:
        b = fr.boxes[rng.integers(len(fr.boxes))]
        cx, cy = (b[0] + b[2]) / 2 + rng.uniform(-0.4, 0.4) * side, (b[1] + b[3]) / 2 + rng.uniform(-0.4, 0.4) * side
    else:
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    return TileGeom(i, int(round(cx - side / 2)), int(round(cy - side / 2)), side, tile, bool(rng.random() < aug["hflip"]))


def crop_resize(image: np.ndarray, g: TileGeom) -> np.ndarray:
    h, w = image.shape[:2]
    canvas = np.full((g.side, g.side, 3), 127, np.uint8)
    ax0, ay0, ax1, ay1 = max(g.x0, 0), max(g.y0, 0), min(g.x0 + g.side, w), min(g.y0 + g.side, h)
    if ax1 > ax0 and ay1 > ay0:
        canvas[ay0 - g.y0 : ay1 - g.y0, ax0 - g.x0 : ax1 - g.x0] = image[ay0:ay1, ax0:ax1]
    out = cv2.resize(canvas, (g.tile, g.tile), interpolation=cv2.INTER_AREA if g.side > g.tile else cv2.INTER_LINEAR)
    return out[:, ::-1].copy() if g.flip else out


def recolour_fruit(tile: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Ripening: a boxed apple's disc turned towards the red/pink of a ripe Fuji, with a blush that
    fades across the fruit in a random direction (the train dates hold green fruit only)."""
    out = tile.astype(np.float32)
    hsv = cv2.cvtColor(tile, cv2.COLOR_RGB2HSV).astype(np.float32)
    yy, xx = np.mgrid[0 : tile.shape[0], 0 : tile.shape[1]].astype(np.float32)
    for b in boxes:
        if rng.random() >= p:
            continue
        cx, cy, rx, ry = (b[0] + b[2]) / 2, (b[1] + b[3]) / 2, (b[2] - b[0]) / 2 * 0.95, (b[3] - b[1]) / 2 * 0.95
        if rx < 2 or ry < 2:
            continue
        d = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2
        disc = np.clip((1.0 - d) / 0.15, 0, 1)  # soft edge
        theta = rng.uniform(0, 2 * math.pi)
        grad = ((xx - cx) * math.cos(theta) + (yy - cy) * math.sin(theta)) / max(rx, ry)
        coverage = rng.uniform(0.3, 1.0)
        alpha = disc * np.clip(0.5 + grad * rng.uniform(0.5, 2.0) + (coverage - 0.5) * 2, 0, 1) * rng.uniform(0.6, 1.0)
        new = hsv.copy()
        new[..., 0] = (rng.uniform(-10, 8)) % 180  # OpenCV hue: red/pink
        new[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.9, 1.6) + rng.uniform(0, 40), 0, 255)
        new[..., 2] = np.clip(hsv[..., 2] * rng.uniform(0.7, 1.05), 0, 255)
        rgb = cv2.cvtColor(new.astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32)
        out = out * (1 - alpha[..., None]) + rgb * alpha[..., None]
    return np.clip(out, 0, 255).astype(np.uint8)


def photometric(tile: np.ndarray, rng: np.random.Generator, aug: dict[str, Any]) -> np.ndarray:
    """Brightness, contrast, saturation, hue, gamma, blur, sensor noise, JPEG: the light and the camera of an orchard."""
    hsv = cv2.cvtColor(tile, cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-1, 1) * aug["hue_deg"] / 2) % 180
    hsv[..., 1] *= 1 + rng.uniform(-1, 1) * aug["saturation"]
    x = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2RGB).astype(np.float32) / 255.0
    x = x * (1 + rng.uniform(-1, 1) * aug["brightness"])
    m = x.mean()
    x = (x - m) * (1 + rng.uniform(-1, 1) * aug["contrast"]) + m
    x = np.clip(x, 0, 1) ** math.exp(rng.uniform(-1, 1) * aug["gamma"])
    x = x * 255.0
    if rng.random() < aug["blur_p"]:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.3, aug["blur_sigma"]))
    if rng.random() < aug["noise_p"]:
        x = x + rng.normal(0, rng.uniform(0, aug["noise_sigma"]), x.shape)
    out = np.clip(x, 0, 255).astype(np.uint8)
    if rng.random() < aug["jpeg_p"]:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 95))])
        out = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    return out


def render_tile(frames: Sequence[Frame], g: TileGeom, rng: np.random.Generator, cfg: dict[str, Any]) -> np.ndarray:
    fr = frames[g.frame]
    tile = crop_resize(fr.image, g)
    aug = cfg["augment"]
    apple = cfg["data"]["classes"].index("apple") if "apple" in cfg["data"]["classes"] else -1
    if aug["recolour_p"] > 0 and apple >= 0:
        tile = recolour_fruit(tile, g.boxes(fr.boxes[fr.labels == apple]), rng, aug["recolour_p"])
    return photometric(tile, rng, aug)


def normalise(tiles_rgb: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, (x/255 - mean) / std."""
    m = np.asarray(cfg["model"]["mean"], np.float32)
    s = np.asarray(cfg["model"]["std"], np.float32)
    return ((tiles_rgb.astype(np.float32) / 255.0 - m) / s).transpose(0, 3, 1, 2).copy()

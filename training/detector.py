"""A fruit detector for orchard photos (apples and the tennis-ball size references hung in the canopy):
a centre-heatmap head (CenterNet, Zhou et al. 2019) on the pretrained EfficientNet-Lite0's stride-8
and stride-16 features.

    python -m training.detector --config training/configs/orchard_detector.yaml --out models/orchard-detector/0.1.0 \
        [--set train.epochs=10 ...]

Steps: config (saved with the artifact) -> frames, split by date -> augmented tiles, the frozen part of
the network run once on each (its outputs cached: the 2 CPU cores then only train the head and the
last blocks) -> train -> optional self-training round (confident unboxed apples ignored) -> threshold
per class on the val dates -> figures on the held-out dates -> ONNX (opset 17) with a parity check ->
metadata.json + README.md. inference/detector.py serves the result.

Split: ``tune_dates`` of bench/size_accuracy.py (the first half of the sorted dates) are the only
dates trained on or looked at; of them the last ``data.val_dates`` dates are val (threshold, design
choices), the rest train. The later dates are held out and scored once at the end.

Only tagged apples are boxed in the ecopom frames (about 12 per frame out of many more visible);
every tennis ball is boxed. An unboxed apple is therefore no negative: ``train.pseudo`` runs the
first model on the train frames and, for the second, takes the centres of confident apple detections
that match no box out of the loss (``ignore``). See the model card for what that means for the figures.

``model.backbone: tiny`` is a small random-init network trained end to end (tests only).
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch
import yaml
from torch import nn
from tqdm import tqdm

from inference.detector import INPUT_NAME, OUTPUT_NAMES, box_iou, decode, prepare

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "orchard_detector.yaml"

#: every key a config may set, with its default (a config file or --set overrides them)
DEFAULTS: dict[str, Any] = {
    "name": "orchard-detector",
    "version": "0.0.0",
    "seed": 0,
    "threads": 1,
    "data": {"kind": "ecopom", "root": "../shared/data/ecopom-apple-size", "classes": ["apple", "tennis_ball"], "val_dates": 2},
    "model": {
        "backbone": "efficientnet_lite0",
        "s8_block": 4,
        "last_block": 10,
        "tune_from": 8,
        "width": 64,
        "mean": [127.0 / 255.0] * 3,
        "std": [128.0 / 255.0] * 3,
    },
    "input": {"scale": 0.5, "pad_multiple": 32},
    "augment": {
        "tile": 256,
        "scale_jitter": [0.7, 1.7],
        "centre_on_object": 0.7,
        "hflip": 0.5,
        "brightness": 0.3,
        "contrast": 0.3,
        "saturation": 0.3,
        "hue_deg": 10.0,
        "gamma": 0.25,
        "blur_p": 0.3,
        "blur_sigma": 1.5,
        "noise_p": 0.3,
        "noise_sigma": 6.0,
        "jpeg_p": 0.3,
        "recolour_p": 0.5,
    },
    "train": {
        "tiles": 1600,
        "epochs": 30,
        "batch_size": 16,
        "lr": 2e-3,
        "backbone_lr": 2e-4,
        "weight_decay": 1e-4,
        "size_weight": 1.0,
        "offset_weight": 1.0,
        "max_objects": 64,
        "apple_neg_weight": 1.0,
        "pseudo": {"rounds": 1, "score": 0.3, "match_iou": 0.1, "as": "ignore", "cross_fit": 0, "report_round0": True},
    },
    "decode": {"min_score": 0.05, "nms_iou": 0.4, "class_agnostic_nms": True, "max_detections": 500},
    "thresholds": {"apple": {"rule": "recall", "target": 0.9}, "tennis_ball": {"rule": "f1"}},
    "eval": {"iou": 0.5},
}

STRIDE = 8


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in (over or {}).items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_config(path: Path | None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """DEFAULTS, then the YAML file, then ``key.sub=value`` overrides (values parsed as YAML)."""
    cfg = merge(DEFAULTS, yaml.safe_load(Path(path).read_text()) if path else {})
    for item in overrides:
        key, eq, raw = item.partition("=")
        if not eq:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(raw)
    return cfg


# ============================================================================================== data
@dataclass
class Frame:
    name: str
    date: str
    image: np.ndarray  # H x W x 3 uint8 RGB
    boxes: np.ndarray  # (N, 4) float xyxy, frame pixels
    labels: np.ndarray  # (N,) class index
    ignore: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # apple-channel boxes left out of the loss


def tune_dates(dates: Sequence[str]) -> list[str]:
    """The first half of the sorted dates, as bench/size_accuracy.py's ``tune_dates``."""
    ds = sorted(set(dates))
    return ds[: len(ds) // 2]


def split_dates(dates: Sequence[str], val_dates: int) -> dict[str, list[str]]:
    ds = sorted(set(dates))
    tune = tune_dates(ds)
    return {"train": tune[: len(tune) - val_dates], "val": tune[len(tune) - val_dates :], "held_out": [d for d in ds if d not in tune]}


def data_root(cfg: dict[str, Any]) -> Path:
    root = Path(cfg["data"]["root"])
    return root if root.is_absolute() else (REPO / root).resolve()


def load_ecopom(root: Path, classes: Sequence[str], dates: set[str] | None = None) -> list[Frame]:
    ann = json.loads((root / "annotations.json").read_text())
    frames = []
    for f in ann:
        if dates is not None and f["date"] not in dates:
            continue
        bgr = cv2.imread(str(root / f["image"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(root / f["image"])
        objs = [o for o in f["objects"] if o["kind"] in classes]
        boxes = np.array([[o["box"][0][0], o["box"][0][1], o["box"][1][0], o["box"][1][1]] for o in objs], np.float64).reshape(-1, 4)
        labels = np.array([classes.index(o["kind"]) for o in objs], np.int64)
        frames.append(Frame(f["image"], f["date"], cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), boxes, labels))
    return frames


def data_record(root: Path, splits: dict[str, list[str]]) -> dict[str, Any]:
    """What the artifact keeps of its data: sha256 of annotations.json and of every image of each split."""
    ann = json.loads((root / "annotations.json").read_text())
    files: dict[str, dict[str, str]] = {k: {} for k in splits}
    for f in ann:
        for k, ds in splits.items():
            if f["date"] in ds:
                files[k][f["image"]] = hashlib.sha256((root / f["image"]).read_bytes()).hexdigest()
    h = hashlib.sha256((root / "annotations.json").read_bytes())
    for k in sorted(files):
        for name in sorted(files[k]):
            h.update(f"{k}:{name}:{files[k][name]}\n".encode())
    return {
        "source": f"ecopom-apple-size ({root.name}; never copied into the repo)",
        "annotations_sha256": hashlib.sha256((root / "annotations.json").read_bytes()).hexdigest(),
        "sha256": h.hexdigest(),
        "split_rule": "by date: tune dates = first half of the sorted dates "
        "(bench/size_accuracy.tune_dates); of them the last data.val_dates dates are val, the rest train; later dates held out",
        "dates": splits,
        "frames": {k: sorted(v) for k, v in files.items()},
    }


# ======================================================================================= augmentation
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


# ============================================================================================ targets
def gaussian_sigma(w_cells: float, h_cells: float) -> float:
    return max(0.6, min(w_cells, h_cells) / 6.0)


def tile_targets(
    frame: Frame,
    g: TileGeom,
    n_classes: int,
    apple: int,
    max_objects: int,
    pseudo_as: str = "ignore",
    apple_neg_weight: float = 1.0,
    ball: int = -1,
) -> dict[str, np.ndarray]:
    """Centre heatmap (C, G, G), negative-loss weight (C, G, G), and up to ``max_objects`` regression
    targets (cell index, log box size in cells, sub-cell offset) for one tile. ``apple_neg_weight``
    scales the apple channel's negatives (most unboxed apples are no negatives), except on the tennis
    balls (class ``ball``), which stay full negatives of the apple channel."""
    grid = g.tile // STRIDE
    heat = np.zeros((n_classes, grid, grid), np.float32)
    negw = np.ones((n_classes, grid, grid), np.float32)
    if apple >= 0:
        negw[apple] = apple_neg_weight
    idx = np.zeros(max_objects, np.int64)
    wh = np.zeros((max_objects, 2), np.float32)
    off = np.zeros((max_objects, 2), np.float32)
    mask = np.zeros(max_objects, np.float32)
    yy, xx = np.mgrid[0:grid, 0:grid].astype(np.float32)
    objs = [(b, int(c), True) for b, c in zip(g.boxes(frame.boxes), frame.labels)]
    if pseudo_as == "positive":
        objs += [(b, apple, True) for b in g.boxes(frame.ignore)]
    n = 0
    for b, c, _ in objs:
        cx, cy = (b[0] + b[2]) / 2 / STRIDE, (b[1] + b[3]) / 2 / STRIDE
        w, h = (b[2] - b[0]) / STRIDE, (b[3] - b[1]) / STRIDE
        if not (0 <= cx < grid and 0 <= cy < grid) or w <= 0 or h <= 0:
            continue
        ix, iy = int(cx), int(cy)
        sig = gaussian_sigma(w, h)
        heat[c] = np.maximum(heat[c], np.exp(-((xx - ix) ** 2 + (yy - iy) ** 2) / (2 * sig * sig)))
        heat[c, iy, ix] = 1.0
        if n < max_objects:
            idx[n], wh[n], off[n], mask[n] = iy * grid + ix, (math.log(w), math.log(h)), (cx - ix, cy - iy), 1.0
            n += 1
    if apple >= 0 and ball >= 0 and apple_neg_weight != 1.0:
        for b in g.boxes(frame.boxes[frame.labels == ball]):
            cx, cy = (b[0] + b[2]) / 2 / STRIDE, (b[1] + b[3]) / 2 / STRIDE
            r = max(1.0, 0.5 * max(b[2] - b[0], b[3] - b[1]) / STRIDE)
            negw[apple][(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 1.0
    if pseudo_as == "ignore" and apple >= 0:
        for b in g.boxes(frame.ignore):
            cx, cy = (b[0] + b[2]) / 2 / STRIDE, (b[1] + b[3]) / 2 / STRIDE
            r = max(1.0, 0.5 * min(b[2] - b[0], b[3] - b[1]) / STRIDE)
            negw[apple][(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = 0.0
    return {"heat": heat, "negw": negw, "idx": idx, "wh": wh, "off": off, "mask": mask}


# ============================================================================================== model
def cbr(c_in: int, c_out: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class Lite0Features(nn.Module):
    """EfficientNet-Lite0 (training/efficientnet_lite.py, ImageNet weights) up to ``_blocks.last``:
    the output of ``_blocks.s8_block`` (stride 8) and of ``_blocks.last`` (stride 16). Blocks before
    ``tune_from`` are frozen (their outputs are what the training caches); the rest train with
    BatchNorm statistics kept."""

    def __init__(self, s8_block: int = 4, last_block: int = 10, tune_from: int = 8, pretrained: bool = True, input_size: int = 256) -> None:
        super().__init__()
        from training.efficientnet_lite import efficientnet_lite0

        net = efficientnet_lite0(1000, input_size, pretrained=pretrained)
        if not s8_block < tune_from <= last_block + 1:
            raise ValueError(f"need s8_block < tune_from <= last_block + 1, got {s8_block}, {tune_from}, {last_block}")
        self.s8_block, self.tune_from = s8_block, tune_from
        self._conv_stem, self._bn0, self.act = net._conv_stem, net._bn0, net.act
        self._blocks = nn.ModuleList(net._blocks[: last_block + 1])
        self.c8 = LITE0_CHANNELS[s8_block]
        self.c16 = LITE0_CHANNELS[last_block]
        for m in self.frozen_modules():
            for p in m.parameters():
                p.requires_grad_(False)

    def frozen_modules(self) -> list[nn.Module]:
        return [self._conv_stem, self._bn0, *self._blocks[: self.tune_from]]

    def frozen(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = self.act(self._bn0(self._conv_stem(x)))
        f8 = None
        for i, b in enumerate(self._blocks[: self.tune_from]):
            x = b(x)
            if i == self.s8_block:
                f8 = x
        return f8, x

    def trainable(self, f8: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for b in self._blocks[self.tune_from :]:
            x = b(x)
        return f8, x

    def train(self, mode: bool = True) -> "Lite0Features":
        super().train(False)  # BatchNorm statistics stay the pretrained ones (a light tuning)
        return self


#: output channels of each Lite0 block
LITE0_CHANNELS = [16, 24, 24, 40, 40, 80, 80, 80, 112, 112, 112, 192, 192, 192, 192, 320]


class TinyFeatures(nn.Module):
    """A small random-init network, trained end to end (tests): stride-8 and stride-16 maps."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        w = width
        self.s8 = nn.Sequential(
            cbr(3, w, 3), nn.MaxPool2d(2), cbr(w, w, 3), nn.MaxPool2d(2), cbr(w, 2 * w, 3), nn.MaxPool2d(2), cbr(2 * w, 2 * w, 3)
        )
        self.s16 = nn.Sequential(nn.MaxPool2d(2), cbr(2 * w, 4 * w, 3))
        self.c8, self.c16 = 2 * w, 4 * w

    def frozen(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (x,)

    def trainable(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f8 = self.s8(x)
        return f8, self.s16(f8)


class CentreHead(nn.Module):
    def __init__(self, c8: int, c16: int, width: int, n_classes: int) -> None:
        super().__init__()
        self.lat8, self.lat16 = cbr(c8, width, 1), cbr(c16, width, 1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.trunk = nn.Sequential(cbr(width, width, 3), cbr(width, width, 3))
        self.heat = nn.Sequential(cbr(width, width, 3), nn.Conv2d(width, n_classes, 1))
        self.size = nn.Conv2d(width, 2, 1)
        self.offset = nn.Conv2d(width, 2, 1)
        nn.init.constant_(self.heat[-1].bias, -2.19)  # prior 0.1: CenterNet's start

    def forward(self, f8: torch.Tensor, f16: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.trunk(self.lat8(f8) + self.up(self.lat16(f16)))
        return self.heat(x), self.size(x), self.offset(x)


class CentreNet(nn.Module):
    """Features -> (heat logits, log box size in cells, offset). ``frozen`` / ``rest`` split the
    forward where the training caches."""

    def __init__(self, features: nn.Module, n_classes: int, width: int) -> None:
        super().__init__()
        self.features = features
        self.head = CentreHead(features.c8, features.c16, width, n_classes)

    def frozen(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.features.frozen(x)

    def rest(self, *cached: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.head(*self.features.trainable(*cached))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.rest(*self.frozen(x))


class Exported(nn.Module):
    """What model.onnx holds: heatmap (sigmoid), size (network-input pixels), offset (cells)."""

    def __init__(self, net: CentreNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        heat, size, off = self.net(x)
        return torch.sigmoid(heat), torch.exp(size) * STRIDE, off


def build_model(cfg: dict[str, Any], pretrained: bool = True) -> CentreNet:
    m = cfg["model"]
    n = len(cfg["data"]["classes"])
    if m["backbone"] == "efficientnet_lite0":
        feats: nn.Module = Lite0Features(
            int(m["s8_block"]), int(m["last_block"]), int(m["tune_from"]), pretrained, int(cfg["augment"]["tile"])
        )
    elif m["backbone"] == "tiny":
        feats = TinyFeatures(int(m.get("tiny_width", 16)))
    else:
        raise ValueError(f"model.backbone must be efficientnet_lite0 or tiny, got {m['backbone']!r}")
    return CentreNet(feats, n, int(m["width"]))


# =============================================================================================== loss
def centre_loss(
    out: tuple[torch.Tensor, ...], t: dict[str, torch.Tensor], size_w: float, off_w: float
) -> tuple[torch.Tensor, dict[str, float]]:
    """CenterNet's penalty-reduced focal loss on the heatmaps (negatives weighted by ``negw``), L1 on
    log size and offset at the centres."""
    heat, size, off = out
    p = torch.sigmoid(heat).clamp(1e-4, 1 - 1e-4)
    gt = t["heat"]
    pos = gt.eq(1).float()
    pos_loss = torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = torch.log(1 - p) * p**2 * (1 - gt) ** 4 * (1 - pos) * t["negw"]
    n_pos = pos.sum().clamp(min=1)
    l_heat = -(pos_loss.sum() + neg_loss.sum()) / n_pos
    b, _, gh, gw = size.shape
    idx = t["idx"]
    mask = t["mask"][..., None]
    pred_wh = size.flatten(2).gather(2, idx[:, None, :].expand(b, 2, idx.shape[1])).transpose(1, 2)
    pred_off = off.flatten(2).gather(2, idx[:, None, :].expand(b, 2, idx.shape[1])).transpose(1, 2)
    n_obj = mask.sum().clamp(min=1)
    l_wh = (torch.abs(pred_wh - t["wh"]) * mask).sum() / n_obj / 2
    l_off = (torch.abs(pred_off - t["off"]) * mask).sum() / n_obj / 2
    total = l_heat + size_w * l_wh + off_w * l_off
    return total, {"heat": float(l_heat.detach()), "wh": float(l_wh.detach()), "off": float(l_off.detach())}


# =========================================================================================== training
@dataclass
class TileCache:
    geoms: list[TileGeom]
    inputs: list[torch.Tensor]  # the frozen part's outputs, float16, one tensor per output (N, ...)


def build_cache(
    model: CentreNet, frames: Sequence[Frame], cfg: dict[str, Any], rng: np.random.Generator, log: Callable[[str], None]
) -> TileCache:
    """Sample and render ``train.tiles`` augmented tiles and run the frozen part of the network on them once."""
    n = int(cfg["train"]["tiles"])
    # tiles are drawn over frames in turn, so every frame gives as many
    order = np.concatenate([rng.permutation(len(frames)) for _ in range(-(-n // len(frames)))])[:n]
    geoms = [sample_geom(frames, int(i), rng, cfg) for i in order]
    chunks: list[list[torch.Tensor]] = []
    model.eval()
    chunk = 32
    with torch.no_grad():
        for s in tqdm(range(0, n, chunk), desc="augmented tiles through the frozen layers", unit="chunk", file=sys.stderr):
            tiles = np.stack([render_tile(frames, g, rng, cfg) for g in geoms[s : s + chunk]])
            outs = model.frozen(torch.from_numpy(normalise(tiles, cfg)))
            chunks.append([o.half() for o in outs])
    inputs = [torch.cat([c[k] for c in chunks]) for k in range(len(chunks[0]))]
    log(f"cached {n} tiles: " + ", ".join(f"{tuple(t.shape)}" for t in inputs) + f" ({sum(t.numel() * 2 for t in inputs) / 2**20:.0f} MiB)")
    return TileCache(geoms, inputs)


def cache_targets(cache: TileCache, frames: Sequence[Frame], cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    classes = cfg["data"]["classes"]
    apple = classes.index("apple") if "apple" in classes else -1
    ball = classes.index("tennis_ball") if "tennis_ball" in classes else -1
    pseudo_as = cfg["train"]["pseudo"].get("as", "ignore")
    w = float(cfg["train"].get("apple_neg_weight", 1.0))
    ts = [tile_targets(frames[g.frame], g, len(classes), apple, int(cfg["train"]["max_objects"]), pseudo_as, w, ball) for g in cache.geoms]
    return {k: torch.from_numpy(np.stack([t[k] for t in ts])) for k in ts[0]}


def fit(
    model: CentreNet,
    cache: TileCache,
    targets: dict[str, torch.Tensor],
    cfg: dict[str, Any],
    seed: int,
    log: Callable[[str], None],
    desc: str = "train",
    subset: np.ndarray | None = None,
) -> list[dict[str, float]]:
    """Train the unfrozen part on the cached tiles (``subset``: only those tile indices)."""
    tr = cfg["train"]
    if subset is not None:
        sub = torch.from_numpy(np.asarray(subset, np.int64))
        cache = TileCache([cache.geoms[i] for i in subset], [t[sub] for t in cache.inputs])
        targets = {k: v[sub] for k, v in targets.items()}
    torch.manual_seed(seed)
    head_params = list(model.head.parameters())
    head_ids = {id(p) for p in head_params}
    body_params = [p for p in model.features.parameters() if p.requires_grad and id(p) not in head_ids]
    backbone_lr = float(tr["backbone_lr"]) if isinstance(model.features, Lite0Features) else float(tr["lr"])
    groups = [{"params": head_params, "lr": float(tr["lr"])}]
    if body_params:
        groups.append({"params": body_params, "lr": backbone_lr})
    opt = torch.optim.AdamW(groups, weight_decay=float(tr["weight_decay"]))
    n, bs, epochs = len(cache.geoms), int(tr["batch_size"]), int(tr["epochs"])
    steps = epochs * (-(-n // bs))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=[g["lr"] for g in groups], total_steps=steps, pct_start=0.1)
    g = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(epochs), desc=desc, unit="epoch", file=sys.stderr)
    for epoch in bar:
        model.train()
        perm = torch.randperm(n, generator=g)
        sums: dict[str, float] = {}
        for s in range(0, n, bs):
            ix = perm[s : s + bs]
            inputs = [t[ix].float() for t in cache.inputs]
            t = {k: v[ix] for k, v in targets.items()}
            loss, parts = centre_loss(model.rest(*inputs), t, float(tr["size_weight"]), float(tr["offset_weight"]))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            for k, v in {"loss": float(loss.detach()), **parts}.items():
                sums[k] = sums.get(k, 0.0) + v * len(ix)
        rec = {k: v / n for k, v in sums.items()}
        history.append({"epoch": epoch + 1, **{k: round(v, 4) for k, v in rec.items()}})
        bar.set_postfix(loss=f"{rec['loss']:.3f}", heat=f"{rec['heat']:.3f}")
    log(f"{desc}: last epoch " + ", ".join(f"{k} {v}" for k, v in history[-1].items()))
    model.eval()
    return history


# ========================================================================================= prediction
@dataclass
class FrameDetections:
    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def predict_frames(
    model: nn.Module, frames: Sequence[Frame], cfg: dict[str, Any], scale: float | None = None, desc: str = "detect"
) -> list[FrameDetections]:
    """Torch inference of whole frames, preprocessed and decoded as inference/detector.py does, at the
    low ``decode.min_score`` (the figures then sweep the threshold)."""
    model.eval()
    dec = cfg["decode"]
    scale = float(cfg["input"]["scale"]) if scale is None else scale
    n = len(cfg["data"]["classes"])
    out = []
    with torch.no_grad():
        for fr in tqdm(frames, desc=desc, unit="frame", file=sys.stderr, leave=False):
            prep = prepare(fr.image, scale, cfg["model"]["mean"], cfg["model"]["std"], int(cfg["input"]["pad_multiple"]))
            heat, size, off = (
                Exported(model)(torch.from_numpy(prep.tensor)) if isinstance(model, CentreNet) else model(torch.from_numpy(prep.tensor))
            )
            b, s, k = decode(
                heat[0].numpy(),
                size[0].numpy(),
                off[0].numpy(),
                STRIDE,
                prep.scale_xy,
                [float(dec["min_score"])] * n,
                float(dec["nms_iou"]),
                bool(dec["class_agnostic_nms"]),
                int(dec["max_detections"]),
                fr.image.shape[:2],
            )
            out.append(FrameDetections(b, s, k))
    return out


# ============================================================================================ metrics
def match(
    dets: Sequence[FrameDetections], frames: Sequence[Frame], c: int, iou: float
) -> tuple[np.ndarray, np.ndarray, int, list[tuple[np.ndarray, np.ndarray]]]:
    """Greedy matching by score within each frame: per detection of class ``c`` its score and whether it
    matches a box of class ``c`` (IoU >= iou, each box once); the number of boxes; per frame (scores, flags)."""
    scores, tp, per_frame = [], [], []
    n_gt = 0
    for d, fr in zip(dets, frames):
        gt = fr.boxes[fr.labels == c]
        n_gt += len(gt)
        sel = np.nonzero(d.classes == c)[0]
        sel = sel[np.argsort(-d.scores[sel], kind="stable")]
        used = np.zeros(len(gt), bool)
        flags = np.zeros(len(sel), bool)
        if len(gt) and len(sel):
            ious = box_iou(d.boxes[sel], gt)
            for j in range(len(sel)):
                cand = np.where(~used, ious[j], -1)
                best = int(np.argmax(cand))
                if cand[best] >= iou:
                    used[best], flags[j] = True, True
        scores.append(d.scores[sel])
        tp.append(flags)
        per_frame.append((d.scores[sel], flags))
    return np.concatenate(scores) if scores else np.zeros(0), np.concatenate(tp) if tp else np.zeros(0, bool), n_gt, per_frame


def average_precision(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """All-point interpolated AP (VOC 2010+) of one class."""
    if n_gt == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    tp = tp[order].astype(np.float64)
    ctp, cfp = np.cumsum(tp), np.cumsum(1 - tp)
    recall = ctp / n_gt
    precision = ctp / np.maximum(ctp + cfp, 1e-9)
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[1.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def at_threshold(scores: np.ndarray, tp: np.ndarray, n_gt: int, thr: float) -> dict[str, float]:
    keep = scores >= thr
    n_tp, n_det = int(tp[keep].sum()), int(keep.sum())
    return {
        "recall": n_tp / n_gt if n_gt else float("nan"),
        "precision": n_tp / n_det if n_det else float("nan"),
        "tp": n_tp,
        "detections": n_det,
        "boxes": int(n_gt),
    }


def choose_threshold(scores: np.ndarray, tp: np.ndarray, n_gt: int, rule: dict[str, Any], floor: float) -> tuple[float, str]:
    """A threshold at one of the detection scores. ``rule: f1``: the best F1 (ties: the lower); ``rule: recall, target: r``: the
    highest threshold keeping recall >= r (if never reached: the one with the most recall)."""
    cands = np.unique(scores[scores >= floor]) if (scores >= floor).any() else np.array([floor])  # thresholds at scores
    if rule["rule"] == "f1":
        best, best_f1 = floor, -1.0
        for t in cands:
            r = at_threshold(scores, tp, n_gt, t)
            p, rc = r["precision"], r["recall"]
            f1 = 0.0 if not (p == p and rc == rc) or p + rc == 0 else 2 * p * rc / (p + rc)
            if f1 > best_f1 + 1e-12:
                best, best_f1 = float(t), f1
        return best, f"best F1 on val ({best_f1:.3f})"
    if rule["rule"] == "recall":
        target = float(rule["target"])
        ok = [float(t) for t in cands if at_threshold(scores, tp, n_gt, t)["recall"] >= target]
        if ok:
            return max(ok), f"highest threshold with recall >= {target} of the val boxes"
        return floor, f"recall {target} never reached on val: the lowest threshold"
    raise ValueError(f"unknown threshold rule {rule!r}")


def evaluate(
    dets: Sequence[FrameDetections], frames: Sequence[Frame], cfg: dict[str, Any], thresholds: dict[str, float] | None = None
) -> dict[str, Any]:
    classes = cfg["data"]["classes"]
    out: dict[str, Any] = {"frames": len(frames)}
    iou = float(cfg["eval"]["iou"])
    for c, name in enumerate(classes):
        scores, tp, n_gt, per_frame = match(dets, frames, c, iou)
        rec: dict[str, Any] = {
            "ap50": average_precision(scores, tp, n_gt),
            "boxes": int(n_gt),
            "max_recall": float(tp.sum() / n_gt) if n_gt else float("nan"),
        }
        if thresholds is not None:
            thr = thresholds[name]
            rec.update({"threshold": thr, **at_threshold(scores, tp, n_gt, thr)})
            if name == "tennis_ball":
                holding = [i for i, fr in enumerate(frames) if (fr.labels == c).any()]
                found = [i for i in holding if (per_frame[i][1] & (per_frame[i][0] >= thr)).any()]
                rec["frames_holding"] = len(holding)
                rec["frames_found"] = len(found)
                rec["frames_found_share"] = len(found) / len(holding) if holding else float("nan")
        out[name] = rec
    return out


# ============================================================================================= export
def export(model: CentreNet, path: Path, probe: np.ndarray, opset: int = 17) -> dict[str, Any]:
    """ONNX with dynamic height and width (multiples of 32), checked against torch on ``probe``."""
    import onnxruntime as ort

    wrapped = Exported(model).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(
        wrapped,
        (torch.from_numpy(probe),),
        str(path),
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={INPUT_NAME: {2: "height", 3: "width"}, **{o: {2: "h", 3: "w"} for o in OUTPUT_NAMES}},
        opset_version=opset,
        dynamo=False,
    )
    with torch.no_grad():
        ref = [t.numpy() for t in wrapped(torch.from_numpy(probe))]
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: probe})
    diffs = {f"max_abs_diff_{n}": float(np.abs(r - o).max()) for n, r, o in zip(OUTPUT_NAMES, ref, got)}
    rec = {
        "opset": opset,
        "probe_shape": list(probe.shape),
        **diffs,
        "tolerance_heatmap": 1e-4,
        "passed": diffs["max_abs_diff_heatmap"] < 1e-4,
    }
    if not rec["passed"]:
        raise RuntimeError(f"ONNX export disagrees with torch on the heatmap: {rec}")
    return rec


def time_onnx(path: Path, image: np.ndarray, meta: dict[str, Any], repeats: int = 5) -> dict[str, float]:
    """Milliseconds per frame of inference/detector.OnnxDetector (1 thread), preprocessing and decoding included."""
    from inference.detector import OnnxDetector

    det = OnnxDetector(path, threads=1)
    det.detect(image)
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        det.detect(image)
        ts.append((time.perf_counter() - t) * 1000)
    return {
        "median_ms": float(np.median(ts)),
        "min_ms": float(np.min(ts)),
        "frame": list(image.shape[:2]),
        "threads": 1,
        "repeats": repeats,
    }


# =============================================================================================== run
def json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def pseudo_ignore(model: CentreNet, frames: Sequence[Frame], cfg: dict[str, Any]) -> int:
    """Confident apple detections on ``frames`` that match no box (of either class) become the
    frames' ``ignore`` boxes; returns how many."""
    ps = cfg["train"]["pseudo"]
    apple = cfg["data"]["classes"].index("apple")
    dets = predict_frames(model, frames, cfg, desc="self-training: detect unboxed apples")
    total = 0
    for fr, d in zip(frames, dets):
        sel = (d.classes == apple) & (d.scores >= float(ps["score"]))
        b = d.boxes[sel]
        if len(fr.boxes) and len(b):
            b = b[box_iou(b, fr.boxes).max(1) < float(ps["match_iou"])]
        fr.ignore = b
        total += len(b)
    return total


def train_detector(
    cfg: dict[str, Any],
    train_frames: Sequence[Frame],
    log: Callable[[str], None] = print,
    pretrained: bool = True,
    after_round: Callable[[int, CentreNet], dict[str, Any]] | None = None,
) -> tuple[CentreNet, dict[str, Any]]:
    """Cache the tiles, train, and (``train.pseudo.rounds``) train again with confident unboxed apples
    ignored. ``after_round(r, model)``: figures of each round's model (kept in ``info["rounds"]``)."""
    torch.set_num_threads(int(cfg.get("threads", 1)))
    seed = int(cfg["seed"])
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    model = build_model(cfg, pretrained)
    init_state = copy.deepcopy(model.state_dict())
    cache = build_cache(model, train_frames, cfg, rng, log)
    cache_s = time.perf_counter() - t0
    rounds = int(cfg["train"]["pseudo"].get("rounds", 0)) if "apple" in cfg["data"]["classes"] else 0
    folds = int(cfg["train"]["pseudo"].get("cross_fit", 0))
    # with cross-fitting, the model of round 0 proposes nothing: it is fitted only for its figures
    round0 = not (rounds and folds > 1) or bool(cfg["train"]["pseudo"].get("report_round0", True))
    history = {"round_0": fit(model, cache, cache_targets(cache, train_frames, cfg), cfg, seed, log, "train")} if round0 else {}
    eval_s = 0.0

    def judge(r: int) -> dict[str, Any]:
        nonlocal eval_s
        t = time.perf_counter()
        out = after_round(r, model) if after_round else {}
        eval_s += time.perf_counter() - t
        return out

    rounds_eval = {"round_0": judge(0)} if round0 else {}
    pseudo_counts = []
    for r in range(rounds):
        if folds > 1:
            # the unboxed apples of a frame are proposed by a model that never saw that frame: one fitted
            # on the other folds (dates dealt to folds in turn, so each fold spans the season)
            dates = sorted({f.date for f in train_frames})
            fold_of = {d: i % folds for i, d in enumerate(dates)}
            targets = cache_targets(cache, train_frames, cfg)
            found: list[np.ndarray] = [np.zeros((0, 4))] * len(train_frames)
            for k in range(folds):
                inside = [i for i, f in enumerate(train_frames) if fold_of[f.date] == k]
                subset = np.array([j for j, g in enumerate(cache.geoms) if fold_of[train_frames[g.frame].date] != k])
                model.load_state_dict(init_state)
                history[f"round_{r + 1}_fold_{k}"] = fit(
                    model, cache, targets, cfg, seed + 100 * (r + 1) + k, log, f"self-training {r + 1}: fold {k + 1}/{folds}", subset
                )
                held = [train_frames[i] for i in inside]
                pseudo_ignore(model, held, cfg)
                for i, f in zip(inside, held):
                    found[i] = f.ignore
            for f, b in zip(train_frames, found):
                f.ignore = b
            pseudo_counts.append(int(sum(len(b) for b in found)))
        else:
            pseudo_counts.append(pseudo_ignore(model, train_frames, cfg))
        log(
            f"self-training round {r + 1}: {pseudo_counts[-1]} unboxed apples (score >= {cfg['train']['pseudo']['score']}) on "
            f"{len(train_frames)} train frames left out of the loss"
        )
        model.load_state_dict(init_state)
        history[f"round_{r + 1}"] = fit(
            model, cache, cache_targets(cache, train_frames, cfg), cfg, seed + r + 1, log, f"train (self-training {r + 1})"
        )
        rounds_eval[f"round_{r + 1}"] = judge(r + 1)
    info = {
        "rounds": rounds_eval if after_round else {},
        "train_seconds": round(time.perf_counter() - t0 - eval_s, 1),
        "cache_seconds": round(cache_s, 1),
        "tiles": len(cache.geoms),
        "pseudo_ignored": pseudo_counts,
        "history": history,
    }
    return model, info


def artifact_metadata(
    cfg: dict[str, Any],
    thresholds: dict[str, float],
    rules: dict[str, str],
    metrics: dict[str, Any],
    parity: dict[str, Any],
    training_data: dict[str, Any],
    pretrained: dict[str, Any] | None,
    history: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """metadata.json of a detection artifact: what inference/detector.py reads (classes, preprocessing,
    decode, thresholds) and the record of how it was made."""
    dates = (training_data.get("dates") or {}).get("val")
    return {
        "name": cfg["name"],
        "version": str(cfg["version"]),
        "task": "detection",
        "architecture": f"centre-heatmap head on {cfg['model']['backbone']} (stride-{STRIDE} and stride-16 features)",
        "classes": list(cfg["data"]["classes"]),
        "input_name": INPUT_NAME,
        "outputs": {
            "heatmap": "(1, n_classes, H/8, W/8) sigmoid centre score per class",
            "size": "(1, 2, H/8, W/8) box width, height in network-input pixels",
            "offset": "(1, 2, H/8, W/8) centre's sub-cell position x, y in cells",
        },
        "preprocessing": {
            "mode": "resize",
            "scale": float(cfg["input"]["scale"]),
            "resize": "cv2 INTER_AREA (shrink) / INTER_LINEAR",
            "pad_multiple": int(cfg["input"]["pad_multiple"]),
            "pad": "bottom/right, zeros after normalisation",
            "stride": STRIDE,
            "layout": "NCHW",
            "colour": "RGB",
            "scale_pixels": "1/255",
            "mean": list(cfg["model"]["mean"]),
            "std": list(cfg["model"]["std"]),
        },
        "decode": {
            "peaks": "3x3 local maxima of each class heatmap at or above its threshold",
            "class_agnostic_nms": bool(cfg["decode"]["class_agnostic_nms"]),
            "max_detections": int(cfg["decode"]["max_detections"]),
        },
        "thresholds": {
            "score": {k: float(v) for k, v in thresholds.items()},
            "nms_iou": float(cfg["decode"]["nms_iou"]),
            "chosen_on": f"val dates {dates}" if dates else "given",
            "rules": rules,
        },
        "metrics": metrics,
        "parity": parity,
        "training_data": training_data,
        "pretrained": pretrained,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "code_version": _code_version(),
        "config": cfg,
        "history": history or {},
    }


def run(cfg: dict[str, Any], out_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    torch.set_num_threads(int(cfg.get("threads", 1)))
    classes = cfg["data"]["classes"]
    root = data_root(cfg)
    ann = json.loads((root / "annotations.json").read_text())
    splits = split_dates([f["date"] for f in ann], int(cfg["data"]["val_dates"]))
    log(f"dates: train {splits['train']}, val {splits['val']}, held out {splits['held_out']}")
    frames = {k: load_ecopom(root, classes, set(v)) for k, v in splits.items()}
    log(", ".join(f"{k} {len(v)} frames / {sum(len(f.boxes) for f in v)} boxes" for k, v in frames.items()))

    def after_round(r: int, m: CentreNet) -> dict[str, Any]:
        """AP50 and the most recall each round reaches (no threshold): the self-training's own measure."""
        rec = {}
        for split in ("val", "held_out"):
            ev = evaluate(predict_frames(m, frames[split], cfg, desc=f"round {r}: {split}"), frames[split], cfg)
            rec[split] = {n: {"ap50": ev[n]["ap50"], "max_recall": ev[n]["max_recall"]} for n in classes}
            log(f"round {r} {split}: " + "; ".join(f"{n} AP50 {ev[n]['ap50']:.3f} max recall {ev[n]['max_recall']:.3f}" for n in classes))
        return rec

    model, info = train_detector(cfg, frames["train"], log, after_round=after_round)
    log(f"trained in {info['train_seconds']} s (the figures of each round not counted)")

    dets_val = predict_frames(model, frames["val"], cfg, desc="val")
    thresholds, rules = {}, {}
    floor = float(cfg["decode"]["min_score"])
    for c, name in enumerate(classes):
        scores, tp, n_gt, _ = match(dets_val, frames["val"], c, float(cfg["eval"]["iou"]))
        thresholds[name], rules[name] = choose_threshold(scores, tp, n_gt, cfg["thresholds"][name], floor)
    log("thresholds (val): " + ", ".join(f"{k} {v:.3f} ({rules[k]})" for k, v in thresholds.items()))
    metrics = {
        "train": evaluate(predict_frames(model, frames["train"], cfg, desc="train frames"), frames["train"], cfg, thresholds),
        "val": evaluate(dets_val, frames["val"], cfg, thresholds),
    }
    dets_ho = predict_frames(model, frames["held_out"], cfg, desc="held-out")
    metrics["held_out"] = evaluate(dets_ho, frames["held_out"], cfg, thresholds)
    for split in ("val", "held_out"):
        log(
            f"{split}: "
            + "; ".join(
                f"{n} AP50 {metrics[split][n]['ap50']:.3f} recall {metrics[split][n]['recall']:.3f} "
                f"precision {metrics[split][n]['precision']:.3f}"
                for n in classes
            )
        )

    out_dir.mkdir(parents=True, exist_ok=True)
    probe = prepare(
        frames["held_out"][0].image,
        float(cfg["input"]["scale"]),
        cfg["model"]["mean"],
        cfg["model"]["std"],
        int(cfg["input"]["pad_multiple"]),
    ).tensor
    parity = export(model, out_dir / "model.onnx", probe)
    log(f"ONNX parity: heatmap max |diff| {parity['max_abs_diff_heatmap']:.2e}")
    (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    pretrained = None
    if cfg["model"]["backbone"] == "efficientnet_lite0":
        from training.efficientnet_lite import pretrained_file

        pretrained = pretrained_file().record()
    meta = artifact_metadata(
        cfg,
        thresholds,
        rules,
        {
            **metrics,
            "iou": float(cfg["eval"]["iou"]),
            "train_seconds": info["train_seconds"],
            "cache_seconds": info["cache_seconds"],
            "tiles": info["tiles"],
            "pseudo_ignored": info["pseudo_ignored"],
            "rounds": info["rounds"],
        },
        parity,
        data_record(root, splits),
        pretrained,
        info["history"],
    )
    (out_dir / "metadata.json").write_text(json.dumps(json_safe(meta), indent=2))
    meta["metrics"]["onnx_timing"] = time_onnx(out_dir, frames["held_out"][0].image, meta)
    log(f"ONNX Runtime, 1 thread: {meta['metrics']['onnx_timing']['median_ms']:.0f} ms per frame")
    (out_dir / "metadata.json").write_text(json.dumps(json_safe(meta), indent=2))
    return meta


def scale_sweep(model_dir: Path, scales: Sequence[float], threads: int = 1) -> dict[str, Any]:
    """The artifact through ONNX Runtime with the frame resized by each of ``scales`` instead of its own:
    AP50 per class on val and held-out dates, and ms per frame. A scale of 1.0 is what running
    full-resolution tiles would see (the graph takes any multiple of 32, so no tiling is needed)."""
    from inference.detector import OnnxDetector

    meta = json.loads((model_dir / "metadata.json").read_text())
    cfg = meta["config"]
    root = data_root(cfg)
    classes = meta["classes"]
    dates = meta["training_data"]["dates"]
    det = OnnxDetector(model_dir, threads=threads)
    det.thresholds = [float(cfg["decode"]["min_score"])] * len(classes)
    out: dict[str, Any] = {}
    for split in ("val", "held_out"):
        frames = load_ecopom(root, classes, set(dates[split]))
        for sc in scales:
            det.scale = float(sc)
            dets, ms = [], []
            for fr in tqdm(frames, desc=f"scale {sc}: {split}", unit="frame", file=sys.stderr, leave=False):
                t = time.perf_counter()
                ds = det.detect(fr.image)
                ms.append((time.perf_counter() - t) * 1000)
                dets.append(
                    FrameDetections(
                        np.array([d.box_xyxy for d in ds]).reshape(-1, 4),
                        np.array([d.score for d in ds]),
                        np.array([classes.index(d.kind) for d in ds], np.int64),
                    )
                )
            ev = evaluate(dets, frames, cfg)
            out.setdefault(str(sc), {})[split] = {
                **{c: {"ap50": ev[c]["ap50"], "max_recall": ev[c]["max_recall"]} for c in classes},
                "median_ms": float(np.median(ms)),
            }
    return out


# ============================================================================================== audit
def audit_sheet(model_dir: Path, cfg: dict[str, Any], sample: int = 120, seed: int = 0, threads: int = 1) -> dict[str, Any]:
    """Only tagged apples are boxed, so an apple detection on a held-out frame that matches no box may
    well be an untagged apple. Run the artifact (ONNX Runtime) on the held-out frames, collect those
    unmatched detections at the operating threshold, and draw a seeded sample of ``sample`` of them on
    a numbered contact sheet (``audit_sheet.png``) for a person to judge; ``audit.json`` lists them with
    ``verdict: null`` to fill in ("apple", "not_apple", "unsure"). Detections that overlap a tennis-ball
    box are counted as false positives outright."""
    from inference.detector import OnnxDetector

    meta = json.loads((model_dir / "metadata.json").read_text())
    root = data_root(cfg)
    classes = meta["classes"]
    frames = load_ecopom(root, classes, set(meta["training_data"]["dates"]["held_out"]))
    det = OnnxDetector(model_dir, threads=threads)
    apple, ball = classes.index("apple"), classes.index("tennis_ball")
    iou = float(cfg["eval"]["iou"])
    items, n_det, n_tp, n_on_ball = [], 0, 0, 0
    for fr in tqdm(frames, desc="audit: held-out frames", unit="frame", file=sys.stderr):
        ds = [d for d in det.detect(fr.image) if d.kind == "apple"]
        ds.sort(key=lambda d: -d.score)
        n_det += len(ds)
        gt = fr.boxes[fr.labels == apple]
        balls = fr.boxes[fr.labels == ball]
        used = np.zeros(len(gt), bool)
        for d in ds:
            b = np.array([d.box_xyxy])
            if len(gt):
                cand = np.where(~used, box_iou(b, gt)[0], -1)
                j = int(np.argmax(cand))
                if cand[j] >= iou:
                    used[j] = True
                    n_tp += 1
                    continue
            if len(balls) and box_iou(b, balls).max() >= 0.3:
                n_on_ball += 1
                continue
            items.append({"frame": fr.name, "box": [round(v, 1) for v in d.box_xyxy], "score": round(d.score, 4), "verdict": None})
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(items), size=min(sample, len(items)), replace=False).tolist()) if items else []
    sampled = [{"id": k, **items[i]} for k, i in enumerate(pick)]
    images = {fr.name: fr.image for fr in frames}
    cell, cols = 112, 12
    rows = -(-len(sampled) // cols) if sampled else 1
    sheet = np.full((rows * cell, cols * cell, 3), 255, np.uint8)
    for k, it in enumerate(sampled):
        x0, y0, x1, y1 = it["box"]
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(x1 - x0, y1 - y0) * 2.2
        g = TileGeom(0, int(cx - side / 2), int(cy - side / 2), max(8, int(side)), cell - 16, False)
        crop = crop_resize(images[it["frame"]], g)
        bb = g.boxes(np.array([it["box"]]))[0]
        cv2.rectangle(crop, (int(bb[0]), int(bb[1])), (int(bb[2]), int(bb[3])), (255, 255, 0), 1)
        r, c = divmod(k, cols)
        sheet[r * cell + 14 : r * cell + 14 + crop.shape[0], c * cell + 8 : c * cell + 8 + crop.shape[1]] = crop
        cv2.putText(sheet, str(k), (c * cell + 8, r * cell + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.imwrite(str(model_dir / "audit_sheet.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    rec = {
        "what": "held-out apple detections at the operating threshold that match no apple box (IoU < "
        f"{iou}) and overlap no tennis-ball box; a seeded sample judged by eye on audit_sheet.png",
        "threshold": det.thresholds[apple],
        "detections": n_det,
        "matched_boxes": n_tp,
        "on_tennis_balls": n_on_ball,
        "unmatched": len(items),
        "sample_seed": seed,
        "sampled": sampled,
    }
    (model_dir / "audit.json").write_text(json.dumps(rec, indent=1))
    return rec


def apply_audit(model_dir: Path) -> dict[str, Any]:
    """Fold the judged audit.json into metadata.json (metrics.held_out.apple.audit): the share of
    unmatched detections that are apples (Wilson 95 % interval over the sample) and the precision it implies."""
    from training.metrics import wilson_interval as wilson

    rec = json.loads((model_dir / "audit.json").read_text())
    verdicts = [it["verdict"] for it in rec["sampled"]]
    if any(v not in ("apple", "not_apple", "unsure") for v in verdicts):
        raise ValueError("audit.json: every sampled detection needs a verdict: apple, not_apple or unsure")
    n = len(verdicts)
    n_apple, n_not, n_unsure = verdicts.count("apple"), verdicts.count("not_apple"), verdicts.count("unsure")
    share, lo, hi = (n_apple / n, *wilson(n_apple, n)) if n else (float("nan"), float("nan"), float("nan"))
    det, tp, un = rec["detections"], rec["matched_boxes"], rec["unmatched"]

    def precision(sh: float) -> float:
        return (tp + sh * un) / det if det else float("nan")

    out = {
        "judged": n,
        "apple": n_apple,
        "not_apple": n_not,
        "unsure": n_unsure,
        "unmatched": un,
        "detections": det,
        "matched_boxes": tp,
        "on_tennis_balls": rec["on_tennis_balls"],
        "apple_share_of_unmatched": share,
        "apple_share_ci95": [lo, hi],
        "precision_audited": precision(share),
        "precision_audited_ci95": [precision(lo), precision(hi)],
        "rule": "precision = (detections matching an apple box + unmatched detections x share judged apple) / detections; "
        "unsure counted as not apple; detections on tennis balls count as false",
    }
    meta = json.loads((model_dir / "metadata.json").read_text())
    meta["metrics"]["held_out"]["apple"]["audit"] = out
    (model_dir / "metadata.json").write_text(json.dumps(json_safe(meta), indent=2))
    return out


def _code_version() -> str:
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=REPO).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "training", "inference"], capture_output=True, text=True, cwd=REPO
        ).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    ap.add_argument("--out", type=Path, help="artifact directory to train into (model.onnx, metadata.json, config.yaml, README.md)")
    ap.add_argument(
        "--audit",
        type=Path,
        metavar="MODEL_DIR",
        help="write audit_sheet.png + audit.json of an artifact's unmatched held-out apple detections",
    )
    ap.add_argument("--audit-sample", type=int, default=120)
    ap.add_argument("--apply-audit", type=Path, metavar="MODEL_DIR", help="fold the judged audit.json into metadata.json")
    ap.add_argument(
        "--sweep-scales",
        type=Path,
        metavar="MODEL_DIR",
        help="AP50 and ms per frame at other input scales (--scales); kept in metadata.json",
    )
    ap.add_argument("--scales", type=float, nargs="+", default=[0.375, 0.5, 0.625, 0.75, 1.0])
    ap.add_argument("--card", type=Path, metavar="MODEL_DIR", help="write README.md from metadata.json (and --notes)")
    ap.add_argument("--notes", type=Path, help="markdown added to the model card as it is")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    if args.audit:
        cfg = yaml.safe_load((args.audit / "config.yaml").read_text())
        rec = audit_sheet(args.audit, cfg, args.audit_sample)
        log(
            f"audit: {rec['detections']} apple detections, {rec['matched_boxes']} match a box, {rec['on_tennis_balls']} on tennis balls, "
            f"{rec['unmatched']} unmatched; {len(rec['sampled'])} sampled on {args.audit / 'audit_sheet.png'}"
        )
        return 0
    if args.sweep_scales:
        res = scale_sweep(args.sweep_scales, args.scales)
        for sc, r in res.items():
            log(
                f"scale {sc}: "
                + "; ".join(
                    f"{sp} "
                    + ", ".join(f"{c} AP50 {v['ap50']:.3f}" for c, v in r[sp].items() if c != "median_ms")
                    + f" ({r[sp]['median_ms']:.0f} ms)"
                    for sp in r
                )
            )
        meta_path = args.sweep_scales / "metadata.json"
        meta = json.loads(meta_path.read_text())
        meta["metrics"]["scale_sweep"] = res
        meta_path.write_text(json.dumps(json_safe(meta), indent=2))
        return 0
    if args.apply_audit:
        out = apply_audit(args.apply_audit)
        log(
            f"audited precision {out['precision_audited']:.3f} (95 % {out['precision_audited_ci95'][0]:.3f}-{out['precision_audited_ci95'][1]:.3f})"
        )
    if args.card:
        from training.detector_card import write_card

        write_card(args.card, args.notes)
        return 0
    if args.apply_audit:
        return 0
    if args.out is None:
        ap.error("--out is needed to train")
    run(cfg, args.out, log)
    write_card_safe(args.out, log)
    return 0


def write_card_safe(out_dir: Path, log: Callable[[str], None]) -> None:
    from training.detector_card import write_card

    write_card(out_dir, None)
    log(f"model card: {out_dir / 'README.md'}")


if __name__ == "__main__":
    raise SystemExit(main())

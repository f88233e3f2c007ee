"""Fruit colour statistics, Reinhard colour transfer and per-crop colour normalisation on model
crops (numpy + OpenCV, no torch).

One implementation for three users: training's colour-transfer augmentation
(``augment.colour_transfer_p``, via training/colour.py), the citrus source-bias check of
bench/citrus_eval.py, and the optional colour normalisation of a model's preprocessing
(``preprocessing.colour_normalise`` in an artifact's metadata.json), which
:func:`grader.defect.preprocess` applies in serving and training applies to its augmented crops.

All statistics are over the crop's **fruit pixels** only: the background that
:func:`grader.crop.crop_for_model` paints ``CROP_FILL_RGB`` is neither measured nor changed."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from .crop_fill import fruit_pixels

#: fewer fruit pixels than this: no colour statistics (the crop is left as it is)
MIN_FRUIT_PIXELS = 50

Stats = tuple[np.ndarray, np.ndarray]


def fruit_colour_stats(crop: np.ndarray, fruit: np.ndarray | None = None) -> Stats | None:
    """Lab mean and spread of a crop's fruit pixels (None for a crop with too little fruit).

    ``fruit`` is the fruit mask when the caller knows it (default: :func:`fruit_pixels`)."""
    fruit = fruit_pixels(crop) if fruit is None else fruit
    return _lab_stats(cv2.cvtColor(crop, cv2.COLOR_RGB2LAB), fruit)


def _lab_stats(lab: np.ndarray, fruit: np.ndarray) -> Stats | None:
    """Mean and (population) spread + 1e-3 of the 8-bit Lab pixels under ``fruit``, in one OpenCV pass."""
    mask = fruit.astype(np.uint8)
    if cv2.countNonZero(mask) < MIN_FRUIT_PIXELS:
        return None
    mu, sd = cv2.meanStdDev(lab, mask=mask)
    return mu.ravel().astype(np.float32), (sd.ravel() + 1e-3).astype(np.float32)


def mean_colour_stats(crops: Sequence[np.ndarray]) -> Stats:
    """The mean over crops of their fruit pixels' Lab mean and spread: a photo source's colour."""
    stats = [s for s in map(fruit_colour_stats, crops) if s is not None]
    return np.mean([m for m, _ in stats], 0), np.mean([sd for _, sd in stats], 0)


def colour_transfer(crop: np.ndarray, target: Stats | None, fruit: np.ndarray | None = None, min_std: float = 0.0) -> np.ndarray:
    """The crop's fruit pixels moved to another fruit's Lab mean and spread (Reinhard transfer): the
    photo's overall colour, exposure and saturation change, its local spots and texture stay. When
    the overall colour tells the photo's source (lab vs stock), this takes that cue away.

    ``fruit``: the fruit mask if known (default :func:`fruit_pixels`); ``min_std``: the crop's own
    spread is taken as at least this (Lab units of OpenCV's 8-bit Lab), so a nearly flat channel
    (a grey fruit's a and b) is not blown up into noise."""
    fruit = fruit_pixels(crop) if fruit is None else fruit
    lab8 = cv2.cvtColor(crop, cv2.COLOR_RGB2LAB)
    own = _lab_stats(lab8, fruit)
    if own is None or target is None:
        return crop
    # one affine map per Lab channel over the whole crop, the background put back afterwards
    gain = np.asarray(target[1], np.float32) / np.maximum(own[1], np.float32(min_std))
    lab = lab8.astype(np.float32) * gain + (np.asarray(target[0], np.float32) - own[0] * gain)
    out = cv2.cvtColor(np.clip(lab, 0, 255, out=lab).astype(np.uint8), cv2.COLOR_LAB2RGB)
    np.copyto(out, crop, where=~fruit[..., None])
    return out


# ----------------------------------------------------------------------------- model preprocessing
#: the one method of ``preprocessing.colour_normalise`` so far
REINHARD_LAB = "reinhard-lab"


@dataclass(frozen=True)
class ColourNormalise:
    """Per-crop colour normalisation of a model's preprocessing: every crop's fruit pixels get the
    fixed Lab mean and spread ``mean``/``std`` (a Reinhard transfer to constants), so the overall
    colour cast of a camera, a light or an apple variety carries no information to the model, while
    spots that depart from the fruit's own skin colour stay (darker stays darker).

    Applied on the crop at the model's input size, after resizing (serving,
    :func:`grader.defect.preprocess`) or after augmentation (training), just before the scaling to
    [0, 1] and the mean/std normalisation of the tensor."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    min_std: float = 1.0
    method: str = REINHARD_LAB

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ColourNormalise":
        method = str(d.get("method", REINHARD_LAB))
        if method != REINHARD_LAB:
            raise ValueError(f"colour_normalise.method must be {REINHARD_LAB!r}, got {method!r}")
        mean = tuple(float(x) for x in d["mean"])
        std = tuple(float(x) for x in d["std"])
        min_std = float(d.get("min_std", 1.0))
        if len(mean) != 3 or len(std) != 3 or not all(np.isfinite(mean + std)) or any(s <= 0 for s in std) or not min_std >= 0:
            raise ValueError("colour_normalise needs a Lab mean and std of 3 finite values each, std > 0, min_std >= 0")
        return cls(mean=mean, std=std, min_std=min_std, method=method)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "mean": list(self.mean),
            "std": list(self.std),
            "min_std": self.min_std,
            "space": "OpenCV 8-bit Lab (L, a, b in 0..255) of the fruit pixels (not CROP_FILL_RGB)",
            "applied": "per crop at the model's input size, after resize (serving) or augmentation (training)",
        }

    def apply(self, crop: np.ndarray, fruit: np.ndarray | None = None) -> np.ndarray:
        """The crop (RGB uint8) with its fruit pixels at the canonical Lab mean and spread; the
        background (outside ``fruit``, default :func:`fruit_pixels`) unchanged."""
        target = (np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32))
        return colour_transfer(crop, target, fruit, self.min_std)


def resized_fruit_mask(crop: np.ndarray, size: tuple[int, int], interpolation: int) -> np.ndarray:
    """The crop's fruit mask (:func:`fruit_pixels`) resized to ``size`` (w, h) as the crop is, a
    pixel counting as fruit where at least half of it was fruit."""
    mask = fruit_pixels(crop).astype(np.uint8) * 255
    return cv2.resize(mask, size, interpolation=interpolation) >= 128

"""The training config, parsed once: loading it with ``--set`` overrides, and the typed views every
step reads (classes, the defective ones, the segmentation the crops are cut with, colour and fruit-body
settings, the ModelSpec a run serves with)."""

from __future__ import annotations

import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from grader.commodities import get_commodity, load_commodities
from grader.defect import ModelSpec
from grader.segment import SegmentationParams
from training.colour import ColourNormalise

CLASSES = ["sound", "defective"]  # the default classes (model.classes in a config overrides them)


DEFAULT_CONFIG = Path(__file__).parent / "configs" / "apple_defect.yaml"


def load_config(path: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    cfg = yaml.safe_load(Path(path).read_text())
    for item in overrides or []:
        key, _, raw = item.partition("=")
        if not _:
            raise ValueError(f"override {item!r} must look like key.sub=value")
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            if node.get(p) is None:  # an absent key or one set to null (e.g. model.colour_normalise)
                node[p] = {}
            node = node[p]
        node[parts[-1]] = yaml.safe_load(raw)
    return cfg


def code_version() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def classes_of(cfg: dict[str, Any]) -> list[str]:
    """The model's classes: ``model.classes`` (default sound, defective)."""
    return list(cfg["model"].get("classes", CLASSES))


def defective_of(cfg: dict[str, Any]) -> list[str]:
    """The classes that make a fruit defective: ``model.defective_classes`` (default: all but sound)."""
    classes = classes_of(cfg)
    out = list(cfg["model"].get("defective_classes", [c for c in classes if c != "sound"]))
    if not out or not set(out) <= set(classes):
        raise ValueError(f"model.defective_classes {out} must be among model.classes {classes}")
    return out


def segmentation_of(cfg: dict[str, Any]) -> SegmentationParams | None:
    """The fruit finder's settings the training crops are cut with: ``data.segmentation: commodity``
    takes the commodity profile's (grader/commodities/<commodity>.toml: what the service measures
    that commodity with); ``colour`` (the default, what every model before it was trained on) the
    defaults, colour alone. None when they are the defaults."""
    how = cfg["data"].get("segmentation", "colour")
    if how == "colour":
        return None
    if how != "commodity":
        raise ValueError(f"data.segmentation must be 'colour' or 'commodity', got {how!r}")
    if len(cfg["data"].get("commodities") or [cfg.get("commodity")]) > 1:
        raise ValueError("data.segmentation: commodity needs one commodity per model (data.commodities names several)")
    params = get_commodity(load_commodities(), cfg.get("commodity", "apple")).segmentation()
    return None if params == SegmentationParams() else params


def crop_segmentation_record(params: SegmentationParams | None) -> dict[str, Any]:
    """``preprocessing.crop_segmentation`` of the metadata: the settings that differ from the defaults."""
    if params is None:
        return {}
    default = asdict(SegmentationParams())
    return {"crop_segmentation": {k: v for k, v in asdict(params).items() if v != default[k]}}


def colour_normalise_of(cfg: dict[str, Any]) -> ColourNormalise | None:
    """``model.colour_normalise`` of a config: None (absent, null or false: off), or the per-crop
    colour normalisation (grader.colour.ColourNormalise) that training and serving apply. The config
    may give only the method (``reinhard-lab``, alone or as ``{method: ...}``): :func:`resolve_colour_normalise`
    then fixes the canonical Lab mean and spread from the train crops before anything else runs."""
    raw = cfg["model"].get("colour_normalise")
    if raw is None or raw is False:
        return None
    if isinstance(raw, str):
        raw = {"method": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"model.colour_normalise must be null, a method name or a mapping, got {raw!r}")
    if raw.get("mean") is None or raw.get("std") is None:
        raise ValueError("model.colour_normalise has no mean/std yet: resolve_colour_normalise(cfg, train crops) first")
    return ColourNormalise.from_dict(raw)


def is_defective(labels: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """Class indices -> 1 for a defective class, 0 for sound."""
    classes = classes_of(cfg)
    return np.isin(labels, [classes.index(c) for c in defective_of(cfg)]).astype(int)


def spec_for(cfg: dict[str, Any], temperature: float = 1.0, threshold: float = 0.5, band: tuple[float, float] = (0.3, 0.7)) -> ModelSpec:
    m = cfg["model"]
    return ModelSpec(
        name=cfg["name"],
        version=str(cfg["version"]),
        classes=tuple(classes_of(cfg)),
        defective_classes=tuple(defective_of(cfg)),
        input_size=(int(m["input_size"]), int(m["input_size"])),
        mean=tuple(m["mean"]),
        std=tuple(m["std"]),
        temperature=temperature,
        threshold_defective=threshold,
        review_band=band,
        crop_margin_frac=float(m.get("crop_margin_frac", 0.08)),
        colour_normalise=colour_normalise_of(cfg),
        crop_segmentation=segmentation_of(cfg),
        fruit_body=fruit_body_of(cfg),
    )


def colour_keep_of(cfg: dict[str, Any]) -> list[str]:
    """``augment.colour_transfer_keep``: the classes whose crops keep their own colour under the
    colour transfer and never lend it (rot: the browning is the evidence); [] when absent."""
    keep = cfg["augment"].get("colour_transfer_keep") or []
    if isinstance(keep, str) or not isinstance(keep, list):
        raise ValueError(f"augment.colour_transfer_keep must be a list of class names, got {keep!r}")
    unknown = sorted(set(keep) - set(classes_of(cfg)))
    if unknown:
        raise ValueError(f"augment.colour_transfer_keep names {unknown}, not classes of this model ({classes_of(cfg)})")
    return list(keep)


def swa_of(cfg: dict[str, Any]) -> tuple[int, float]:
    """``train.swa`` of a config: (extra epochs, their constant learning rate); (0, 0.0) when off.

    Weight averaging (Izmailov et al., 2018): after the one-cycle schedule, ``epochs`` more epochs
    at the constant rate ``lr``, the weights at the end of each averaged; the average, with its
    BatchNorm statistics computed again on the train crops, is the model (no epoch is selected on val)."""
    raw = cfg["train"].get("swa")
    if raw is None:
        return 0, 0.0
    try:
        n, lr = int(raw["epochs"]), float(raw["lr"])
    except (TypeError, KeyError, ValueError) as exc:
        raise ValueError(f"train.swa must be null or {{epochs: N, lr: X}}, got {raw!r}") from exc
    if n < 1 or not 0.0 < lr < 1.0:
        raise ValueError(f"train.swa needs epochs >= 1 and 0 < lr < 1, got {raw!r}")
    return n, lr


def fruit_body_of(cfg: dict[str, Any]) -> float | None:
    """``model.fruit_body``: null (off) or the factor of grader.crop.fruit_body (1..3)."""
    raw = cfg["model"].get("fruit_body")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 1.0 <= float(raw) <= 3.0:
        raise ValueError(f"model.fruit_body must be null or a factor within 1..3, got {raw!r}")
    return float(raw)

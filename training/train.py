"""Train a defect model: args -> config saved with the artifact -> train -> evaluate -> export.

    grader train --config training/configs/apple_defect.yaml --out models/apple-defect/0.1.0
    grader train --set train.epochs=2 --set data.kind=synthetic --out /tmp/tiny

The artifact directory receives model.onnx, metadata.json, config.yaml (resolved), manifest.json
and metrics.json. Checkpoints go to --work-dir so an interrupted run resumes with --resume.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
import math
import os
import random
import subprocess
import time
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
import torch
import yaml
from torch import nn
from torchvision.transforms import v2 as T
from tqdm import tqdm

from datasets import citrus, fruitnet
from datasets.synthetic import random_fruit_image
from grader.commodities import get_commodity, load_commodities
from grader.defect import ModelSpec, energy, preprocess, softmax
from grader.measure import SegmentationParams, fruit_body
from training import distributed, explain, fruit_check, mixstyle, probe
from training.colour import ColourNormalise, colour_transfer, fruit_colour_stats, fruit_pixels, mean_colour_stats
from training.crops import crop_cache, group_crop_cache, load_rgb
from training.export import INPUT_NAME, OUTPUT_NAME, check_export, export_onnx, parity_record
from training.finetune import Phases
from training.metrics import auc, binary_report, expected_calibration_error, fit_temperature, pick_threshold
from training.models_registry import build_model, pretrained_record
from training.views import ViewAverage, add_views, check_views, view_names
from training.views import metadata_record as views_record

CLASSES = ["sound", "defective"]  # the default classes (model.classes in a config overrides them)
DEFAULT_CONFIG = Path(__file__).parent / "configs" / "apple_defect.yaml"


# ----------------------------------------------------------------------------- config
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
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, cwd=Path(__file__).parent).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


# ----------------------------------------------------------------------------- data
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


def load_data(cfg: dict[str, Any], work_dir: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[str]], list[dict[str, Any]], str]:
    """Crops, labels and sessions per split, the manifest items and the manifest hash."""
    d = cfg["data"]
    size = int(d.get("cache_size", 160))
    margin = float(cfg["model"].get("crop_margin_frac", 0.08))
    crops: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    sessions: dict[str, list[str]] = {}
    if d.get("kind", "fruitnet") == "synthetic":
        n = int(d.get("n", 64))
        items = []
        for split, base in (("train", 0), ("val", 10_000), ("test", 20_000)):
            imgs, ys = [], []
            for i in range(n if split == "train" else max(16, n // 4)):
                img, bad = random_fruit_image(base + i, size_px=size)
                imgs.append(img)
                ys.append(int(bad))
                items.append({"path": f"synthetic/{split}/{base + i}", "label": CLASSES[int(bad)], "session": split, "split": split, "sha256": ""})
            crops[split], labels[split], sessions[split] = np.stack(imgs), np.array(ys), [split] * len(ys)
        digest = "synthetic-" + str(n)
        return crops, labels, sessions, items, digest
    if d.get("kind") == "manifest":
        return load_manifest_data(Path(d["manifest"]), size, margin, work_dir, classes_of(cfg), segmentation_of(cfg))
    if d.get("kind") == "citrus":
        return add_extra_train(cfg, load_citrus_data(cfg, size, margin, work_dir), size, margin, work_dir)
    if d.get("extra_train") and d.get("kind", "fruitnet") != "fruitnet":
        raise ValueError(f"data.extra_train works with data.kind fruitnet or citrus, not {d.get('kind')!r}")
    return add_extra_train(cfg, load_fruitnet_data(cfg, size, margin, work_dir), size, margin, work_dir)


def load_fruitnet_data(cfg: dict[str, Any], size: int, margin: float, work_dir: Path):
    """FruitNet apples split by whole capture session (datasets/fruitnet.py), optionally with the
    train sessions' group photos cut into one crop per whole apple (``data.group_train``)."""
    d = cfg["data"]
    crops: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    sessions: dict[str, list[str]] = {}
    root = Path(d["root"])
    manifest = fruitnet.build_manifest(root, d["splits"], d.get("subset", "single"))
    digest = fruitnet.manifest_hash(manifest)
    params = segmentation_of(cfg)
    for split in d["splits"]:
        its = [it for it in manifest if it.split == split]
        crops[split] = crop_cache([root / it.path for it in its], size, margin, work_dir / "cache", params=params)
        labels[split] = np.array([CLASSES.index(it.label) for it in its])
        sessions[split] = [it.session for it in its]
    if d.get("group_train"):
        # every whole apple of the train sessions' group photos is one more training crop
        groups = fruitnet.group_items(root, d["splits"]["train"])
        manifest += groups
        digest = fruitnet.manifest_hash(manifest)
        extra, photo = group_crop_cache([root / it.path for it in groups], size, margin, work_dir / "cache")
        crops["train"] = np.concatenate([crops["train"], extra])
        labels["train"] = np.concatenate([labels["train"], [CLASSES.index(groups[i].label) for i in photo]]).astype(int)
        sessions["train"] = sessions["train"] + [groups[i].session for i in photo]
    return crops, labels, sessions, [it.__dict__ for it in manifest], digest


def load_citrus_data(cfg: dict[str, Any], size: int, margin: float, work_dir: Path):
    """Lemons or oranges (datasets/citrus.py): photos grouped by near-duplicate hash, whole groups per
    split. The "session" of an item is its source folder, so per-source figures come out of the same
    report; photos without a class in this model (empty frames) are left out of training."""
    d = cfg["data"]
    root = Path(d["root"])
    classes = classes_of(cfg)
    # one network for several commodities (data.commodities: [lemon, orange]) trains on each one's
    # manifest, split exactly as that commodity's own model is, so the test photos are the same
    manifest = [it for commodity in d.get("commodities") or [cfg["commodity"]] for it in citrus.build_manifest(
        root, commodity, seed=int(d.get("split_seed", cfg["seed"])), fractions=d.get("fractions"),
        max_bits=int(d.get("max_hash_bits", citrus.DEFAULT_MAX_BITS)), cache_dir=work_dir / "cache",
    )]
    crops: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    sessions: dict[str, list[str]] = {}
    params = segmentation_of(cfg)
    for split in citrus.SPLITS:
        its = [it for it in manifest if it.split == split and citrus.model_label(it, classes) is not None]
        crops[split] = crop_cache([root / it.path for it in its], size, margin, work_dir / "cache", params=params)
        labels[split] = np.array([classes.index(citrus.model_label(it, classes)) for it in its], dtype=int)
        sessions[split] = [it.source for it in its]
    return crops, labels, sessions, [asdict(it) for it in manifest], citrus.manifest_hash(manifest)


def extra_train_items(cfg: dict[str, Any], work_dir: Path) -> list[dict[str, Any]]:
    """The photos ``data.extra_train`` adds to the train split: other fruit's photos, each source's
    *train* split only (its own manifest's, so its val and test photos stay unseen), labelled in
    this model's classes. Each entry::

        {kind: citrus, commodity: lemon, root: ../shared/data}                 # lemons' train split
        {kind: fruitnet, sessions: ["20190809"], root: ../shared/data/fruitnet-apples}
        ... labels: {defective: rot}    # a source label -> a class of this model (else the label itself,
                                        # or "defective" for a binary model); a label with no class is left out
        ... group: apples               # the group the sampler and reports see (default: source or session)

    Items are manifest entries with the path relative to this model's ``data.root``, ``"extra": true``."""
    d = cfg["data"]
    entries = d.get("extra_train") or []
    if not isinstance(entries, list):
        raise ValueError(f"data.extra_train must be a list of sources, got {entries!r}")
    classes = classes_of(cfg)
    main_root = Path(d["root"]).resolve()
    own = set(d.get("commodities") or [cfg.get("commodity")]) if d.get("kind") == "citrus" else {"apple"}
    out: list[dict[str, Any]] = []
    for e in entries:
        kind, root = e.get("kind"), Path(e.get("root", d["root"]))
        mapping = dict(e.get("labels") or {})
        if kind == "citrus":
            commodity = e.get("commodity")
            if commodity not in citrus.FOLDERS:
                raise ValueError(f"data.extra_train: citrus commodity must be one of {sorted(citrus.FOLDERS)}, got {commodity!r}")
            if commodity in own:
                raise ValueError(f"data.extra_train: {commodity} is this model's own data already")
            items = [(it.path, it.label, it.source, it.sha256) for it in citrus.build_manifest(
                root, commodity, seed=int(e.get("split_seed", 7)), fractions=e.get("fractions"),
                max_bits=int(e.get("max_hash_bits", citrus.DEFAULT_MAX_BITS)), cache_dir=work_dir / "cache") if it.split == "train"]
        elif kind == "fruitnet":
            if "apple" in own:
                raise ValueError("data.extra_train: fruitnet apples are this model's own data already")
            if not e.get("sessions"):
                raise ValueError("data.extra_train: a fruitnet source names its sessions (e.g. the apple model's train sessions)")
            items = [(it.path, it.label, it.session, it.sha256) for it in fruitnet.build_manifest(root, {"train": list(e["sessions"])}, e.get("subset", "single"))]
        else:
            raise ValueError(f"data.extra_train: kind must be citrus or fruitnet, got {kind!r}")
        unknown = sorted(set(mapping.values()) - set(classes))
        if unknown:
            raise ValueError(f"data.extra_train labels map to {unknown}, not classes of this model ({classes})")
        for path, label, group, sha256 in items:  # hashes as the source's manifest took them
            cls = mapping.get(label) or citrus.model_label({"label": label}, classes)
            if cls is None:
                continue
            file = (root / path).resolve()
            out.append({"path": os.path.relpath(file, main_root), "label": cls, "session": str(e.get("group") or group),
                        "split": "train", "sha256": sha256, "extra": True, "source_label": label})
    return out


def add_extra_train(cfg: dict[str, Any], loaded, size: int, margin: float, work_dir: Path):
    """``loaded`` (crops, labels, sessions, manifest items, digest) with ``data.extra_train``'s
    photos added to train; the digest then covers them too."""
    crops, labels, sessions, manifest, digest = loaded
    extra = extra_train_items(cfg, work_dir)
    if not extra:
        return loaded
    classes = classes_of(cfg)
    root = Path(cfg["data"]["root"])
    crops["train"] = np.concatenate([crops["train"], crop_cache([root / it["path"] for it in extra], size, margin, work_dir / "cache",
                                                                  params=segmentation_of(cfg))])
    labels["train"] = np.concatenate([labels["train"], [classes.index(it["label"]) for it in extra]]).astype(int)
    sessions["train"] = sessions["train"] + [it["session"] for it in extra]
    h = hashlib.sha256(digest.encode())
    for it in sorted(extra, key=lambda i: i["path"]):
        h.update(f"{it['path']}\t{it['label']}\t{it['split']}\t{it['sha256']}\n".encode())
    return crops, labels, sessions, manifest + extra, h.hexdigest()


def load_manifest_data(path: Path, size: int, margin: float, work_dir: Path, classes: list[str] = CLASSES,
                       params: SegmentationParams | None = None):
    """A dataset written by `grader dataset build`: fruit crops from the line ("crop" items, used as
    they are) and whole photos of a merged base dataset ("image" items, cropped like FruitNet),
    labelled in the config's model classes."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the dataset first (grader dataset build --out DIR)")
    m = json.loads(path.read_text())
    unknown = sorted({it["label"] for it in m["items"]} - set(classes))
    if unknown:
        raise ValueError(f"{path} labels {unknown} are not classes of this model ({classes}): "
                                "build the dataset with --commodity of the model, or train with that commodity's config")
    root = path.parent
    crops: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    sessions: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        its = [it for it in m["items"] if it["split"] == split]
        if not its:
            raise FileNotFoundError(f"{path} has no {split} items: a dataset needs train, val and test splits "
                                    "(more lots, or --base to merge a base dataset)")
        photos = [it for it in its if it["kind"] == "image"]
        line = [it for it in its if it["kind"] == "crop"]
        parts = []
        if photos:
            parts.append(crop_cache([Path(it["path"]) for it in photos], size, margin, work_dir / "cache", params=params))
        if line:
            parts.append(np.stack([cv2.resize(load_rgb(root / it["path"]), (size, size), interpolation=cv2.INTER_AREA) for it in line]))
        ordered = photos + line
        crops[split] = np.concatenate(parts)
        labels[split] = np.array([classes.index(it["label"]) for it in ordered])
        sessions[split] = [it["session"] for it in ordered]
    return crops, labels, sessions, m["items"], m["sha256"]


def group_balanced_sampler(labels: np.ndarray, groups: list[str], seed: int) -> torch.utils.data.WeightedRandomSampler:
    """Draws training crops so that every (group, label) pair — a photo source's or capture
    session's sound fruit, its rot, … — comes up equally often, however many photos each has: a
    label that one source holds mostly cannot be learnt as that source's look."""
    keys = [f"{g}\t{y}" for g, y in zip(groups, labels)]
    size = Counter(keys)
    weights = torch.tensor([1.0 / size[k] for k in keys], dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(weights, num_samples=len(keys), replacement=True,
                                                  generator=torch.Generator().manual_seed(seed + 1))


def session_weighted_sampler(groups: list[str], weight: dict[str, float], seed: int) -> torch.utils.data.WeightedRandomSampler | None:
    """Draws training crops of the sessions (or sources) named in ``weight`` that many times as often
    as the others (``{"20200728": 4}``): more of the few photos where the labels share a look. A named
    session the train split does not hold (other data given on the command line) is ignored, with a
    warning; None (plain shuffling) when it holds none of them."""
    unknown = sorted(set(weight) - set(groups))
    if unknown:
        warnings.warn(f"train.session_weight names sessions not in train, ignored: {', '.join(unknown)}", stacklevel=2)
    if any(not (float(w) > 0) for w in weight.values()):
        raise ValueError(f"train.session_weight factors must be positive, got {weight}")
    if not set(weight) & set(groups):
        return None
    w = torch.tensor([float(weight.get(g, 1.0)) for g in groups], dtype=torch.double)
    return torch.utils.data.WeightedRandomSampler(w, num_samples=len(groups), replacement=True,
                                                  generator=torch.Generator().manual_seed(seed + 1))


# ----------------------------------------------------------------------------- colour normalisation
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


def resolve_colour_normalise(cfg: dict[str, Any], train_crops: np.ndarray) -> dict[str, Any]:
    """The config with ``model.colour_normalise`` complete: a method without a Lab mean and spread
    gets the mean over the train crops of their fruit pixels' Lab mean and spread (a fixed target
    written into the artifact's config.yaml and metadata.json, so every later crop, in training and
    in serving, is mapped to the same constants)."""
    raw = cfg["model"].get("colour_normalise")
    if raw is None or raw is False:
        return cfg
    raw = {"method": raw} if isinstance(raw, str) else dict(raw)
    if raw.get("mean") is None or raw.get("std") is None:
        mu, sd = mean_colour_stats(list(train_crops))
        raw["mean"], raw["std"] = [round(float(v), 3) for v in mu], [round(float(v), 3) for v in sd]
        raw.setdefault("fitted_on", f"train crops ({len(train_crops)}): mean of their fruit pixels' Lab mean and spread")
    raw.setdefault("min_std", 1.0)
    cfg["model"]["colour_normalise"] = raw
    colour_normalise_of(cfg)  # valid
    return cfg


class CropDataset(torch.utils.data.Dataset):
    """Training crops. With ``colour_transfer_p`` > 0, that share of the crops is given the fruit
    colour statistics of another random training crop (see :func:`colour_transfer`). A
    :class:`NormalisingTransform` also gets each crop's fruit mask, to normalise its colour after
    the augmentation."""

    def __init__(self, crops: np.ndarray, labels: np.ndarray, transform: T.Transform, colour_transfer_p: float = 0.0, seed: int = 0,
                 keep_colour: np.ndarray | None = None) -> None:
        self.crops, self.labels, self.transform = crops, labels, transform
        self.colour_transfer_p = colour_transfer_p
        self.rng = np.random.default_rng(seed)
        self.stats = [fruit_colour_stats(c) for c in crops] if colour_transfer_p > 0 else []
        # crops whose colour is evidence of their class (augment.colour_transfer_keep) neither take
        # another crop's colour nor lend theirs
        self.keep = np.zeros(len(crops), bool) if keep_colour is None else np.asarray(keep_colour, bool)
        self.donors = np.flatnonzero(~self.keep)

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        crop = self.crops[i]
        fruit = fruit_pixels(crop) if isinstance(self.transform, NormalisingTransform) else None  # before the transfer
        if self.colour_transfer_p > 0 and not self.keep[i] and len(self.donors) and self.rng.random() < self.colour_transfer_p:
            crop = colour_transfer(crop, self.stats[int(self.donors[self.rng.integers(len(self.donors))])])
        x = torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1)  # uint8 CHW
        if fruit is not None:
            return self.transform(x, fruit), int(self.labels[i])
        return self.transform(x), int(self.labels[i])


def augment_steps(cfg: dict[str, Any]) -> tuple[list[T.Transform], list[T.Transform], list[T.Transform]]:
    """The training transforms in three groups, applied in this order: geometric (crop, flips,
    rotation), colour (jitter, hue shift, grey, blur), and the tensor scaling and normalisation."""
    a, m = cfg["augment"], cfg["model"]
    size = int(m["input_size"])
    geometric = [
        T.RandomResizedCrop(size, scale=tuple(a["scale"]), ratio=(0.85, 1.18), antialias=True),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomRotation(float(a["rotation_deg"])),
    ]
    colour = [
        T.ColorJitter(brightness=a["brightness"], contrast=a["contrast"], saturation=a["saturation"], hue=a["hue"]),
        T.RandomApply([T.ColorJitter(hue=0.5)], p=float(a.get("hue_shift_p", 0.0))),
        T.RandomGrayscale(p=float(a.get("grayscale_p", 0.0))),
        T.RandomApply([T.GaussianBlur(5, sigma=(0.1, 1.5))], p=float(a["blur_p"])),
    ]
    scale = [T.ToDtype(torch.float32, scale=True), T.Normalize(mean=m["mean"], std=m["std"])]
    if not augmenting(cfg):  # the crop only resized to the input size: no random draws at all
        geometric, colour = [T.Resize((size, size), antialias=True)], [T.Identity()]
    return geometric, colour, scale


def augmenting(cfg: dict[str, Any]) -> bool:
    """``augment.enabled`` (default true): false trains on the crops as they are, resized to the input
    size, without any random step (geometric, colour, colour transfer), e.g. to compare runs exactly."""
    on = cfg["augment"].get("enabled", True)
    if not isinstance(on, bool):
        raise ValueError(f"augment.enabled must be true or false, got {on!r}")
    return on


class NormalisingTransform:
    """The training transforms with the model's colour normalisation last, as serving applies it
    (grader.defect.preprocess): the fruit mask rides along the geometric steps as a fourth channel
    (rotated-in corners are not fruit), the colour steps change only the RGB, then the fruit pixels
    of the augmented crop get the canonical Lab mean and spread, then scaling and normalisation."""

    def __init__(self, cfg: dict[str, Any], norm: ColourNormalise) -> None:
        geometric, colour, scale = augment_steps(cfg)
        self.geometric, self.colour, self.scale = T.Compose(geometric), T.Compose(colour), T.Compose(scale)
        self.norm = norm

    def __call__(self, x: torch.Tensor, fruit: np.ndarray) -> torch.Tensor:
        mask = torch.from_numpy(fruit.astype(np.uint8) * 255)[None]
        x4 = self.geometric(torch.cat([x, mask]))
        rgb, fruit_now = self.colour(x4[:3]), (x4[3] >= 128).numpy()
        out = self.norm.apply(np.ascontiguousarray(rgb.permute(1, 2, 0).numpy()), fruit_now)
        return self.scale(torch.from_numpy(out).permute(2, 0, 1))


def train_transform(cfg: dict[str, Any]) -> T.Transform | NormalisingTransform:
    norm = colour_normalise_of(cfg)
    if norm is not None:
        return NormalisingTransform(cfg, norm)
    geometric, colour, scale = augment_steps(cfg)
    return T.Compose(geometric + colour + scale)


# ----------------------------------------------------------------------------- loop
def predict_logits(model: nn.Module, batch: np.ndarray, bs: int = 128) -> np.ndarray:
    model.eval()
    outs = []
    device = next(model.parameters()).device  # a GPU under torchrun (training/distributed.py)
    with torch.no_grad():
        for i in range(0, len(batch), bs):
            outs.append(model(torch.from_numpy(batch[i : i + bs]).to(device)).cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, len(CLASSES)), np.float32)


def set_bn_momentum(model: nn.Module, momentum: float) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = momentum


def set_dropout(model: nn.Module, p: float) -> None:
    """``model.dropout``: every dropout layer's probability set to ``p`` (0: off)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"model.dropout must be within [0, 1), got {p}")
    for m in model.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = p


def is_defective(labels: np.ndarray, cfg: dict[str, Any]) -> np.ndarray:
    """Class indices -> 1 for a defective class, 0 for sound."""
    classes = classes_of(cfg)
    return np.isin(labels, [classes.index(c) for c in defective_of(cfg)]).astype(int)


def spec_for(cfg: dict[str, Any], temperature: float = 1.0, threshold: float = 0.5, band: tuple[float, float] = (0.3, 0.7)) -> ModelSpec:
    m = cfg["model"]
    return ModelSpec(
        name=cfg["name"], version=str(cfg["version"]), classes=tuple(classes_of(cfg)), defective_classes=tuple(defective_of(cfg)),
        input_size=(int(m["input_size"]), int(m["input_size"])), mean=tuple(m["mean"]), std=tuple(m["std"]),
        temperature=temperature, threshold_defective=threshold, review_band=band, crop_margin_frac=float(m.get("crop_margin_frac", 0.08)),
        colour_normalise=colour_normalise_of(cfg), crop_segmentation=segmentation_of(cfg), fruit_body=fruit_body_of(cfg),
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
    """``model.fruit_body``: null (off) or the factor of grader.measure.fruit_body (1..3)."""
    raw = cfg["model"].get("fruit_body")
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 1.0 <= float(raw) <= 3.0:
        raise ValueError(f"model.fruit_body must be null or a factor within 1..3, got {raw!r}")
    return float(raw)


def run(cfg: dict[str, Any], out_dir: Path, work_dir: Path, resume: bool = False, report_split: str = "test") -> dict[str, Any]:
    """Train, calibrate on val, evaluate and export into ``out_dir``; the metadata. The figures
    printed at the end are ``report_split``'s ("val" keeps the test figures out of sight while
    choosing between candidates; metadata.json records both either way)."""
    if report_split not in ("val", "test"):
        raise ValueError(f"report_split must be val or test, got {report_split!r}")
    t_start = time.time()
    view_names(int(cfg["model"].get("test_time_views", 1)))  # a bad count fails now, not after training
    colour_keep_of(cfg), swa_of(cfg), fruit_body_of(cfg)  # and bad settings of these before the crops are made
    seed_everything(int(cfg["seed"]))
    torch.set_num_threads(int(cfg["train"].get("num_threads", 2)))
    ddp = distributed.setup()  # one process, or one of several under torchrun: only rank 0 writes files
    out_dir.mkdir(parents=True, exist_ok=True)
    work_dir.mkdir(parents=True, exist_ok=True)
    if ddp.main:
        (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))

    with ddp.main_first():  # rank 0 cuts and caches the crops, the others read them
        crops, labels, sessions, manifest, digest = load_data(cfg, work_dir)
    if cfg["model"].get("colour_normalise") not in (None, False):
        cfg = resolve_colour_normalise(cfg, crops["train"])  # its canonical colour, fixed before anything uses it
        if ddp.main:
            (out_dir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    if ddp.main:
        (out_dir / "manifest.json").write_text(json.dumps({"sha256": digest, "items": manifest}, indent=0))
    if (body := fruit_body_of(cfg)) is not None:  # the train crops as preprocess() will give every other crop
        crops["train"] = np.stack([fruit_body(c, body) for c in crops["train"]])
    spec0 = spec_for(cfg)
    eval_batches = {s: preprocess(list(crops[s]), spec0) for s in crops if s != "train"}

    classes = classes_of(cfg)
    model = build_model(cfg["model"]["arch"], len(classes), int(cfg["model"]["input_size"]))
    method = cfg["train"].get("method", "finetune")
    if method == "linear_probe":
        return run_linear_probe(cfg, model, crops, labels, sessions, eval_batches, digest, out_dir, t_start, report_split, ddp)
    if method != "finetune":
        raise ValueError(f"train.method must be finetune or linear_probe, got {method!r}")
    phases = Phases(model, cfg)  # which weights train in which epoch (training/finetune.py)
    style_hooks = mixstyle.attach(model, cfg["model"].get("mixstyle"))  # training only; removed before export
    if cfg["model"].get("bn_momentum") is not None:
        # torchvision's MobileNetV3 keeps BatchNorm running statistics with momentum 0.01: with a few
        # hundred steps in all, evaluation would run on stale statistics far from the weights'
        set_bn_momentum(model, float(cfg["model"]["bn_momentum"]))
    if cfg["model"].get("dropout") is not None:
        set_dropout(model, float(cfg["model"]["dropout"]))
    net = ddp.wrap(model, int(cfg["seed"]), frozen_phases=phases.frozen_ever)  # DistributedDataParallel under torchrun; `model` is what is validated and exported
    tr = cfg["train"]
    sampler = group_balanced_sampler(labels["train"], sessions["train"], int(cfg["seed"])) if tr.get("balance") == "group_label" else None
    if tr.get("balance") not in (None, "group_label"):
        raise ValueError(f"train.balance must be null or group_label, got {tr.get('balance')!r}")
    if tr.get("session_weight"):
        if sampler is not None:
            raise ValueError("train.session_weight and train.balance cannot both be set")
        sampler = session_weighted_sampler(sessions["train"], tr["session_weight"], int(cfg["seed"]))
    # train.batch_size is the global batch: under torchrun every process takes its slice of it
    loader = ddp.data_loader(
        CropDataset(crops["train"], labels["train"], train_transform(cfg), float(cfg["augment"].get("colour_transfer_p", 0.0)) if augmenting(cfg) else 0.0,
                    int(cfg["seed"]) + ddp.rank, keep_colour=np.isin(labels["train"], [classes.index(c) for c in colour_keep_of(cfg)])),
        batch_size=int(tr["batch_size"]), shuffle=sampler is None, sampler=sampler, drop_last=len(crops["train"]) > int(tr["batch_size"]),
        generator=torch.Generator().manual_seed(int(cfg["seed"])),
    )
    counts = np.bincount(labels["train"], minlength=len(classes)).astype(np.float32)
    # with a sampler (train.balance or train.session_weight) the batches' mix of classes is the sampler's and
    # the loss weighs every crop alike; without one, rarer classes weigh more
    class_weight = None if sampler is not None else torch.tensor(counts.sum() / np.maximum(counts, 1) / len(classes))
    criterion = ddp.criterion(nn.CrossEntropyLoss(weight=class_weight, label_smoothing=float(tr.get("label_smoothing", 0.0))))
    opt = torch.optim.AdamW(model.parameters(), lr=float(tr["lr"]), weight_decay=float(tr["weight_decay"]))
    epochs = int(tr["epochs"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=float(tr["lr"]), total_steps=max(1, epochs * len(loader)), pct_start=0.15)

    swa_epochs, swa_lr = swa_of(cfg)
    if swa_epochs and style_hooks:
        raise ValueError("train.swa and model.mixstyle cannot both be set (the averaged copy would mix styles while its BatchNorm statistics are computed)")
    swa_model = torch.optim.swa_utils.AveragedModel(model) if swa_epochs else None
    ckpt_path = work_dir / "checkpoint.pt"
    start_epoch, best, earlier_seconds = 0, {"score": -1.0, "state": copy.deepcopy(model.state_dict()), "epoch": -1}, 0.0
    history: list[dict[str, float]] = []
    if resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, weights_only=False, map_location=ddp.device)
        model.load_state_dict(ck["model"]), opt.load_state_dict(ck["opt"]), sched.load_state_dict(ck["sched"])
        start_epoch, best, history = ck["epoch"] + 1, ck["best"], ck["history"]
        if swa_model is not None and ck.get("swa") is not None:
            swa_model.load_state_dict(ck["swa"])
        earlier_seconds = float(ck.get("elapsed_seconds", 0.0))
        torch.set_rng_state(ck["rng"])
        if ddp.main:
            print(f"resumed from {ckpt_path} at epoch {start_epoch}")

    total_epochs = epochs + swa_epochs
    for epoch in range(start_epoch, total_epochs):
        in_swa = epoch >= epochs  # past the schedule: a constant rate, the weights averaged after each epoch
        if in_swa:
            for g in opt.param_groups:
                g["lr"] = swa_lr
        model.train()
        phase = phases.apply(epoch)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{total_epochs}" + (" (averaged)" if in_swa else ""), unit="batch", leave=False, disable=not ddp.main)
        total, n = 0.0, 0
        for x, y in bar:
            x, y = x.to(ddp.device), y.to(ddp.device)
            opt.zero_grad(set_to_none=True)
            loss = criterion(net(x), y)
            loss.backward()
            opt.step()
            if not in_swa:
                sched.step()
            total, n = total + loss.item() * len(y), n + len(y)
            bar.set_postfix(loss=f"{total / n:.4f}")
        if in_swa:
            swa_model.update_parameters(model)
        if not ddp.main:  # rank 0 alone validates, selects and checkpoints
            continue
        val_logits = predict_logits(model, eval_batches["val"])
        val = binary_report(is_defective(labels["val"], cfg), _scores(val_logits, 1.0, cfg), 0.5)
        entry = {"epoch": epoch + 1, "phase": phase, "loss": total / max(n, 1), "val_balanced_accuracy": val["balanced_accuracy"], "val_auc": val["auc"]}
        # model selection on val AUC of sound vs defective (threshold-free), ties broken by later
        # epochs; a model that also tells defect types apart is selected on the mean of that AUC and
        # its balanced accuracy over the types of the defective fruit
        score = val["auc"]
        if len(defective_of(cfg)) > 1:
            entry["val_type_balanced_accuracy"] = type_report(labels["val"], val_logits, cfg)["balanced_accuracy"]
            score = (val["auc"] + entry["val_type_balanced_accuracy"]) / 2
        collapsed = outputs_collapsed(val_logits)
        if collapsed:
            entry["collapsed"] = True
        if in_swa:
            entry["averaged"] = True  # the figures are of this epoch's weights, not of the average
        history.append(entry)
        if not in_swa and not collapsed and score >= best["score"]:
            best = {"score": score, "state": copy.deepcopy(model.state_dict()), "epoch": epoch + 1}
        extra = f" type bal.acc {entry['val_type_balanced_accuracy']:.3f}" if "val_type_balanced_accuracy" in entry else ""
        if collapsed:
            extra += " (outputs constant or not finite on val: not a candidate)"
        print(f"epoch {epoch + 1}/{total_epochs} loss {total / max(n, 1):.4f} val bal.acc {val['balanced_accuracy']:.3f} auc {val['auc']:.3f}{extra} ({time.time() - t_start:.0f}s)")
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "epoch": epoch, "best": best, "history": history, "rng": torch.get_rng_state(), "elapsed_seconds": earlier_seconds + time.time() - t_start,
                    "swa": None if swa_model is None else swa_model.state_dict()}, ckpt_path)

    if swa_model is not None:  # (under torchrun every process takes part: BatchNorm is synchronised)
        torch.optim.swa_utils.update_bn(loader, swa_model, device=ddp.device)
    model = ddp.unwrap(model)  # under torchrun: all meet, the process group ends, plain BatchNorm on the CPU
    if not ddp.main:
        return {}
    if swa_model is not None:
        # the average of the last swa_epochs epochs' weights is the model, not a selected epoch;
        # BatchNorm's running statistics are computed again for the averaged weights on the train crops
        # (above, before the processes parted)
        model.load_state_dict(swa_model.module.state_dict())
        val_logits = predict_logits(model, eval_batches["val"])
        if outputs_collapsed(val_logits):
            raise TrainingFailed("the averaged weights give constant or non-finite val outputs: try a lower train.swa.lr")
        val = binary_report(is_defective(labels["val"], cfg), _scores(val_logits, 1.0, cfg), 0.5)
        history.append({"epoch": total_epochs, "averaged_model": True, "val_balanced_accuracy": val["balanced_accuracy"], "val_auc": val["auc"]})
        print(f"weights of epochs {epochs + 1}-{total_epochs} averaged: val bal.acc {val['balanced_accuracy']:.3f} auc {val['auc']:.3f}")
        for h in style_hooks:
            h.remove()
        torch.save(model.state_dict(), work_dir / "best.pt")
        return finish(cfg, model, out_dir, eval_batches, labels, sessions, digest, history, f"average of {epochs + 1}-{total_epochs}",
                      earlier_seconds + time.time() - t_start, train_crops=crops["train"], report_split=report_split)
    if best["epoch"] < 0:
        raise TrainingFailed(f"no epoch of {epochs} gave val outputs that vary (every one was constant up to rounding, or not finite): the network "
                             "did not learn; try a lower train.lr, more epochs or another seed")
    model.load_state_dict(best["state"])
    for h in style_hooks:
        h.remove()
    for p in model.parameters():
        p.requires_grad_(True)
    torch.save(model.state_dict(), work_dir / "best.pt")
    return finish(cfg, model, out_dir, eval_batches, labels, sessions, digest, history, best["epoch"], earlier_seconds + time.time() - t_start,
                  train_crops=crops["train"], report_split=report_split)


def selection_score(cfg: dict[str, Any], val_labels: np.ndarray, val_logits: np.ndarray) -> float:
    """What chooses between candidates on val: the AUC of sound vs defective; for a model that also
    tells defect types apart, the mean of that AUC and the type balanced accuracy."""
    val = binary_report(is_defective(val_labels, cfg), _scores(val_logits, 1.0, cfg), 0.5)
    if len(defective_of(cfg)) > 1:
        return (val["auc"] + type_report(val_labels, val_logits, cfg)["balanced_accuracy"]) / 2
    return val["auc"]


def run_linear_probe(cfg, model, crops, labels, sessions, eval_batches, digest, out_dir, t_start, report_split, ddp) -> dict[str, Any]:
    """``train.method: linear_probe`` (training/probe.py): the pretrained network as it is, its head
    fitted on the train crops' features (and ``train.probe_views`` - 1 augmented copies of each)."""
    if ddp.active:
        raise ValueError("train.method linear_probe runs on one process: launch it without torchrun")
    tr = cfg["train"]
    views = int(tr.get("probe_views", 1))
    if views < 1:
        raise ValueError(f"train.probe_views must be >= 1, got {views}")
    batches = [preprocess(list(crops["train"]), spec_for(cfg))]
    if views > 1:
        classes = classes_of(cfg)
        ds = CropDataset(crops["train"], labels["train"], train_transform(cfg), float(cfg["augment"].get("colour_transfer_p", 0.0)), int(cfg["seed"]),
                         keep_colour=np.isin(labels["train"], [classes.index(c) for c in colour_keep_of(cfg)]))
        for _ in tqdm(range(views - 1), desc="augmented views", unit="view", leave=False):
            batches.append(np.stack([ds[i][0].numpy() for i in range(len(ds))]))
    history = probe.run_probe(model, cfg, batches, labels["train"], sessions["train"], eval_batches["val"],
                              lambda z: selection_score(cfg, labels["val"], z), len(classes_of(cfg)))
    return finish(cfg, model, out_dir, eval_batches, labels, sessions, digest, history, "linear probe", time.time() - t_start,
                  train_crops=crops["train"], report_split=report_split)


#: an epoch whose val logits all lie within this share of their size of each other (every class) has
#: collapsed: its output is one constant plus float32 rounding noise (about 1e-7 of the size), and an
#: AUC ranked on that noise can look good by chance (seen: val AUC 0.93 from a spread of 6e-8)
MIN_VAL_LOGIT_SPREAD = 1e-5


class TrainingFailed(RuntimeError):
    """Training ended without a model worth exporting."""


def outputs_collapsed(logits: np.ndarray) -> bool:
    """Whether a network's logits on a split are not finite or constant up to rounding (a diverged
    or collapsed network): such an epoch is never selected, whatever its val AUC."""
    if not np.isfinite(logits).all():
        return True
    return len(logits) > 1 and float(np.ptp(logits, axis=0).max()) < MIN_VAL_LOGIT_SPREAD * max(1.0, float(np.abs(logits).max()))


def _scores(logits: np.ndarray, temperature: float = 1.0, cfg: dict[str, Any] | None = None) -> np.ndarray:
    """P(defective), the sum over the defective classes: the same calibrated softmax serving applies."""
    if cfg is None:
        return softmax(logits, temperature)[:, CLASSES.index("defective")]
    classes = classes_of(cfg)
    return softmax(logits, temperature)[:, [classes.index(c) for c in defective_of(cfg)]].sum(axis=1)


def pick_threshold_by_group(y: np.ndarray, scores: np.ndarray, groups: list[str]) -> float:
    """The threshold whose smallest balanced accuracy over the groups holding both classes is the
    largest (ties: the larger pooled balanced accuracy, then the lower threshold)."""
    g = np.array(groups)
    both = [k for k in sorted(set(groups)) if 0 < y[g == k].sum() < (g == k).sum()] or sorted(set(groups))
    best: tuple[float, float, float] | None = None
    for t in np.unique(np.clip(scores, 0.02, 0.98)):
        per = [binary_report(y[g == k], scores[g == k], float(t), counts_only=True)["balanced_accuracy"] for k in both]
        key = (float(np.nanmin(per)), float(binary_report(y, scores, float(t), counts_only=True)["balanced_accuracy"]), -float(t))
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


def _json_safe(x: Any) -> Any:
    """NaN (e.g. recall of a class a session lacks) becomes null: metadata stays strict JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def calibrate(cfg: dict[str, Any], logits: dict[str, np.ndarray], labels: dict[str, np.ndarray], sessions: dict[str, list[str]]) -> dict[str, Any]:
    """Everything the artifact decides from its logits: the temperature fitted on val, the
    defective threshold and review band by the config's rule on val, the energy threshold for
    out-of-distribution, and the figures of every split (``logits`` holds val and the other
    evaluated splits). Training calls it on torch's logits, training/views.py on a graph's."""
    group_key = cfg["data"].get("report_by", "session")  # "source" for citrus: per-source figures
    multi = len(defective_of(cfg)) > 1
    val_logits = logits["val"]
    temperature = fit_temperature(val_logits, labels["val"])
    val_scores = _scores(val_logits, temperature, cfg)
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
    elif th.get("rule", "recall") != "recall":
        raise ValueError(f"thresholds.rule must be recall or balanced_in_every_group, got {th['rule']!r}")
    # the review band spans the threshold: from (1 - m)·t below it to t + m·(1 - t) above it, so a
    # low threshold does not send every sound fruit to an inspector
    m = float(th["review_margin"])
    band = (threshold * (1 - m), threshold + m * (1 - threshold))

    metrics: dict[str, Any] = {}
    for split, split_logits in logits.items():
        s_raw, s_cal = _scores(split_logits, 1.0, cfg), _scores(split_logits, temperature, cfg)
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
    return {"temperature": temperature, "threshold": threshold, "band": band, "rule": rule, "ood_threshold": ood_threshold,
            "ood_rule": (f"quantile {ood_q:g} of the val crops' energy -T*logsumexp(logits/T) "
                         "at the calibration temperature T; above it a crop is out of distribution"),
            "metrics": metrics}


def finish(cfg, model, out_dir, eval_batches, labels, sessions, digest, history, best_epoch, train_seconds, train_crops,
           report_split: str = "test") -> dict[str, Any]:
    """Calibrate and pick thresholds on val, evaluate on test, export (with the explanation outputs
    of training/explain.py, fitted on ``train_crops``), check, write metadata."""
    classes, defective = classes_of(cfg), defective_of(cfg)
    multi = len(defective) > 1
    group_key = cfg["data"].get("report_by", "session")  # "source" for citrus: per-source figures
    # test-time views (training/views.py): the served graph averages the logits over turns of the
    # crop, so calibration, thresholds and every figure are taken on that average (the epoch was
    # chosen on the crop alone, as every epoch is validated)
    views = int(cfg["model"].get("test_time_views", 1))
    judge = ViewAverage(model, views)
    logits = {split: predict_logits(judge, eval_batches[split]) for split in eval_batches}
    cal = calibrate(cfg, logits, labels, sessions)
    temperature, threshold, band, metrics = cal["temperature"], cal["threshold"], cal["band"], cal["metrics"]
    metrics = {"best_epoch": best_epoch, "train_seconds": round(train_seconds, 1), **metrics}

    export_onnx(model, out_dir / "model.onnx", int(cfg["model"]["input_size"]))
    spec = spec_for(cfg, temperature, threshold, band)
    # the same graph edit an existing artifact gets from `python -m training.explain`: defect_map and
    # ood_distance, the latter fitted on the train crops, its threshold a quantile of the val crops'
    explained = explain.add_outputs(out_dir / "model.onnx", out_dir / "model.onnx", spec, train_crops, labels["train"], eval_batches["val"],
                                    float(cfg["thresholds"].get("ood_distance_quantile", 0.99)),
                                    early_block=explain.early_block_of(cfg))
    view_check = None
    if views > 1:
        single = onnx.load(str(out_dir / "model.onnx"))
        averaged = add_views(single, views, INPUT_NAME, OUTPUT_NAME)
        extras = [o.name for o in single.graph.output if o.name != OUTPUT_NAME]
        view_check = check_views(single, averaged, eval_batches["val"][:16], views, extras, INPUT_NAME, OUTPUT_NAME)
        onnx.save(averaged, str(out_dir / "model.onnx"))
    distance_shares = {"val": float((explained.val_distances > explained.threshold).mean())}
    early = explained.early
    early_shares = {} if early is None else {"val": float((early.val_distances > early.threshold).mean())}
    for split in eval_batches:
        if split != "val":
            names = [explain.DISTANCE_OUTPUT, *([explain.EARLY_OUTPUT] if early else [])]
            dist, *dist_early = explain.run_graph(out_dir / "model.onnx", names, eval_batches[split], spec)
            distance_shares[split] = float((dist > explained.threshold).mean())
            if early is not None:
                early_shares[split] = float((dist_early[0] > early.threshold).mean())
    fruit_record = None
    if cfg.get("fruit_check"):
        # the fruit / not-fruit head on the same pooled features (training/fruit_check.py)
        fc = cfg["fruit_check"]
        region_crops, region_is_fruit, regs = fruit_check.regions_for(fc, cfg["data"].get("splits") or {}, Path(fc.get("work_dir", "var/fruit_check")),
                                                                       margin=spec.crop_margin_frac)
        edited, fruit_record = fruit_check.fit(onnx.load(str(out_dir / "model.onnx")), spec, region_crops, region_is_fruit, regs,
                                               float(fc.get("keep_fruit", fruit_check.DEFAULT_KEEP_FRUIT)), float(fc.get("l2", 1.0)))
        onnx.save(edited, str(out_dir / "model.onnx"))
        val_fc = fruit_record["metrics"].get("val") or fruit_record["metrics"]["train"]
        print(f"fruit check: threshold {fruit_record['threshold']:.3f}, val fruit kept {val_fc['fruit_kept']}, "
              f"not fruit rejected {val_fc['not_fruit_rejected']}")
    check_batch = eval_batches["test"][:32]
    metrics["onnx_check"] = check_export(judge, out_dir / "model.onnx", check_batch, temperature)
    if view_check is not None:
        metrics["onnx_check"]["views"] = view_check
    parity = parity_record(judge, int(cfg["model"]["input_size"]))
    meta = {
        "name": cfg["name"],
        "version": str(cfg["version"]),
        "task": "defect-classification",
        "commodity": cfg.get("commodity", "apple"),
        "architecture": cfg["model"]["arch"],
        "classes": classes,
        "defective_classes": defective,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "preprocessing": {
            "input_size": list(spec.input_size),
            "layout": "NCHW",
            "colour": "RGB",
            "scale": "1/255",
            "mean": list(spec.mean),
            "std": list(spec.std),
            "crop": "square fruit crop, background painted out: grader.measure.crop_for_model(mask=...)",
            "crop_margin_frac": spec.crop_margin_frac,
            "resize": "cv2 INTER_AREA (downscale) / INTER_LINEAR (upscale)",
            **crop_segmentation_record(spec.crop_segmentation),
            **({} if spec.colour_normalise is None else {"colour_normalise": spec.colour_normalise.to_dict()}),
            **({} if spec.fruit_body is None else {"fruit_body": {"factor": spec.fruit_body,
                                                                   "step": "grader.measure.fruit_body, before the resize"}}),
            **({} if views == 1 else {"test_time_views": views_record(views)}),
        },
        "calibration": {"method": "temperature scaling on val" + ("" if views == 1 else ", of the logits averaged over the views"),
                        "temperature": temperature},
        "thresholds": {
            "defective": threshold,
            "review_band": list(band),
            "chosen_on": "val",
            "rule": cal["rule"],
        },
        "metrics": metrics,
        "history": history,
        "training_data": {
            "manifest_sha256": digest,
            "source": cfg["data"].get("root") or cfg["data"].get("manifest") or "synthetic",
            "splits": cfg["data"].get("splits", {}),
            "split_rule": cfg["data"].get("split_rule", "whole capture sessions (or lots) per split (datasets/fruitnet.py:session_of, datasets/line.py:assign_splits)"),
        },
        "parity": parity,
        **({} if (pre := pretrained_record(cfg["model"]["arch"])) is None else {"pretrained": pre}),
        "code_version": code_version(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg,
    }
    meta["thresholds"]["ood_energy"] = cal["ood_threshold"]
    meta["thresholds"]["ood_energy_rule"] = cal["ood_rule"]
    explain.update_metadata(meta, explained, distance_shares, early_shares=early_shares)
    if fruit_record is not None:
        fruit_check.update_metadata(meta, fruit_record)
    meta = _json_safe(meta)
    ModelSpec.from_metadata(meta)  # the artifact must load the way serving loads it
    (out_dir / "metadata.json").write_text(json.dumps(meta, indent=2, allow_nan=False))
    (out_dir / "metrics.json").write_text(json.dumps(meta["metrics"], indent=2, allow_nan=False))
    split = report_split
    t = metrics[split]
    print(
        f"{split}: balanced accuracy {t['balanced_accuracy']:.3f}, recall(defective) {t['recall_defective']:.3f}, "
        f"AUC {t['auc']:.3f}, ECE {t['ece_before']:.3f} -> {t['ece_after']:.3f}; "
        f"onnx vs torch max |Δscore| {metrics['onnx_check']['max_abs_diff_scores']:.2e}"
    )
    if multi:
        print(f"{split}: defect type accuracy {t['types']['accuracy']:.3f} (balanced {t['types']['balanced_accuracy']:.3f}) over {t['types']['n']} defective fruit")
    if group_key != "session":
        for g, r in t[f"per_{group_key}"].items():
            print(f"{split}, {group_key} {g}: n {r['n']}, balanced accuracy {r['balanced_accuracy']:.3f}, recall(defective) {r['recall_defective']:.3f}, "
                  f"recall(sound) {r['recall_sound']:.3f}" + (f", type accuracy {r['types']['accuracy']:.3f}" if multi and r["types"]["n"] else ""))
    if split != "test":
        print(f"(the test figures are in {out_dir / 'metadata.json'}: metrics.test)")
    print(f"artifact written to {out_dir}")
    return meta


if __name__ == "__main__":  # python -m training.train ... (and torchrun ... -m training.train ...): `grader train ...`
    from training.commands import main

    raise SystemExit(main("train"))

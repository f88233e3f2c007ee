"""The crops a run trains and evaluates on: FruitNet sessions, citrus sources, line datasets and
synthetic fruit cut into cached crops; the samplers and augmentations of the training loop."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torchvision.transforms import v2 as T

from datasets import citrus, fruitnet
from datasets.synthetic import random_fruit_image
from grader.segment import SegmentationParams
from training.colour import ColourNormalise, colour_transfer, fruit_colour_stats, fruit_pixels, mean_colour_stats
from training.config import (
    CLASSES,
    classes_of,
    colour_normalise_of,
    segmentation_of,
)
from training.crops import crop_cache, group_crop_cache, load_rgb


def load_data(
    cfg: dict[str, Any], work_dir: Path
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, list[str]], list[dict[str, Any]], str]:
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
                items.append(
                    {"path": f"synthetic/{split}/{base + i}", "label": CLASSES[int(bad)], "session": split, "split": split, "sha256": ""}
                )
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
    manifest = [
        it
        for commodity in d.get("commodities") or [cfg["commodity"]]
        for it in citrus.build_manifest(
            root,
            commodity,
            seed=int(d.get("split_seed", cfg["seed"])),
            fractions=d.get("fractions"),
            max_bits=int(d.get("max_hash_bits", citrus.DEFAULT_MAX_BITS)),
            cache_dir=work_dir / "cache",
        )
    ]
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
            items = [
                (it.path, it.label, it.source, it.sha256)
                for it in citrus.build_manifest(
                    root,
                    commodity,
                    seed=int(e.get("split_seed", 7)),
                    fractions=e.get("fractions"),
                    max_bits=int(e.get("max_hash_bits", citrus.DEFAULT_MAX_BITS)),
                    cache_dir=work_dir / "cache",
                )
                if it.split == "train"
            ]
        elif kind == "fruitnet":
            if "apple" in own:
                raise ValueError("data.extra_train: fruitnet apples are this model's own data already")
            if not e.get("sessions"):
                raise ValueError("data.extra_train: a fruitnet source names its sessions (e.g. the apple model's train sessions)")
            items = [
                (it.path, it.label, it.session, it.sha256)
                for it in fruitnet.build_manifest(root, {"train": list(e["sessions"])}, e.get("subset", "single"))
            ]
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
            out.append(
                {
                    "path": os.path.relpath(file, main_root),
                    "label": cls,
                    "session": str(e.get("group") or group),
                    "split": "train",
                    "sha256": sha256,
                    "extra": True,
                    "source_label": label,
                }
            )
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
    crops["train"] = np.concatenate(
        [crops["train"], crop_cache([root / it["path"] for it in extra], size, margin, work_dir / "cache", params=segmentation_of(cfg))]
    )
    labels["train"] = np.concatenate([labels["train"], [classes.index(it["label"]) for it in extra]]).astype(int)
    sessions["train"] = sessions["train"] + [it["session"] for it in extra]
    h = hashlib.sha256(digest.encode())
    for it in sorted(extra, key=lambda i: i["path"]):
        h.update(f"{it['path']}\t{it['label']}\t{it['split']}\t{it['sha256']}\n".encode())
    return crops, labels, sessions, manifest + extra, h.hexdigest()


def load_manifest_data(
    path: Path, size: int, margin: float, work_dir: Path, classes: list[str] = CLASSES, params: SegmentationParams | None = None
):
    """A dataset written by `grader dataset build`: fruit crops from the line ("crop" items, used as
    they are) and whole photos of a merged base dataset ("image" items, cropped like FruitNet),
    labelled in the config's model classes."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: build the dataset first (grader dataset build --out DIR)")
    m = json.loads(path.read_text())
    unknown = sorted({it["label"] for it in m["items"]} - set(classes))
    if unknown:
        raise ValueError(
            f"{path} labels {unknown} are not classes of this model ({classes}): "
            "build the dataset with --commodity of the model, or train with that commodity's config"
        )
    root = path.parent
    crops: dict[str, np.ndarray] = {}
    labels: dict[str, np.ndarray] = {}
    sessions: dict[str, list[str]] = {}
    for split in ("train", "val", "test"):
        its = [it for it in m["items"] if it["split"] == split]
        if not its:
            raise FileNotFoundError(
                f"{path} has no {split} items: a dataset needs train, val and test splits (more lots, or --base to merge a base dataset)"
            )
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
    return torch.utils.data.WeightedRandomSampler(
        weights, num_samples=len(keys), replacement=True, generator=torch.Generator().manual_seed(seed + 1)
    )


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
    return torch.utils.data.WeightedRandomSampler(
        w, num_samples=len(groups), replacement=True, generator=torch.Generator().manual_seed(seed + 1)
    )


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

    def __init__(
        self,
        crops: np.ndarray,
        labels: np.ndarray,
        transform: T.Transform,
        colour_transfer_p: float = 0.0,
        seed: int = 0,
        keep_colour: np.ndarray | None = None,
    ) -> None:
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

"""Citrus photos for the defect models: lemons and navel oranges, with near-duplicate groups and
group-wise splits, in a hashed manifest.

Folders (under the shared data root, never copied into the repository):

* ``lemons/{good,bad,empty}`` — one lemon per photo on the same concrete for every class. ``empty``
  frames are not a class of the defect model: they test that measurement finds no fruit.
* ``oranges-fresh-rotten/{good,bad}`` — stock photos; ``bad`` is rot and mould.
* ``orange-diseases/{fresh,blackspot,canker,greening}`` — the diseases were shot in a lab, most of
  ``fresh`` are web stock photos (a source trap: see the training config).

There are no capture sessions. Many photos are copies of one another (the Kaggle sets were
augmented: rotated, flipped, zoomed copies; some ``orange-diseases/fresh`` photos are the same
stock photos as ``oranges-fresh-rotten/good``, and a few identical photos sit in two disease
folders). Photos are grouped by a perceptual hash that ignores rotation and mirroring: two photos
whose hashes differ by at most ``max_bits`` of 1023 are one group (and groups chain). Whole groups
go to one split, stratified by label and source, with a fixed seed. A group whose photos carry
different labels (the same photo filed as blackspot and as canker) is left out of every split
(``split: "excluded"``).

Each manifest item records the file's sha256, its label (a model class), defect type, source
folder, group and split; :func:`manifest_hash` hashes it all.
"""

from __future__ import annotations

import hashlib
import json
import random
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np

from datasets.fruitnet import IMAGE_SUFFIXES, file_sha256

#: (source folder, class folder) -> (label, defect type). Labels are the orange model's classes;
#: a binary model maps every label but "sound" to "defective" (see :func:`model_label`).
LEMON_FOLDERS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("lemons", "good"): ("sound", None),
    ("lemons", "bad"): ("defective", "unspecified"),  # mould, rot, scars, blemishes: not told apart
    ("lemons", "empty"): ("empty", None),  # no fruit: a measurement test, never a training class
}
ORANGE_FOLDERS: dict[tuple[str, str], tuple[str, str | None]] = {
    ("oranges-fresh-rotten", "good"): ("sound", None),
    ("oranges-fresh-rotten", "bad"): ("rot", "rot"),
    ("orange-diseases", "fresh"): ("sound", None),
    ("orange-diseases", "blackspot"): ("blackspot", "blackspot"),
    ("orange-diseases", "canker"): ("canker", "canker"),
    ("orange-diseases", "greening"): ("greening", "greening"),
}
FOLDERS = {"lemon": LEMON_FOLDERS, "orange": ORANGE_FOLDERS}
SPLITS = ("train", "val", "test")

#: perceptual hash: grey image at HASH_SIDE px, inscribed disc only (rotation moves the corners),
#: the signs of the DCT's lowest HASH_FREQ x HASH_FREQ frequencies less the mean (1023 bits); at
#: every ROTATION_STEP_DEG turn, plain and mirrored
HASH_SIDE = 128
HASH_FREQ = 32
HASH_BITS = HASH_FREQ * HASH_FREQ - 1
ROTATION_STEP_DEG = 5
#: photos within this many bits (of 1023) are copies of one another. Measured on this data (every
#: orange pair compared): a photo and its turned, mirrored, re-cropped or noised copies mostly sit
#: within 60 bits, re-cropped ones up to ~136 (checked by eye); photos of different fruit at 137 or
#: more (the look-alike lab shots of blackspot vs canker), usually 170-440. Lemons: no pair below
#: 248 but one identical file.
DEFAULT_MAX_BITS = 128
#: colour-histogram prefilter of :func:`close_pairs` (L1, 0..2): 99 % of the copies measured at <= 0.06,
#: a few noised ones at 0.5
MAX_COLOUR_L1 = 0.6


@dataclass(frozen=True)
class Item:
    path: str  # relative to the data root, e.g. "orange-diseases/canker/c_12_.jpg"
    label: str  # model class ("sound", "defective", "rot", "blackspot", ...) or "empty"
    defect_type: str | None  # None for sound fruit and empty frames
    source: str  # "lemons", "oranges-fresh-rotten" or "orange-diseases"
    group: str  # near-duplicate group: every copy of a photo shares it
    split: str  # "train", "val", "test" or "excluded" (label conflict within the group)
    sha256: str
    note: str | None = None

    @property
    def defective(self) -> bool:
        return self.label not in ("sound", "empty")


def model_label(item: Item | dict, classes: Sequence[str]) -> str | None:
    """The model class an item trains as: its own label when the model has it, else "defective"
    for any defect when the model is binary; None when the model has no class for it (empty)."""
    label = item["label"] if isinstance(item, dict) else item.label
    if label in classes:
        return label
    if label not in ("sound", "empty") and "defective" in classes:
        return "defective"
    return None


# ----------------------------------------------------------------------------- hashing
_yy, _xx = np.mgrid[:HASH_SIDE, :HASH_SIDE]
_DISC = ((_yy - (HASH_SIDE - 1) / 2) ** 2 + (_xx - (HASH_SIDE - 1) / 2) ** 2) <= (HASH_SIDE / 2) ** 2
_CSIDE = 64
_cy, _cx = np.mgrid[:_CSIDE, :_CSIDE]
_CDISC = ((_cy - (_CSIDE - 1) / 2) ** 2 + (_cx - (_CSIDE - 1) / 2) ** 2) <= (_CSIDE / 2) ** 2


def _dct_low(grey: np.ndarray) -> np.ndarray:
    t = grey.astype(np.float32)
    t[~_DISC] = t[_DISC].mean()
    return cv2.dct(t)[:HASH_FREQ, :HASH_FREQ]


#: the 8 symmetries of the square on a DCT block D[row v, column u]: mirroring x multiplies a
#: coefficient by (-1)^u, mirroring y by (-1)^v, swapping x and y transposes the block
_U = (-1.0) ** np.arange(HASH_FREQ)[None, :]
_V = (-1.0) ** np.arange(HASH_FREQ)[:, None]
_SYMMETRIES = (
    lambda d: d,
    lambda d: d * _U,
    lambda d: d * _V,
    lambda d: d * _U * _V,
    lambda d: d.T,
    lambda d: d.T * _U,
    lambda d: d.T * _V,
    lambda d: d.T * _U * _V,
)


def perceptual_hashes(image: np.ndarray, rotation_step_deg: int = ROTATION_STEP_DEG) -> np.ndarray:
    """Packed HASH_BITS-bit hashes of a photo (grey or RGB) in every orientation: turned in
    ``rotation_step_deg`` steps through 360°, plain and mirrored: (8·90/step, words·8) uint8, padded
    to whole 64-bit words; row 0 is the photo as it is. A bit is the sign of a low DCT coefficient
    (the mean left out), so the quarter turns and mirrors come exactly from the turns below 90°."""
    grey = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    t = cv2.resize(grey, (HASH_SIDE, HASH_SIDE), interpolation=cv2.INTER_AREA)
    c = ((HASH_SIDE - 1) / 2, (HASH_SIDE - 1) / 2)
    blocks = []
    for angle in range(0, 90, rotation_step_deg):
        m = cv2.getRotationMatrix2D(c, angle, 1.0)
        blocks.append(_dct_low(cv2.warpAffine(t, m, (HASH_SIDE, HASH_SIDE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)))
    bits = np.array([(sym(d).ravel()[1:] > 0) for sym in _SYMMETRIES for d in blocks])
    bits = np.pad(bits, ((0, 0), (0, (-bits.shape[1]) % 64)))  # whole 64-bit words
    return np.packbits(bits, axis=1)


def colour_histogram(image_rgb: np.ndarray) -> np.ndarray:
    """4x4x4-bin colour histogram of the photo's inscribed disc (64 floats summing to 1): the same,
    within a few hundredths (L1), for a photo and its turned, mirrored or re-cropped copies."""
    q = cv2.resize(image_rgb, (_CSIDE, _CSIDE), interpolation=cv2.INTER_AREA)[_CDISC] // 64
    h = np.bincount(q[:, 0].astype(int) * 16 + q[:, 1] * 4 + q[:, 2], minlength=64).astype(np.float32)
    return h / h.sum()


@dataclass
class Signatures:
    """Per photo: perceptual hashes of every turn (n, V, bytes) and colour histograms (n, 64)."""

    hashes: np.ndarray
    colours: np.ndarray


def _signature_of(path: str) -> tuple[np.ndarray, np.ndarray]:
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"cannot read image {path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    return perceptual_hashes(rgb), colour_histogram(rgb)


def signatures(paths: Sequence[Path], shas: Sequence[str], cache_dir: Path | None = None, workers: int = 2) -> Signatures:
    """Signatures of image files, cached on disk by file content when ``cache_dir`` is given."""
    cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"citrus-signatures-v2-{HASH_SIDE}-{HASH_FREQ}-{ROTATION_STEP_DEG}.npz"
        if cache_file.exists():
            with np.load(cache_file) as z:
                cache = {k: (h, c) for k, h, c in zip(z["sha"].tolist(), z["hashes"], z["colours"])}
    todo = sorted({sha: str(p) for p, sha in zip(paths, shas) if sha not in cache}.items())
    if todo:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for (sha, _), sig in zip(todo, pool.map(_signature_of, [p for _, p in todo], chunksize=8)):
                cache[sha] = sig
        if cache_file is not None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            keys = sorted(cache)
            np.savez(
                cache_file, sha=np.array(keys), hashes=np.stack([cache[k][0] for k in keys]), colours=np.stack([cache[k][1] for k in keys])
            )
    if not shas:
        return Signatures(np.zeros((0, 8 * 90 // ROTATION_STEP_DEG, (HASH_BITS + 63) // 64 * 8), np.uint8), np.zeros((0, 64), np.float32))
    return Signatures(np.stack([cache[s][0] for s in shas]), np.stack([cache[s][1] for s in shas]))


def close_pairs(
    a: Signatures, b: Signatures | None = None, max_bits: int = DEFAULT_MAX_BITS, max_colour_l1: float = MAX_COLOUR_L1
) -> list[tuple[int, int, int]]:
    """(i, j, bits) for every photo i of ``a`` and j of ``b`` (i < j when ``b`` is omitted) whose
    smallest Hamming distance over every turn and mirror of j is at most ``max_bits``.

    Only pairs whose colour histograms are within ``max_colour_l1`` are hashed against each other
    (copies measured on this data differ by 0.06 or less, a few noised ones by 0.5), so
    the cost is a few per cent of comparing every pair at every turn."""
    square = b is None
    b = a if b is None else b
    pairs = []
    for i0 in range(0, len(a.colours), 256):
        l1 = np.abs(a.colours[i0 : i0 + 256, None, :] - b.colours[None, :, :]).sum(-1)
        ii, jj = np.nonzero(l1 <= max_colour_l1)
        ii = ii + i0
        if square:
            keep = ii < jj
            ii, jj = ii[keep], jj[keep]
        pairs.append(np.stack([ii, jj], 1))
    cand = np.concatenate(pairs) if pairs else np.zeros((0, 2), int)
    a0 = np.ascontiguousarray(a.hashes[:, 0, :]).view(np.uint64)
    bv = np.ascontiguousarray(b.hashes).view(np.uint64)
    out = []
    for k in range(0, len(cand), 2048):
        i, j = cand[k : k + 2048, 0], cand[k : k + 2048, 1]
        d = np.bitwise_count(a0[i][:, None, :] ^ bv[j]).sum(-1, dtype=np.uint16).min(-1)
        if square:  # and j as it is against every turn of i
            a_v = np.ascontiguousarray(a.hashes).view(np.uint64)
            d = np.minimum(d, np.bitwise_count(bv[j][:, 0, None, :] ^ a_v[i]).sum(-1, dtype=np.uint16).min(-1))
        sel = d <= max_bits
        out.extend(zip(i[sel].tolist(), j[sel].tolist(), d[sel].tolist()))
    return out


def near_duplicate_groups(sig: Signatures, max_bits: int = DEFAULT_MAX_BITS) -> np.ndarray:
    """Group index per photo: photos within ``max_bits`` of each other are one group (transitively)."""
    n = len(sig.colours)
    parent = np.arange(n)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return int(i)

    for i, j, _ in close_pairs(sig, max_bits=max_bits):
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    return np.array([find(i) for i in range(n)], dtype=int)


# ----------------------------------------------------------------------------- manifest
def list_photos(root: Path, commodity: str, limit_per_folder: int | None = None) -> list[tuple[str, str, str | None, str]]:
    """(relative path, label, defect type, source) of every photo of a commodity's folders (the first
    ``limit_per_folder`` of each by name, for quick checks)."""
    root = Path(root)
    out = []
    for (source, folder), (label, defect_type) in FOLDERS[commodity].items():
        d = root / source / folder
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: is the shared data at {root}?")
        files = [p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        out.extend((str(p.relative_to(root)), label, defect_type, source) for p in files[:limit_per_folder])
    return out


def assign_splits(keys: dict[str, str], sizes: dict[str, int], fractions: dict[str, float], seed: int) -> dict[str, str]:
    """Split per group: within each stratum (``keys``: group -> stratum), groups in a seeded random
    order each go to the split furthest below its share of the stratum's photos."""
    names = list(fractions)
    total = sum(fractions.values())
    out: dict[str, str] = {}
    rng = random.Random(seed)
    for stratum in sorted(set(keys.values())):
        groups = sorted(g for g, k in keys.items() if k == stratum)
        rng.shuffle(groups)
        n = sum(sizes[g] for g in groups)
        got = {s: 0 for s in names}
        for g in groups:
            split = max(names, key=lambda s: (fractions[s] / total * n - got[s], -names.index(s)))
            out[g] = split
            got[split] += sizes[g]
    return out


def build_manifest(
    root: Path,
    commodity: str,
    seed: int = 7,
    fractions: dict[str, float] | None = None,
    max_bits: int = DEFAULT_MAX_BITS,
    cache_dir: Path | None = None,
    limit_per_folder: int | None = None,
) -> list[Item]:
    """Every photo of ``commodity`` ("lemon" or "orange") under ``root`` with its group and split
    (hash signatures cached in ``cache_dir`` when given)."""
    fractions = fractions or {"train": 0.6, "val": 0.2, "test": 0.2}
    if set(fractions) != set(SPLITS):
        raise ValueError(f"fractions must name {SPLITS}, got {sorted(fractions)}")
    root = Path(root)
    photos = list_photos(root, commodity, limit_per_folder)
    paths = [root / p for p, *_ in photos]
    shas = [file_sha256(p) for p in paths]
    index = near_duplicate_groups(signatures(paths, shas, cache_dir), max_bits)

    members: dict[int, list[int]] = {}
    for i, g in enumerate(index):
        members.setdefault(int(g), []).append(i)
    # a stable group name: the smallest sha256 among its photos
    names = {g: f"{commodity}-{min(shas[i] for i in ms)[:12]}" for g, ms in members.items()}
    conflict = {g for g, ms in members.items() if len({photos[i][1] for i in ms}) > 1}
    strata = {
        names[g]: photos[ms[0]][1] + "|" + "+".join(sorted({photos[i][3] for i in ms})) for g, ms in members.items() if g not in conflict
    }
    sizes = {names[g]: len(ms) for g, ms in members.items()}
    split_of = assign_splits(strata, sizes, {s: fractions[s] for s in SPLITS}, seed)

    items = []
    for i, (path, label, defect_type, source) in enumerate(photos):
        g = int(index[i])
        if g in conflict:
            labels = sorted({photos[j][1] for j in members[g]})
            items.append(
                Item(
                    path,
                    label,
                    defect_type,
                    source,
                    names[g],
                    "excluded",
                    shas[i],
                    note=f"the same photo is filed as {' and '.join(labels)}",
                )
            )
        else:
            items.append(Item(path, label, defect_type, source, names[g], split_of[names[g]], shas[i]))
    return items


def manifest_hash(items: Iterable[Item]) -> str:
    """One hash over files, labels, groups and splits: any change changes it."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: i.path):
        h.update(f"{it.path}\t{it.label}\t{it.defect_type}\t{it.source}\t{it.group}\t{it.split}\t{it.sha256}\n".encode())
    return h.hexdigest()


def counts(items: Iterable[Item]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for it in items:
        out.setdefault(it.split, {}).setdefault(f"{it.source}/{it.label}", 0)
        out[it.split][f"{it.source}/{it.label}"] += 1
    return out


def write_manifest(items: list[Item], path: Path) -> str:
    digest = manifest_hash(items)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sha256": digest, "counts": counts(items), "items": [asdict(i) for i in items]}, indent=1))
    return digest


def leaking_groups(items: Iterable[Item | dict]) -> list[str]:
    """Groups found in more than one split (must be empty)."""
    seen: dict[str, set[str]] = {}
    for it in items:
        d = it if isinstance(it, dict) else asdict(it)
        seen.setdefault(d["group"], set()).add(d["split"])
    return sorted(g for g, s in seen.items() if len(s) > 1)

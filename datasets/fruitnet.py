"""FruitNet apples (good vs bad), split by capture session, with a hashed manifest.

The file name carries the capture session; most sessions hold one class only with their own
camera and background, so a random split would leak sessions. Splits here name whole sessions.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

#: data labels -> model classes
LABELS = {"good": "sound", "bad": "defective"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def session_of(filename: str) -> str:
    """Capture session from a FruitNet file name.

    ``20190809_115439.jpg`` and ``IMG_20190824_175338.jpg`` -> the date; ``IMG20200728175856.jpg``
    -> the date; camera-counter names ``IMG_9350.jpg`` -> the counter's thousand (``IMG_9xxx``),
    since one camera's consecutive shots belong together."""
    stem = Path(filename).stem
    m = re.match(r"^(?:IMG_?)?(20\d{6})", stem)
    if m:
        return m.group(1)
    m = re.match(r"^IMG_(\d)\d{3}", stem)
    if m:
        return f"IMG_{m.group(1)}xxx"
    return stem.split("_")[0]


@dataclass(frozen=True)
class Item:
    path: str  # relative to the dataset root
    label: str  # model class name
    session: str
    split: str
    sha256: str


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_manifest(root: Path, splits: dict[str, list[str]], subset: str = "single") -> list[Item]:
    """List every image under ``root/subset/{good,bad}`` with its session and split.

    ``splits`` maps a split name to the sessions in it; a session in no split is left out
    (and a session named twice is an error)."""
    owner: dict[str, str] = {}
    for split, sessions in splits.items():
        for s in sessions:
            if s in owner:
                raise ValueError(f"session {s} is in both {owner[s]} and {split}")
            owner[s] = split
    items = []
    for folder, label in LABELS.items():
        d = root / subset / folder
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: is the FruitNet apple data at {root}?")
        for p in sorted(d.iterdir()):
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            session = session_of(p.name)
            if session not in owner:
                continue
            items.append(Item(str(p.relative_to(root)), label, session, owner[session], file_sha256(p)))
    return items


def group_items(root: Path, sessions: list[str], split: str = "train") -> list[Item]:
    """The ``group/{good,bad}`` photos (several apples each, all of the folder's class) of
    ``sessions``, as items of ``split``. ``group/mixed`` is left out: its apples carry no label.

    FruitNet's group photos of 20200728 show good and bad apples on one table under one camera:
    fruit cut out of them (training/crops.py: group_fruit_crops) are training crops whose
    background, camera and variety do not tell the label."""
    wanted = set(sessions)
    items = []
    for folder, label in LABELS.items():
        d = root / "group" / folder
        if not d.is_dir():
            raise FileNotFoundError(f"{d} not found: is the FruitNet apple data at {root}?")
        for p in sorted(d.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and session_of(p.name) in wanted:
                items.append(Item(str(p.relative_to(root)), label, session_of(p.name), split, file_sha256(p)))
    return items


def manifest_hash(items: list[Item]) -> str:
    """One hash for the whole split: any change of file, label or split changes it."""
    h = hashlib.sha256()
    for it in sorted(items, key=lambda i: i.path):
        h.update(f"{it.path}\t{it.label}\t{it.split}\t{it.sha256}\n".encode())
    return h.hexdigest()


def write_manifest(items: list[Item], path: Path) -> str:
    digest = manifest_hash(items)
    counts: dict[str, dict[str, int]] = {}
    for it in items:
        counts.setdefault(it.split, {}).setdefault(it.label, 0)
        counts[it.split][it.label] += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sha256": digest, "counts": counts, "items": [asdict(i) for i in items]}, indent=1))
    return digest

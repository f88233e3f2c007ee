"""Seeded synthetic fruit images with known ground truth.

Every fruit is drawn at a known diameter in mm for a known ``mm_per_px``, on a belt or in a cup,
with blemishes of known area in cm². Drawing happens at ``SUPERSAMPLE``× resolution and is
averaged down, so edges are anti-aliased like a real camera's and the truth holds to a fraction of
a pixel. Tests use it wherever measurement is checked.

    >>> img, truth = make_fruit_image(seed=1, diameter_mm=72.0, mm_per_px=0.25)
    >>> truth.fruits[0].diameter_mm
    72.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

SUPERSAMPLE = 4

#: skin colours (RGB) by name; a fruit's colour is jittered around these
SKIN_RGB: dict[str, tuple[int, int, int]] = {
    "red": (178, 34, 40),
    "green": (120, 180, 60),
    "yellow": (225, 200, 70),
    "orange": (240, 140, 30),
    "lemon": (240, 220, 60),
    "tennis": (205, 225, 40),  # optic-yellow reference ball
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "belt": (62, 64, 68),  # dark grey conveyor belt
    "cup": (215, 215, 210),  # light plastic cup / singulator
    "blue": (40, 70, 140),
}
BLEMISH_RGB = (70, 45, 25)  # dark brown: rot, bruise


@dataclass
class FruitSpec:
    diameter_mm: float
    centre_mm: tuple[float, float] | None = None  # (x, y) from the image's top-left; None = centred
    colour: str = "red"
    aspect: float = 1.0  # minor/major axis ratio of the outline (1 = round)
    angle_deg: float = 0.0  # rotation of the major axis
    blemishes_cm2: tuple[float, ...] = ()
    blush_colour: str | None = None  # a second skin colour over part of the fruit (e.g. red blush)
    blush_fraction: float = 0.0  # share of the fruit's projected area it covers


@dataclass
class FruitTruth:
    diameter_mm: float  # major (largest) caliper width
    minor_diameter_mm: float
    centre_px: tuple[float, float]
    bbox: tuple[int, int, int, int]
    blemish_area_cm2: float  # total blemish area drawn
    largest_blemish_cm2: float
    colour: str
    cut_off: bool
    blush_fraction: float = 0.0  # share of the projected fruit area in the blush colour, blemishes excluded


@dataclass
class FrameTruth:
    mm_per_px: float
    fruits: list[FruitTruth] = field(default_factory=list)


def make_frame(
    fruits: list[FruitSpec],
    *,
    mm_per_px: float,
    size_px: tuple[int, int] = (480, 640),
    background: str = "belt",
    seed: int = 0,
    noise_sigma: float = 2.0,
    shading: bool = True,
) -> tuple[np.ndarray, FrameTruth]:
    """Render fruit on a background. Returns an RGB uint8 image and its ground truth."""
    if mm_per_px <= 0:
        raise ValueError("mm_per_px must be positive")
    rng = np.random.default_rng(seed)
    h, w = size_px
    s = SUPERSAMPLE
    big = np.empty((h * s, w * s, 3), np.float32)
    big[:] = BACKGROUND_RGB[background]
    # gentle belt texture
    big += rng.normal(0, 3.0, size=(h * s // 8 + 1, w * s // 8 + 1, 1)).repeat(8, 0).repeat(8, 1)[: h * s, : w * s]
    truth = FrameTruth(mm_per_px=mm_per_px)
    for spec in fruits:
        truth.fruits.append(_draw_fruit(big, spec, mm_per_px, rng, shading))
    img = cv2.resize(big, (w, h), interpolation=cv2.INTER_AREA)
    if noise_sigma > 0:
        img += rng.normal(0, noise_sigma, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).round().astype(np.uint8), truth


def _draw_fruit(big: np.ndarray, spec: FruitSpec, mm_per_px: float, rng: np.random.Generator, shading: bool) -> FruitTruth:
    s = SUPERSAMPLE
    H, W = big.shape[:2]
    h, w = H // s, W // s
    major_px = spec.diameter_mm / mm_per_px
    minor_px = major_px * spec.aspect
    if spec.centre_mm is None:
        cx, cy = w / 2, h / 2
    else:
        cx, cy = spec.centre_mm[0] / mm_per_px, spec.centre_mm[1] / mm_per_px
    # fruit mask at supersampled resolution, pixel centres at (i + 0.5) / s
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    px, py = (xx + 0.5) / s - cx, (yy + 0.5) / s - cy
    a = math.radians(spec.angle_deg)
    u = px * math.cos(a) + py * math.sin(a)
    v = -px * math.sin(a) + py * math.cos(a)
    r_major, r_minor = major_px / 2, minor_px / 2
    rr = (u / r_major) ** 2 + (v / r_minor) ** 2
    inside = rr <= 1.0
    base = np.array(SKIN_RGB[spec.colour], np.float32) * rng.uniform(0.92, 1.05, 3).astype(np.float32)
    skin = np.empty((H, W, 3), np.float32)
    skin[:] = base
    if shading:
        # a light from the upper left: brighter there, darker at the rim (a lit sphere)
        lit = 1.0 + 0.10 * (-(u + v) / (r_major + r_minor)) - 0.18 * np.clip(rr, 0, 1) ** 2
        skin *= lit[..., None]
    # fine speckle like lenticels
    skin += rng.normal(0, 4.0, size=(H // 4 + 1, W // 4 + 1, 1)).repeat(4, 0).repeat(4, 1)[:H, :W]
    blush = np.zeros((H, W), bool)
    if spec.blush_colour and spec.blush_fraction > 0:
        # the blush covers the part of the fruit beyond a line across it, placed so that the
        # blush covers exactly blush_fraction of the fruit's area
        cut = np.quantile(u[inside], 1.0 - spec.blush_fraction)
        blush = inside & (u >= cut)
        skin[blush] *= np.array(SKIN_RGB[spec.blush_colour], np.float32) / base
    big[inside] = skin[inside]

    blemish_total, blemish_largest = 0.0, 0.0
    taken = np.zeros((H, W), bool)  # spots never overlap, so each one's area stays its own
    for area_cm2 in spec.blemishes_cm2:
        r_px = math.sqrt(area_cm2 * 100.0 / math.pi) / mm_per_px
        # place the spot fully inside the fruit, away from the shaded rim
        for _ in range(100):
            ang = rng.uniform(0, 2 * math.pi)
            rad = rng.uniform(0, max(0.0, min(r_minor, r_major) * 0.75 - r_px))
            bx, by = cx + rad * math.cos(ang), cy + rad * math.sin(ang)
            spot = ((xx + 0.5) / s - bx) ** 2 + ((yy + 0.5) / s - by) ** 2 <= r_px**2
            grown = ((xx + 0.5) / s - bx) ** 2 + ((yy + 0.5) / s - by) ** 2 <= (r_px + 2) ** 2
            if not (spot & ~inside).any() and not (grown & taken).any():
                break
        taken |= spot
        big[spot] = np.array(BLEMISH_RGB, np.float32) * rng.uniform(0.9, 1.1)
        drawn_cm2 = spot.sum() / (s * s) * mm_per_px**2 / 100.0
        blemish_total += drawn_cm2
        blemish_largest = max(blemish_largest, drawn_cm2)
    blush &= ~taken

    ys, xs = np.nonzero(inside)
    x0, x1 = int(xs.min() // s), int(xs.max() // s) + 1
    y0, y1 = int(ys.min() // s), int(ys.max() // s) + 1
    cut = x0 <= 0 or y0 <= 0 or x1 >= w or y1 >= h
    return FruitTruth(
        diameter_mm=float(spec.diameter_mm),
        minor_diameter_mm=float(spec.diameter_mm * spec.aspect),
        centre_px=(cx, cy),
        bbox=(max(0, x0), max(0, y0), min(w, x1), min(h, y1)),
        blemish_area_cm2=float(blemish_total),
        largest_blemish_cm2=float(blemish_largest),
        colour=spec.colour,
        cut_off=cut,
        blush_fraction=float(blush.sum() / max(inside.sum(), 1)),
    )


def make_fruit_image(
    seed: int = 0,
    diameter_mm: float = 70.0,
    mm_per_px: float = 0.25,
    colour: str = "red",
    background: str = "belt",
    blemishes_cm2: tuple[float, ...] = (),
    aspect: float = 1.0,
    angle_deg: float = 0.0,
    size_px: tuple[int, int] | None = None,
    blush_colour: str | None = None,
    blush_fraction: float = 0.0,
) -> tuple[np.ndarray, FrameTruth]:
    """One fruit in the middle of a frame sized to fit it with a margin."""
    if size_px is None:
        side = int(math.ceil(diameter_mm / mm_per_px * 1.6)) + 16
        size_px = (side, side)
    return make_frame(
        [
            FruitSpec(
                diameter_mm=diameter_mm,
                colour=colour,
                blemishes_cm2=blemishes_cm2,
                aspect=aspect,
                angle_deg=angle_deg,
                blush_colour=blush_colour,
                blush_fraction=blush_fraction,
            )
        ],
        mm_per_px=mm_per_px,
        size_px=size_px,
        background=background,
        seed=seed,
    )


def random_fruit_image(seed: int, defective: bool | None = None, size_px: int = 160) -> tuple[np.ndarray, bool]:
    """A random single-fruit image for training smoke tests: defective fruit carry dark spots."""
    rng = np.random.default_rng(seed)
    if defective is None:
        defective = bool(rng.integers(0, 2))
    mm_per_px = rng.uniform(0.5, 0.7)
    diameter = rng.uniform(60, 85)
    blem = tuple(rng.uniform(1.0, 4.0, size=int(rng.integers(1, 4)))) if defective else ()
    img, _ = make_frame(
        [FruitSpec(diameter_mm=diameter, colour=str(rng.choice(["red", "green", "yellow"])), blemishes_cm2=blem)],
        mm_per_px=mm_per_px,
        size_px=(size_px, size_px),
        background=str(rng.choice(["belt", "cup"])),
        seed=seed,
    )
    return img, defective

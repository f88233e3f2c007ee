"""Synthetic conveyor clips with ground truth: fruit of known size and blemishes riding a belt
across lanes at a known speed, entering on the left and leaving on the right, neighbours in
adjacent lanes sometimes touching or overlapping by a few millimetres.

Each fruit is rendered once as a sprite (by the same renderer as single synthetic frames, so
sizes and blemish areas are exact) and composited onto a moving belt frame by frame.

    clip = make_conveyor_clip("belt.avi", lanes=3, seconds=30, seed=1)
    clip.fruits  # FruitOnBelt: lane, diameter_mm, blemish_area_cm2, the frames it is fully in view
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .synthetic import BACKGROUND_RGB, SUPERSAMPLE, FruitSpec, _draw_fruit


@dataclass
class FruitOnBelt:
    index: int
    lane: int  # 1-based, top to bottom
    diameter_mm: float
    blemish_area_cm2: float
    colour: str
    enter_s: float  # when its leading edge crosses into the frame
    centre_y_px: float
    frames_in_view: list[int] = field(default_factory=list)  # frames showing the whole fruit
    frames_seen: list[int] = field(default_factory=list)  # frames showing any of it


@dataclass
class ConveyorClip:
    path: Path
    fps: float
    n_frames: int
    size_px: tuple[int, int]  # (height, width)
    mm_per_px: float
    speed_mm_s: float
    lanes: int
    fruits: list[FruitOnBelt]

    @property
    def speed_px_per_frame(self) -> float:
        return self.speed_mm_s / self.mm_per_px / self.fps


def _sprite(spec: FruitSpec, mm_per_px: float, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(RGB float32, alpha 0..1, blemish cm²) of one fruit on a transparent square."""
    side = int(np.ceil(spec.diameter_mm / mm_per_px)) + 6
    spec = FruitSpec(**{**spec.__dict__, "centre_mm": (side * mm_per_px / 2, side * mm_per_px / 2)})
    layers = []
    for bg in (0.0, 255.0):
        big = np.full((side * SUPERSAMPLE, side * SUPERSAMPLE, 3), bg, np.float32)
        truth = _draw_fruit(big, spec, mm_per_px, np.random.default_rng(seed), shading=True)
        layers.append(cv2.resize(big, (side, side), interpolation=cv2.INTER_AREA))
    black, white = layers
    alpha = np.clip(1.0 - (white - black).mean(axis=2) / 255.0, 0.0, 1.0)
    rgb = np.where(alpha[..., None] > 1e-3, black / np.maximum(alpha[..., None], 1e-3), 0.0)
    return rgb, alpha, truth.blemish_area_cm2


def make_conveyor_clip(
    path: str | Path,
    *,
    lanes: int = 3,
    seconds: float = 30.0,
    fps: float = 8.0,
    mm_per_px: float = 0.6,
    lane_width_mm: float = 100.0,
    speed_mm_s: float = 150.0,
    spacing_mm: tuple[float, float] = (110.0, 260.0),
    diameter_mm: tuple[float, float] = (58.0, 82.0),  # keep below lane_width_mm
    blemished_share: float = 0.3,
    # how far a fruit may reach over its lane's edge: two fruit resting against each other on a belt
    # overlap in a top view by (√r1 − √r2)², under a millimetre for apples; 1 mm each way allows that
    overlap_mm: float = 1.0,
    width_px: int = 640,
    seed: int = 0,
    codec: str = "MJPG",
) -> ConveyorClip:
    """Write a clip of fruit riding a belt left to right; returns its ground truth. The last fruit
    of each lane leaves the frame before the clip ends, so every fruit is seen whole."""
    rng = np.random.default_rng(seed)
    h = int(round(lanes * lane_width_mm / mm_per_px))
    w = width_px
    n_frames = int(round(seconds * fps))
    px_per_frame = speed_mm_s / mm_per_px / fps
    colours = ("red", "green", "yellow")
    fruits: list[FruitOnBelt] = []
    sprites = []
    for lane in range(lanes):
        # fruit enter one after another; the gap between them is random (some nearly touch)
        x_tail = 0.0  # mm of belt already used by this lane, measured from the frame's left edge at t=0
        while True:
            d = float(rng.uniform(*diameter_mm))
            x_tail += float(rng.uniform(*spacing_mm)) if fruits and fruits[-1].lane == lane + 1 else float(rng.uniform(0, 150))
            enter_s = x_tail / speed_mm_s
            leave_s = enter_s + (w * mm_per_px + d) / speed_mm_s
            if leave_s > seconds - 0.5:
                break
            blem = (float(rng.uniform(0.5, 2.5)),) if rng.random() < blemished_share else ()
            colour = str(rng.choice(colours))
            # anywhere across its lane, even a little over the lane's edge (so neighbours in adjacent
            # lanes can touch and overlap), but never over the frame's edge
            lo = max(lane * lane_width_mm + d / 2 - overlap_mm, d / 2 + 3.0)
            hi = min((lane + 1) * lane_width_mm - d / 2 + overlap_mm, lanes * lane_width_mm - d / 2 - 3.0)
            cy = float(rng.uniform(lo, max(lo, hi))) / mm_per_px
            spec = FruitSpec(diameter_mm=d, colour=colour, blemishes_cm2=blem)
            rgb, alpha, blem_cm2 = _sprite(spec, mm_per_px, seed * 1000 + len(fruits))
            fruits.append(FruitOnBelt(len(fruits), lane + 1, d, blem_cm2, colour, enter_s, cy))
            sprites.append((rgb, alpha))
            x_tail += d
    tex_w = w + int(np.ceil(n_frames * px_per_frame)) + 16  # the belt moves right under a fixed camera
    belt_tex = rng.normal(0, 3.0, size=(h // 8 + 2, tex_w // 8 + 2, 1)).repeat(8, 0).repeat(8, 1)[:h, :tex_w].astype(np.float32)
    base = np.array(BACKGROUND_RGB["belt"], np.float32)
    lane_lines = [int(round(k * lane_width_mm / mm_per_px)) for k in range(1, lanes)]

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path} with codec {codec}")
    try:
        for k in range(n_frames):
            t = k / fps
            start = tex_w - w - int(round(k * px_per_frame))
            frame = base + belt_tex[:, start : start + w]
            for y in lane_lines:  # lane dividers painted on the belt
                frame[max(0, y - 1) : y + 1] *= 0.85
            for fb, (rgb, alpha) in zip(fruits, sprites):
                side = rgb.shape[0]
                # the fruit's right edge is at x = (t - enter_s) * speed
                right = (t - fb.enter_s) * speed_mm_s / mm_per_px
                x0 = int(round(right - fb.diameter_mm / mm_per_px - 3))
                y0 = int(round(fb.centre_y_px - side / 2))
                if x0 >= w or x0 + side <= 0:
                    continue
                fx0, fx1 = max(0, x0), min(w, x0 + side)
                fy0, fy1 = max(0, y0), min(h, y0 + side)
                sx0, sy0 = fx0 - x0, fy0 - y0
                a = alpha[sy0 : sy0 + fy1 - fy0, sx0 : sx0 + fx1 - fx0, None]
                frame[fy0:fy1, fx0:fx1] = frame[fy0:fy1, fx0:fx1] * (1 - a) + rgb[sy0 : sy0 + fy1 - fy0, sx0 : sx0 + fx1 - fx0] * a
                fb.frames_seen.append(k)
                if x0 + 3 > 1 and x0 + side - 3 < w - 1:
                    fb.frames_in_view.append(k)
            frame += rng.normal(0, 2.0, size=frame.shape).astype(np.float32)
            writer.write(cv2.cvtColor(np.clip(frame, 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR))
    finally:
        writer.release()
    return ConveyorClip(path, fps, n_frames, (h, w), mm_per_px, speed_mm_s, lanes, fruits)

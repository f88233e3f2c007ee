"""Make the measurement figure in docs/img from a seeded synthetic frame (no model needed):

.venv/bin/python docs/figures.py
"""

from __future__ import annotations

from pathlib import Path

import cv2

from datasets.synthetic import FruitSpec, make_frame
from grader.commodities import load_commodities
from grader.measure import measure_image
from grader.overlay import draw_overlay, fruit_label

OUT = Path(__file__).parent / "img"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    specs = [
        FruitSpec(74, (20, 70)),  # cut by the frame border: reported, not sized
        FruitSpec(72, (105, 70), colour="yellow", blush_colour="red", blush_fraction=0.5, blemishes_cm2=(1.2, 0.4)),
        FruitSpec(66, (172, 72), colour="green", blemishes_cm2=(0.6,)),  # touching its neighbour
        FruitSpec(80, (252, 68), colour="red", aspect=0.88, angle_deg=25),
    ]
    img, truth = make_frame(specs, mm_per_px=0.4, size_px=(360, 760), seed=11)
    ms = measure_image(img, 0.4, colour_bands=load_commodities()["apple"].colour_bands)
    labels = [fruit_label(m) for m in ms]
    over = draw_overlay(img, ms, labels, [bool(m.quality_flags) for m in ms])
    cv2.imwrite(str(OUT / "measurement_overlay.png"), cv2.cvtColor(over, cv2.COLOR_RGB2BGR))
    print("fruit  true_diameter_mm  measured_mm  true_blemish_cm2  measured_cm2")
    for t, m in zip(truth.fruits, ms):
        d = "cut off" if m.diameter_mm is None else f"{m.diameter_mm:.2f}"
        print(f"{t.colour:6} {t.diameter_mm:16.1f} {d:>12} {t.blemish_area_cm2:16.2f} {m.blemish_area_cm2:13.2f}")
    print(f"wrote {OUT / 'measurement_overlay.png'}")


if __name__ == "__main__":
    main()

"""Draw docs/img/cnn_map.png: held-out FruitNet apples through the service's path (segmentation,
the model's crop, the shipped apple model's ONNX graph), each shown with the defect model's map
(overlay layer ``cnn``) next to the skin colour-departure heat map (layer ``heatmap``):

    .venv/bin/python docs/cnn_map_figure.py [--artifact models/apple-defect/0.3.0]

Without ../shared/data it draws seeded synthetic apples instead (and says so in the picture).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from datasets.synthetic import make_fruit_image  # noqa: E402
from grader.crop import crop_for_model  # noqa: E402
from grader.measure import measure_image  # noqa: E402
from grader.overlay import draw_overlay  # noqa: E402
from service.onnx_model import OnnxDefectModel  # noqa: E402

OUT = Path(__file__).parent / "img" / "cnn_map.png"
PANEL = 260


def pick(model: OnnxDefectModel, root: Path) -> list[str]:
    """Test-split photos (sessions never used for training or thresholds), chosen by a fixed rule:
    among the defective ones (20190824) the two whose map varies most and the one of median
    variation, among the sound ones (IMG_9xxx) the one whose map varies most."""

    def spread(rel: str) -> float:
        img = cv2.cvtColor(cv2.imread(str(root / rel)), cv2.COLOR_BGR2RGB)
        fruit = measure_image(img, None)
        if not fruit:
            return -1.0
        m = max(fruit, key=lambda f: f.area_px)
        grid = model.predict([crop_for_model(img, m.bbox, model.spec.crop_margin_frac, m.mask)])[0].defect_map
        return float(grid.max() - grid.min())

    bad = sorted(f"bad/{p.name}" for p in (root / "bad").glob("IMG_20190824_*.jpg"))
    good = sorted(f"good/{p.name}" for p in (root / "good").glob("IMG_9*.jpg"))
    by_bad = sorted(bad, key=spread, reverse=True)
    return [by_bad[0], by_bad[1], by_bad[len(by_bad) // 2], max(good, key=spread)]


def panel(img: np.ndarray, bbox, text: list[str]) -> np.ndarray:
    x0, y0, x1, y1 = bbox
    side = int(max(x1 - x0, y1 - y0) * 1.25)
    cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
    pad = side
    big = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(255, 255, 255))
    crop = big[cy - side // 2 + pad : cy + side // 2 + pad, cx - side // 2 + pad : cx + side // 2 + pad]
    out = cv2.resize(crop, (PANEL, PANEL), interpolation=cv2.INTER_AREA)
    bar = np.full((44, PANEL, 3), 255, np.uint8)
    for k, line in enumerate(text):
        cv2.putText(bar, line, (6, 17 + 19 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.48, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, out], axis=0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--artifact", type=Path, default=REPO / "models" / "apple-defect" / "0.3.0")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "fruitnet-apples" / "single")
    a = ap.parse_args(argv)
    model = OnnxDefectModel(a.artifact, threads=1)
    if (a.data / "bad").is_dir():
        images = [(p, cv2.cvtColor(cv2.imread(str(a.data / p)), cv2.COLOR_BGR2RGB)) for p in pick(model, a.data)]
    else:
        images = [
            (f"synthetic seed {s}", make_fruit_image(seed=s, diameter_mm=72, blemishes_cm2=b)[0])
            for s, b in ((1, (1.5,)), (2, (0.8, 0.5)), (3, (2.0,)), (4, ()))
        ]
    columns = []
    for name, img in images:
        m = max(measure_image(img, None), key=lambda f: f.area_px)
        ev = model.predict([crop_for_model(img, m.bbox, model.spec.crop_margin_frac, m.mask)])[0]
        if ev.defect_map is None:
            raise SystemExit(f"{a.artifact} has no defect_map output: run python -m training.retrofit_explain on it first")
        cnn = draw_overlay(img, [m], layers=("contour", "cnn"), cnn_maps=[(ev.defect_map, ev.map_crop_margin_frac)])
        heat = draw_overlay(img, [m], layers=("contour", "heatmap"))
        title = Path(name).name if "/" in name else name
        columns.append(
            np.concatenate(
                [
                    panel(cnn, m.bbox, [title, f"cnn map: P(defective) {ev.score:.2f}, distance {ev.ood_distance:.1f}"]),
                    panel(heat, m.bbox, ["heatmap: skin colour departure", "(the measured layer behind blemish cm2)"]),
                ],
                axis=0,
            )
        )
        print(f"{name}: score {ev.score:.3f}, map {np.round(ev.defect_map, 2).tolist()}, ood_distance {ev.ood_distance:.2f}")
    sep = np.full((columns[0].shape[0], 8, 3), 255, np.uint8)
    sheet = np.concatenate([x for c in columns for x in (c, sep)][:-1], axis=1)
    OUT.parent.mkdir(exist_ok=True)
    cv2.imwrite(str(OUT), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

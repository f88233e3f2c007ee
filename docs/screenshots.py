"""Make docs/img/review_page.png and docs/img/line_page.png: the inspectors' review page and the
live line page on a seeded lot, in headless Chromium.

    .venv/bin/python docs/screenshots.py

Starts a real `grader serve` in a temporary data dir, grades 40 seeded synthetic apples of known
size into one lot (calibrated at 0.3 mm/px, with Brix readings per fruit) and, when
../shared/data/fruitnet-apples is present, three real photos of defective apples (their scale is
unknown, so they are graded uncalibrated), signs in as an inspector and photographs the page at
1366×768 with the heat-map layer on; then a 20-second synthetic conveyor clip of 3 lanes is posted
and the supervisors' line page is photographed. Needs Debian's chromium
(/usr/bin/chromium) and the `dev` extra (playwright)."""

from __future__ import annotations

import io
import random
import sys
import tempfile
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from datasets.synthetic import make_fruit_image  # noqa: E402
from datasets.video import make_conveyor_clip  # noqa: E402
from service.process import ServerProcess  # noqa: E402

OUT = Path(__file__).parent / "img" / "review_page.png"
OUT_LINE = Path(__file__).parent / "img" / "line_page.png"
REAL_BAD = Path(__file__).resolve().parents[2] / "shared" / "data" / "fruitnet-apples" / "single" / "bad"
KEYS = {"camera": "shot-camera-key-0123456789", "inspector": "shot-inspector-key-0123456789"}
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def seed_lot(base: str) -> None:
    cam = {"X-API-Key": KEYS["camera"]}
    httpx.post(
        base + "/v1/lots", json={"id": "L-2026-031", "commodity": "apple", "grower": "Hillside Orchards", "variety": "Gala"}, headers=cam
    ).raise_for_status()
    rng = random.Random(7)
    for i in range(40):
        blemishes = (rng.choice([0.3, 0.9, 1.6]),) if i % 5 == 0 else ()
        img, _ = make_fruit_image(seed=i, diameter_mm=rng.gauss(72, 5), mm_per_px=0.3, blemishes_cm2=blemishes)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=92)
        fid = f"F-{i:04d}"
        httpx.post(
            base + "/v1/brix",
            json={"brix": round(rng.gauss(13.0, 1.1), 1), "source": "refractometer", "fruit_id": fid, "lot_id": "L-2026-031"},
            headers=cam,
        ).raise_for_status()
        httpx.post(
            base + "/v1/grade",
            files={"image": (f"{fid}.jpg", buf.getvalue(), "image/jpeg")},
            data={"lot_id": "L-2026-031", "camera_id": f"line1-cam{1 + i % 2}", "fruit_id": fid, "mm_per_px": "0.3"},
            headers=cam,
            timeout=60,
        ).raise_for_status()
    if REAL_BAD.is_dir():
        for path in sorted(REAL_BAD.glob("*.jpg"))[100:400:100]:
            httpx.post(
                base + "/v1/grade",
                files={"image": (path.name, path.read_bytes(), "image/jpeg")},
                data={"lot_id": "L-2026-031", "camera_id": "line1-cam1"},
                headers=cam,
                timeout=60,
            ).raise_for_status()


def main() -> None:
    from playwright.sync_api import sync_playwright

    with (
        tempfile.TemporaryDirectory() as tmp,
        ServerProcess(Path(tmp), {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in KEYS.items())}) as srv,
    ):
        seed_lot(srv.url)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1366, "height": 768})
            page.goto(srv.url + "/review")
            page.fill("#key", KEYS["inspector"])
            page.fill("#name", "Ana")
            page.click("#signin-form button[type=submit]")
            page.wait_for_selector("#picture[data-fruit]")
            page.keyboard.press("h")
            page.wait_for_selector("#picture[data-layers*=heatmap]")
            page.wait_for_selector("#lot-context svg")
            OUT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(OUT))

            clip = make_conveyor_clip(Path(tmp) / "belt.avi", lanes=3, seconds=20, seed=2)
            with open(clip.path, "rb") as f:
                httpx.post(
                    srv.url + "/v1/cameras/line1-cam2/video",
                    files={"video": ("belt.avi", f.read(), "video/x-msvideo")},
                    data={"mm_per_px": str(clip.mm_per_px), "lanes": "3", "belt_speed_mm_s": str(clip.speed_mm_s)},
                    headers={"X-API-Key": KEYS["camera"]},
                    timeout=600,
                ).raise_for_status()
            line = browser.new_page(viewport={"width": 1366, "height": 768})
            line.goto(srv.url + "/line")
            line.fill("#key", KEYS["inspector"])
            line.click("#signin-form button[type=submit]")
            line.wait_for_selector("#lanes .bar")
            line.wait_for_selector("#flagged img")
            line.wait_for_selector("#flagged img:not([src])", state="detached")  # every thumbnail loaded
            line.screenshot(path=str(OUT_LINE))
            browser.close()
    print(f"wrote {OUT} and {OUT_LINE}")


if __name__ == "__main__":
    main()

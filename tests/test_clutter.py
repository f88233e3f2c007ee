"""The belt path declines sizes in cluttered scenes (grader/clutter.py): a fruit the model knows
weakly, in a frame whose backdrop is textured or whose fruit check rejected a region, is graded but
not sized; on a plain belt the same fruit keeps its size."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import pytest

from datasets.synthetic import make_fruit_image
from grader.clutter import CLEAN_MIN_ROUNDNESS, CLUTTER_BACKDROP_TEXTURE, DECLINED_CODE, backdrop_texture, decline_in_clutter, weakly_known
from grader.measure import measure_image
from grader.records import DefectEvidence

from .conftest import headers, png_bytes

MM_PER_PX = 0.5
DIAMETER_MM = 70.0


def leafy(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic red fruit on a plain belt, and the same fruit among leaves, sky and branches."""
    plain, truth = make_fruit_image(seed=seed, diameter_mm=DIAMETER_MM, mm_per_px=MM_PER_PX, colour="red")
    h, w = plain.shape[:2]
    rng = np.random.default_rng(seed)
    scene = np.full((h, w, 3), (70, 90, 50), np.uint8)
    colours = [(40, 110, 30), (90, 150, 60), (230, 235, 240), (110, 80, 50), (20, 50, 20)]
    for _ in range(220):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = (int(rng.integers(6, 24)), int(rng.integers(3, 10)))
        cv2.ellipse(scene, centre, axes, float(rng.uniform(0, 180)), 0, 360, colours[int(rng.integers(0, len(colours)))], -1)
    r = truth.fruits[0].diameter_mm / MM_PER_PX / 2 + 1
    yy, xx = np.mgrid[:h, :w]
    fruit = (xx - w / 2 + 0.5) ** 2 + (yy - h / 2 + 0.5) ** 2 <= r * r
    return plain, np.where(fruit[..., None], plain, scene)


def evidence(ood_distance: float | None = None, fruit_score: float | None = None) -> DefectEvidence:
    return DefectEvidence("sound", 0.1, {"sound": 0.9, "defective": 0.1}, "m", "0", ood_distance=ood_distance, fruit_score=fruit_score)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_plain_belt_is_not_cluttered_and_leaves_are(seed):
    plain, scene = leafy(seed)
    assert backdrop_texture(plain) < 6
    assert backdrop_texture(scene) > CLUTTER_BACKDROP_TEXTURE


def test_weakly_known_reads_the_models_own_thresholds():
    assert not weakly_known(None, 90.0)
    assert not weakly_known(evidence(40.0, 0.99), 90.0)
    assert weakly_known(evidence(60.0, 0.99), 90.0)  # over 0.6 of the model's OOD distance
    assert weakly_known(evidence(40.0, 0.2), 90.0)  # the fruit check is unsure
    assert not weakly_known(evidence(60.0, None), None)  # a model without the distance says nothing


def test_only_weak_fruit_in_a_cluttered_frame_lose_their_size():
    plain, scene = leafy(0)
    [m] = measure_image(plain, MM_PER_PX)
    assert m.diameter_mm == pytest.approx(DIAMETER_MM, abs=2)
    weak, strong = evidence(80.0, 0.99), evidence(30.0, 0.99)
    # a plain belt: nothing is declined, however weakly the model knows the fruit
    assert decline_in_clutter(plain, [m], [weak], 0, 90.0)[0].diameter_mm is not None
    # a cluttered backdrop: the weak fruit is declined, with its reason and a flag; the strong one kept
    [d] = decline_in_clutter(scene, [m], [weak], 0, 90.0)
    assert d.diameter_mm is None and d.area_mm2 is None and d.size_declined == DECLINED_CODE
    assert d.diameter_px == m.diameter_px
    assert DECLINED_CODE in [f.code for f in d.quality_flags]
    assert decline_in_clutter(scene, [m], [strong], 0, 90.0)[0].diameter_mm == m.diameter_mm
    # a region the fruit check rejected makes a plain frame cluttered too
    assert decline_in_clutter(plain, [m], [weak], 1, 90.0)[0].size_declined == DECLINED_CODE
    # a well-known fruit whose outline is not clean (merged with a leaf) is declined in clutter only
    merged = replace(m, roundness=CLEAN_MIN_ROUNDNESS - 0.1)
    assert decline_in_clutter(scene, [merged], [strong], 0, 90.0)[0].size_declined == DECLINED_CODE
    assert decline_in_clutter(plain, [merged], [strong], 0, 90.0)[0].diameter_mm is not None


def _post(client, rgb: np.ndarray) -> dict:
    r = client.post(
        "/v1/grade",
        headers=headers(),
        files={"image": ("f.png", png_bytes(rgb), "image/png")},
        data={"mm_per_px": str(MM_PER_PX), "commodity": "apple"},
    )
    assert r.status_code == 200, r.text
    return r.json()


def test_through_http_no_confident_size_among_leaves_and_the_plain_belt_is_sized(client):
    plain, scene = leafy(0)
    [fruit] = _post(client, plain)["fruits"]
    assert fruit["diameter_mm"] == pytest.approx(DIAMETER_MM, abs=2)
    assert "size_declined" not in fruit
    body = _post(client, scene)
    sizes = [f["diameter_mm"] for f in body["fruits"] if f["diameter_mm"] is not None]
    assert all(abs(d - DIAMETER_MM) <= 10 for d in sizes)
    h, w = scene.shape[:2]
    centre = [f for f in body["fruits"] if f["bbox"][0] < w / 2 < f["bbox"][2] and f["bbox"][1] < h / 2 < f["bbox"][3]]
    assert centre and centre[0]["size_declined"] == DECLINED_CODE
    assert DECLINED_CODE in centre[0]["flags"]


def test_the_overlay_says_a_declined_size_is_not_sized():
    from grader.clutter import declined
    from grader.overlay import fruit_label

    plain, _ = leafy(0)
    [m] = measure_image(plain, MM_PER_PX)
    assert fruit_label(m).startswith("70.")
    assert fruit_label(declined(m), "Class I") == f"not sized: {DECLINED_CODE}\nClass I"


def test_the_overlay_of_a_declined_size_is_drawn(client):
    from grader.records import FruitMeasurement
    from service.routers.results import _as_stored_size

    _, scene = leafy(0)
    body = _post(client, scene)
    r = client.get(f"/v1/results/{body['id']}/overlay", headers=headers("inspector"))
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    [m] = measure_image(leafy(0)[0], MM_PER_PX)
    assert isinstance(m, FruitMeasurement)
    kept = _as_stored_size(m, {"size_declined": DECLINED_CODE})
    assert kept.diameter_mm is None and kept.size_declined == DECLINED_CODE and kept.diameter_px == m.diameter_px
    assert _as_stored_size(m, {}) is m

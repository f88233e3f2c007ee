"""Orchard scenes through POST /v1/grade (scene=orchard): a crop around one fruit sized from its own
pixels, the client's boxes replacing the detector, declined fruit with their reason, the uncertainty
per size, and the request's errors."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from grader.orchard import WindowMeasurement
from grader.orchard_circles import Circle
from grader.orchard_scene import (
    OUTLINE_REL_SE,
    SceneObject,
    SizedObject,
    outline_gap_deg,
    size_centre_fruit,
    size_object,
    size_scene,
    to_measurement,
)
from service.app import create_app
from service.settings import Settings

from .test_orchard import _foliage_frame

KEY = "orchard-camera-key-0123456789abcdef"
INSPECTOR = "orchard-inspector-key-0123456789ab"


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("orchard"),
        api_keys=f"camera:{KEY},inspector:{INSPECTOR}",
        rate_limit_per_min=0,
        review_sample_share=0.0,
        camera_scenes={"tree-1": "orchard"},
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _post(client, bgr: np.ndarray, **form):
    ok, enc = cv2.imencode(".png", bgr)
    return client.post(
        "/v1/grade",
        headers={"X-API-Key": KEY},
        files={"image": ("f.png", enc.tobytes(), "image/png")},
        data={"commodity": "apple", **{k: str(v) for k, v in form.items()}},
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_the_fruit_at_a_crops_centre_is_sized_without_a_box(seed):
    bgr, d_px, _ = _foliage_frame(seed, leaves=0)
    s = size_centre_fruit(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    assert s.reason == "ok" and s.diameter_px == pytest.approx(d_px, abs=2.0)


def test_scale_from_the_scenes_spheres_and_an_uncertainty_per_size(monkeypatch):
    bgr, d_px, (cx, cy) = _foliage_frame(3, leaves=0)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    box = (cx - d_px / 2, cy - d_px / 2, cx + d_px / 2, cy + d_px / 2)
    # the same disc as a fruit and as a "reference sphere" of 50 mm: the scale is 50 / its diameter
    scene = size_scene(rgb, [SceneObject("apple", box), SceneObject("tennis_ball", box)], reference_mm=50.0)
    assert scene.scale_source == "reference" and scene.mm_per_px == pytest.approx(50.0 / d_px, rel=0.05)
    f = scene.fruits[0]
    # the ± holds the caliper reading, not only the fit: the outline's own error is part of it
    assert f.diameter_mm == pytest.approx(50.0, abs=0.5)
    assert 2 * OUTLINE_REL_SE * f.diameter_mm <= f.diameter_uncertainty_mm < 2 * OUTLINE_REL_SE * f.diameter_mm + 5
    monkeypatch.setattr("grader.orchard_scene.OUTLINE_REL_SE", 0.0)
    fit_only = size_scene(rgb, [SceneObject("apple", box), SceneObject("tennis_ball", box)], reference_mm=50.0).fruits[0]
    assert 0 < fit_only.diameter_uncertainty_mm < 5  # the fit's spread, half a pixel, the single sphere's 2 %
    m = to_measurement(f, rgb.shape, scene.mm_per_px)
    assert m.diameter_mm == f.diameter_mm and m.size_declined is None and m.to_dict()["diameter_uncertainty_mm"] > 0


def test_too_small_and_hidden_fruit_are_declined_not_sized():
    bgr, d_px, (cx, cy) = _foliage_frame(4, diameter_mm=12.0, leaves=0)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    small = size_object(rgb, SceneObject("apple", (cx - 6, cy - 6, cx + 6, cy + 6)), [])
    assert small.diameter_px is None and small.reason == "too_small"
    # a fruit whose clean outline is only a 120-degree arc (the rest behind leaves): declined, with its reason
    pts = np.array([[70 + 25 * np.cos(t), 70 + 25 * np.sin(t)] for t in np.radians(np.arange(30, 150, 3))])
    window = WindowMeasurement(50.0, "ok", Circle(70.0, 70.0, 25.0), None, 0.33, pts)
    assert outline_gap_deg(window) == pytest.approx(243, abs=3)
    hidden = SizedObject(SceneObject("apple", (45, 45, 95, 95)), window, None, "occluded")
    m = to_measurement(hidden, rgb.shape, 0.5)
    assert m.diameter_mm is None and m.size_declined == "occluded" and [f.code for f in m.quality_flags] == ["occluded"]
    assert "size_declined" in m.to_dict() and "diameter_uncertainty_mm" not in m.to_dict()


def test_an_orchard_crop_through_http_is_sized_from_its_pixels(client):
    bgr, d_px, _ = _foliage_frame(1, leaves=0)
    r = _post(client, bgr, scene="orchard", mm_per_px=0.5)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["orchard"]["scene"] == "orchard"
    fruit = min(body["fruits"], key=lambda f: abs((f["bbox"][0] + f["bbox"][2]) / 2 - 70))
    assert fruit["diameter_mm"] == pytest.approx(d_px * 0.5, abs=1.0)
    assert fruit["diameter_uncertainty_mm"] > 0 and fruit["found_by"] in ("detector", "centre")
    assert body["calibration"] == {"mm_per_px": 0.5, "source": "request"}


def test_client_boxes_replace_the_detector_and_the_camera_says_orchard(client):
    bgr, d_px, (cx, cy) = _foliage_frame(2, leaves=1)
    boxes = json.dumps([[cx - d_px / 2 - 3, cy - d_px / 2 + 2, cx + d_px / 2 + 2, cy + d_px / 2 - 1]])  # a loose hand box
    r = _post(client, bgr, camera_id="tree-1", boxes=boxes, mm_per_px=1.0)  # the camera's scene: orchard
    assert r.status_code == 200, r.text
    fruits = r.json()["fruits"]
    assert len(fruits) == 1 and fruits[0]["found_by"] == "client"
    assert fruits[0]["diameter_mm"] == pytest.approx(d_px, abs=2.0)


@pytest.mark.parametrize(
    "form,field",
    [
        ({"scene": "tree"}, "scene"),
        ({"scene": "orchard", "boxes": "[[1, 2, 3]]"}, "boxes"),
        ({"scene": "orchard", "boxes": "not json"}, "boxes"),
        ({"scene": "orchard", "boxes": "[[5, 5, 2, 9]]"}, "boxes"),
        ({"scene": "orchard", "focal_px": "-3"}, "focal_px"),
    ],
)
def test_bad_orchard_fields_are_refused_naming_the_field(client, form, field):
    bgr, _, _ = _foliage_frame(1, leaves=0)
    r = _post(client, bgr, **form)
    assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text


def test_the_lot_report_sizes_only_sized_fruit_and_counts_the_declined(client):
    r = client.post("/v1/lots", headers={"X-API-Key": KEY}, json={"id": "tree-lot-1", "grower": "Orchard Co-op"})
    assert r.status_code in (200, 201), r.text
    bgr, d_px, (cx, cy) = _foliage_frame(1, leaves=0)
    tiny, _, (tx, ty) = _foliage_frame(4, diameter_mm=12.0, leaves=0)
    sized = _post(
        client, bgr, scene="orchard", mm_per_px=1.0, lot_id="tree-lot-1", boxes=json.dumps([[cx - 25, cy - 25, cx + 25, cy + 25]])
    )
    declined = _post(
        client, tiny, scene="orchard", mm_per_px=1.0, lot_id="tree-lot-1", boxes=json.dumps([[tx - 6, ty - 6, tx + 6, ty + 6]])
    )
    assert sized.status_code == 200 and declined.status_code == 200, (sized.text, declined.text)
    [f] = declined.json()["fruits"]
    assert f["diameter_mm"] is None and f["size_declined"] == "too_small" and "too_small" in f["flags"]
    rep = client.get("/v1/lots/tree-lot-1/report", headers={"X-API-Key": INSPECTOR}).json()
    assert "size_mm" in rep, rep
    assert rep["size_mm"]["n"] == 1 and rep["size_mm"]["not_sized"] == 1
    assert sum(b["count"] for b in rep["size_mm"]["histogram"]) == 1


def test_a_whole_frame_where_nothing_is_found_gives_no_fruit_not_a_centre_guess(client):
    frame = np.full((900, 1200, 3), (40, 90, 35), np.uint8)  # foliage colour, nothing round in it
    r = _post(client, frame, scene="orchard", mm_per_px=0.5)
    assert r.status_code == 200, r.text
    assert r.json()["n_fruits"] == 0


def test_a_circle_that_disagrees_with_its_fruits_box_is_declined():
    from grader.orchard_scene import MAX_BOX_DISAGREEMENT

    bgr, d_px, (cx, cy) = _foliage_frame(5, leaves=0)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    tight = (cx - d_px / 2, cy - d_px / 2, cx + d_px / 2, cy + d_px / 2)
    sized = size_object(rgb, SceneObject("apple", tight), [])
    assert sized.reason == "ok" and sized.diameter_px == pytest.approx(d_px, abs=2.0)
    # the same fruit under a box whose side is 1.2 its width (a detector's loose box, a careless
    # annotator's): the box still only says where, the circle is found again, and the two disagree
    # by more than MAX_BOX_DISAGREEMENT: declined rather than trusted
    half = 0.6 * d_px
    loose = size_object(rgb, SceneObject("apple", (cx - half, cy - half, cx + half, cy + half)), [])
    assert abs(loose.window.diameter_px / (2 * half) - 1) > MAX_BOX_DISAGREEMENT
    assert loose.diameter_px is None and loose.reason == "no_clean_outline"
    # a box tried around a crop's centre says nothing of the size: never a reason to decline
    centred = size_object(rgb, SceneObject("apple", (cx - half, cy - half, cx + half, cy + half), "centre"), [])
    assert centred.reason == "ok"


def _tight_crop(seed: int, mult: float) -> tuple[np.ndarray, float]:
    bgr, d_px, (cx, cy) = _foliage_frame(seed, leaves=0)
    half = d_px * mult / 2
    return np.ascontiguousarray(bgr[int(cy - half) : int(cy + half), int(cx - half) : int(cx + half)]), d_px


@pytest.mark.parametrize("mult", [1.15, 1.3])
def test_a_fruit_filling_a_tight_crop_is_declined_not_sized_from_a_ring_inside_it(mult):
    """Seeded small inside a fruit that fills the crop, the colour model finds a ring of its shading
    (the size came back 35-45 % of the truth before); the seeds disagree, so the fruit is declined."""
    crop, d_px = _tight_crop(1, mult)
    s = size_centre_fruit(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
    assert s.diameter_px is None or s.diameter_px == pytest.approx(d_px, abs=2.0)
    assert s.reason in ("ok", "no_clean_outline")


@pytest.mark.parametrize("mult", [1.15, 1.3, 2.0])
def test_tight_and_loose_crops_through_http_are_sized_right_or_declined(client, mult):
    crop, d_px = _tight_crop(2, mult)
    body = _post(client, crop, scene="orchard", mm_per_px=0.5).json()
    assert len(body["fruits"]) >= 1
    for f in body["fruits"]:
        assert f["diameter_mm"] is None or f["diameter_mm"] == pytest.approx(d_px * 0.5, abs=1.0)
        assert (f["diameter_mm"] is None) == (f.get("size_declined") is not None)
    if mult == 2.0:
        assert body["fruits"][0]["diameter_mm"] is not None


class ScriptedDetector:
    """The detector's interface answering with boxes given in the crop's own pixels (shifted into
    the mirrored crop the service hands it), and a mirror image of the first one: the crop path's
    geometry is tested apart from what the shipped network finds in synthetic discs."""

    classes = ["apple", "tennis_ball"]
    thresholds = [0.24, 0.27]

    def __init__(self, boxes: list[tuple[float, float, float, float]], side: int) -> None:
        self.boxes, self.side = boxes, side

    def detect(self, image, min_scores=None):
        from inference.detector import Detection
        from service.orchard import CROP_CONTEXT_SHARE

        pad = int(round(CROP_CONTEXT_SHARE * self.side))
        out = [Detection("apple", tuple(v + pad for v in b), 0.9) for b in self.boxes]
        if self.boxes:
            x0, y0, x1, y1 = self.boxes[0]
            out.append(Detection("apple", (x0 + pad - self.side, y0 + pad, x1 + pad - self.side, y1 + pad), 0.5))
        return out


def test_a_crop_is_sized_in_its_own_pixels_after_the_mirrored_context():
    """The crop path sizes on the crop mirrored outwards: every box, circle and edge point comes back
    in the crop's pixels, and mirror images of the fruit are not reported."""
    from service.orchard import _crop_scene

    crop, d_px = _tight_crop(3, 2.0)
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    c, r = (rgb.shape[0] - 1) / 2, d_px / 2 + 2
    scene = _crop_scene(rgb, ScriptedDetector([(c - r, c - r, c + r, c + r)], rgb.shape[0]), 0.5, None, 65.46)
    assert len(scene.fruits) == 1
    f = scene.fruits[0]
    assert f.diameter_mm == pytest.approx(d_px * 0.5, abs=1.0)
    c = (rgb.shape[1] - 1) / 2
    assert f.circle.cx_px == pytest.approx(c, abs=2.0) and f.circle.cy_px == pytest.approx(c, abs=2.0)
    assert 0 <= f.window.edge_px.min() and f.window.edge_px.max() <= rgb.shape[0]
    assert f.obj.box_xyxy[0] == pytest.approx(c - d_px / 2 - 2)


def test_the_fruit_at_a_crops_centre_is_reported_beside_another_one_the_detector_found():
    """The detector found only a fruit near the crop's corner: the crop's own fruit, at its centre,
    is sized as well (a client takes the fruit nearest the centre); background at the centre of a
    crop cut off-centre by its frame is not added as a fruit."""
    from service.orchard import resolve_orchard

    bgr, d_px, (cx, cy) = _foliage_frame(4, leaves=0)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    corner = (2.0, 2.0, 30.0, 30.0)
    frame, record = resolve_orchard(rgb, None, ScriptedDetector([corner], rgb.shape[0]), 0.5, None, None, 65.46)
    centre = [m for m in frame.fruit if m.found_by == "centre"]
    assert len(frame.fruit) == 2 and len(centre) == 1
    assert frame.fruit[0] is centre[0]  # a crop's own fruit comes first
    assert centre[0].diameter_mm == pytest.approx(d_px * 0.5, abs=1.0)
    assert record["found_by"] == "detector"

    # the same fruit, found by the detector, in a crop whose centre holds only background
    x0 = int(cx - d_px / 2) - 10
    shifted = cv2.copyMakeBorder(np.ascontiguousarray(rgb[:, x0:]), 0, 0, 0, 100, cv2.BORDER_REPLICATE)
    box = (cx - x0 - d_px / 2 - 2, cy - d_px / 2 - 2, cx - x0 + d_px / 2 + 2, cy + d_px / 2 + 2)
    assert box[2] < shifted.shape[1] / 2  # the fruit's box does not hold the crop's centre
    frame, _ = resolve_orchard(shifted, None, ScriptedDetector([box], max(shifted.shape[:2])), 0.5, None, None, 65.46)
    assert [m.found_by for m in frame.fruit] == ["detector"]
    assert frame.fruit[0].diameter_mm == pytest.approx(d_px * 0.5, abs=1.0)


def test_a_crops_detector_box_is_given_a_wider_tolerance_than_a_frames():
    """On a crop the detector's boxes are looser: a circle 14 % inside its box is declined on a
    frame (MAX_BOX_DISAGREEMENT) and kept on a crop (CROP_MAX_BOX_DISAGREEMENT)."""
    from grader.orchard_scene import MAX_BOX_DISAGREEMENT
    from service.orchard import CROP_MAX_BOX_DISAGREEMENT

    bgr, d_px, (cx, cy) = _foliage_frame(5, leaves=0)
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    half = d_px / 2 / 0.86
    box = SceneObject("apple", (cx - half, cy - half, cx + half, cy + half), "detector")
    assert MAX_BOX_DISAGREEMENT < abs(d_px / (2 * half) - 1) < CROP_MAX_BOX_DISAGREEMENT
    assert size_object(rgb, box, []).reason == "no_clean_outline"
    kept = size_object(rgb, box, [], max_box_disagreement=CROP_MAX_BOX_DISAGREEMENT)
    assert kept.reason == "ok" and kept.diameter_px == pytest.approx(d_px, abs=2.0)


def _hard_discs(
    discs: list[tuple[tuple[int, int], int, tuple[int, int, int]]], seed: int = 0
) -> tuple[np.ndarray, list[tuple[float, ...]]]:
    """Discs drawn without anti-aliasing on a noisy foliage green, with the box of the pixels each
    covers (as an annotator or a client's tool draws it: whole pixels)."""
    rng = np.random.default_rng(seed)
    img = np.clip(np.full((220, 320, 3), (40, 90, 35), np.float64) + rng.normal(0, 6, (220, 320, 3)), 0, 255).astype(np.uint8)
    boxes = []
    for centre, r, colour in discs:
        cv2.circle(img, centre, r, colour, -1, cv2.LINE_8)
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.circle(mask, centre, r, 1, -1, cv2.LINE_8)
        ys, xs = np.nonzero(mask)
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)))
    return img, boxes


@pytest.mark.parametrize("radius_px", [15, 25, 40])
def test_a_size_counts_the_whole_pixels_a_fruit_covers(radius_px):
    # the fitted circle runs through the middle of the edge; the fruit covers half a pixel more each side
    img, [box] = _hard_discs([((110, 107), radius_px, (200, 40, 30))])
    s = size_object(img, SceneObject("apple", box, "client"), [])
    assert s.reason == "ok" and s.diameter_px == pytest.approx(box[2] - box[0], abs=0.5)


def test_a_large_frame_is_sized_on_a_smaller_copy_and_answered_in_its_own_pixels(client, monkeypatch):
    # a frame of many megapixels: sized at the resolution the method was measured at, every box,
    # circle and size mapped back to the frame's own pixels
    import service.orchard
    from service.orchard import FRAME_MAX_SIDE_PX, FRAME_SIZING_SIDE_PX

    seen: list[tuple[int, ...]] = []

    def recording(image, *args, **kwargs):
        seen.append(image.shape)
        return size_scene(image, *args, **kwargs)

    monkeypatch.setattr(service.orchard, "size_scene", recording)
    rng = np.random.default_rng(7)
    h, w = 1800, 3200
    assert max(h, w) > FRAME_MAX_SIDE_PX
    img = np.clip(np.full((h, w, 3), (40, 90, 35), np.float64) + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
    discs = [((900, 700), 120, (30, 40, 200), "apple"), ((2300, 1100), 90, (210, 220, 60), "tennis_ball")]
    boxes = []
    for (cx, cy), r, colour, kind in discs:
        cv2.circle(img, (cx, cy), r, colour, -1, cv2.LINE_AA)
        boxes.append({"box": [cx - r, cy - r, cx + r + 1, cy + r + 1], "kind": kind})
    r = _post(client, img, scene="orchard", boxes=json.dumps(boxes), mm_per_px=0.25)
    assert r.status_code == 200, r.text
    body = r.json()
    [fruit] = body["fruits"]
    assert fruit["bbox"] == pytest.approx(boxes[0]["box"], abs=2.0)  # the disc's place in the frame's own pixels
    assert fruit["diameter_mm"] == pytest.approx((2 * 120 + 1) * 0.25, rel=0.02)
    [ball] = body["orchard"]["references"]
    assert ball["diameter_px"] == pytest.approx(2 * 90 + 1, rel=0.02)  # in the frame's own pixels
    assert seen and all(max(shape[:2]) == FRAME_SIZING_SIDE_PX for shape in seen)

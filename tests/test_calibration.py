"""Both calibration routes over HTTP: a camera's reference image, and reference spheres in a frame."""

import pytest

from datasets.synthetic import FruitSpec, make_frame, make_fruit_image

from .conftest import headers, jpeg_bytes, png_bytes

TENNIS_MM = 65.46


def post_grade(client, img, **form):
    return client.post(
        "/v1/grade", files={"image": ("f.png", png_bytes(img), "image/png")}, data={k: str(v) for k, v in form.items()}, headers=headers()
    )


def test_camera_calibration_then_grades_use_it(client):
    disc, _ = make_fruit_image(seed=1, diameter_mm=80.0, mm_per_px=0.4, colour="tennis", background="belt")
    r = client.post(
        "/v1/cameras/cam-7/calibration",
        files={"image": ("ref.jpg", jpeg_bytes(disc), "image/jpeg")},
        data={"reference_diameter_mm": "80"},
        headers=headers(),
    )
    assert r.status_code == 200, r.text
    cal = r.json()
    assert cal["mm_per_px"] == pytest.approx(0.4, rel=0.01) and cal["camera_id"] == "cam-7"
    assert client.get("/v1/cameras/cam-7/calibration", headers=headers("inspector")).json()["mm_per_px"] == cal["mm_per_px"]

    fruit, _ = make_fruit_image(seed=2, diameter_mm=70.0, mm_per_px=0.4)
    body = post_grade(client, fruit, camera_id="cam-7").json()
    assert body["calibration"]["source"] == "camera"
    assert body["fruits"][0]["diameter_mm"] == pytest.approx(70.0, abs=0.8)
    assert "uncalibrated" not in body["fruits"][0]["flags"]

    # a request's own mm_per_px overrides the camera's calibration
    body = post_grade(client, fruit, camera_id="cam-7", mm_per_px=0.2).json()
    assert body["calibration"] == {"mm_per_px": 0.2, "source": "request"}
    assert body["fruits"][0]["diameter_mm"] == pytest.approx(35.0, abs=0.5)


def test_uncalibrated_camera_is_flagged(client):
    fruit, _ = make_fruit_image(seed=2, diameter_mm=70.0, mm_per_px=0.4)
    body = post_grade(client, fruit, camera_id="never-calibrated").json()
    assert body["calibration"]["source"] == "none" and "uncalibrated" in body["fruits"][0]["flags"]
    assert client.get("/v1/cameras/never-calibrated/calibration", headers=headers("inspector")).status_code == 404


def test_calibration_refuses_a_non_round_or_missing_reference(client):
    oval, _ = make_fruit_image(seed=1, diameter_mm=80.0, mm_per_px=0.4, aspect=0.55)
    r = client.post(
        "/v1/cameras/cam-8/calibration",
        files={"image": ("o.png", png_bytes(oval), "image/png")},
        data={"reference_diameter_mm": "80"},
        headers=headers(),
    )
    assert r.status_code == 422 and "not round" in r.json()["error"]["message"]
    empty, _ = make_frame([], mm_per_px=0.5, size_px=(200, 200))
    r = client.post(
        "/v1/cameras/cam-8/calibration",
        files={"image": ("e.png", png_bytes(empty), "image/png")},
        data={"reference_diameter_mm": "80"},
        headers=headers(),
    )
    assert r.status_code == 422 and r.json()["error"]["code"] == "calibration_failed"
    r = client.post(
        "/v1/cameras/cam-8/calibration",
        files={"image": ("e.png", png_bytes(empty), "image/png")},
        data={"reference_diameter_mm": "-3"},
        headers=headers(),
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "reference_diameter_mm"
    assert (
        client.post(
            "/v1/cameras/cam-8/calibration",
            files={"image": ("e.png", png_bytes(empty), "image/png")},
            data={"reference_diameter_mm": "80"},
            headers=headers("inspector"),
        ).status_code
        == 403
    )


def test_reference_spheres_in_the_frame_set_the_scale_and_are_not_graded(client):
    specs = [
        FruitSpec(TENNIS_MM, (45, 45), colour="tennis"),
        FruitSpec(72, (130, 50)),
        FruitSpec(58, (210, 48), colour="green"),
        FruitSpec(TENNIS_MM, (290, 50), colour="tennis"),
    ]
    img, _ = make_frame(specs, mm_per_px=0.5, size_px=(200, 680), seed=5)
    body = post_grade(client, img, reference_diameter_mm=TENNIS_MM).json()
    assert body["calibration"]["source"] == "reference"
    assert body["calibration"]["mm_per_px"] == pytest.approx(0.5, rel=0.01)
    assert len(body["references"]) == 2
    assert [round(f["diameter_mm"]) for f in body["fruits"]] == [72, 58]


def test_promised_reference_missing_is_flagged(client):
    img, _ = make_fruit_image(seed=3, diameter_mm=70, mm_per_px=0.4)
    body = post_grade(client, img, reference_diameter_mm=TENNIS_MM).json()
    assert body["calibration"]["source"] == "none"
    assert "reference_not_found" in [f["code"] for f in body["image_flags"]]


def test_calibration_learns_the_focal_length_from_a_reference_at_a_known_distance(client):
    import math

    from grader.calibration import focal_from_reference

    # a 65.46 mm ball 1500 mm from a camera of focal length 1480 px images about 64.6 px wide
    r_mm, z_mm, f_px = TENNIS_MM / 2, 1500.0, 1480.0
    width_px = 2 * f_px * r_mm / math.sqrt(z_mm**2 - r_mm**2)
    assert focal_from_reference(width_px, TENNIS_MM, z_mm) == pytest.approx(f_px, rel=1e-9)

    # the same through HTTP: the ball drawn 0.4 mm/px wide, at 1000 mm
    ball, _ = make_fruit_image(seed=1, diameter_mm=TENNIS_MM, mm_per_px=0.4, colour="tennis", background="belt")
    r = client.post(
        "/v1/cameras/tree-cam/calibration",
        files={"image": ("ref.png", png_bytes(ball), "image/png")},
        data={"reference_diameter_mm": str(TENNIS_MM), "reference_distance_mm": "1000"},
        headers=headers(),
    )
    assert r.status_code == 200, r.text
    cal = r.json()
    want = (TENNIS_MM / 0.4 / 2) * math.sqrt(1000**2 - r_mm**2) / r_mm
    assert cal["reference_distance_mm"] == 1000 and cal["focal_px"] == pytest.approx(want, rel=0.01)
    assert client.get("/v1/cameras/tree-cam/calibration", headers=headers("inspector")).json()["focal_px"] == cal["focal_px"]

    # an orchard photo from that camera is corrected with the learned focal length; a request's own wins
    fruit, _ = make_fruit_image(seed=2, diameter_mm=70.0, mm_per_px=0.4, background="belt")
    body = post_grade(client, fruit, camera_id="tree-cam", scene="orchard").json()
    assert body["orchard"]["focal_source"] == "calibration" and body["orchard"]["focal_px"] == pytest.approx(cal["focal_px"], abs=0.1)
    body = post_grade(client, fruit, camera_id="tree-cam", scene="orchard", focal_px=2000).json()
    assert body["orchard"]["focal_source"] == "request" and body["orchard"]["focal_px"] == 2000

    # a distance inside the ball is refused, naming the field
    r = client.post(
        "/v1/cameras/tree-cam/calibration",
        files={"image": ("ref.png", png_bytes(ball), "image/png")},
        data={"reference_diameter_mm": str(TENNIS_MM), "reference_distance_mm": "20"},
        headers=headers(),
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "reference_distance_mm"

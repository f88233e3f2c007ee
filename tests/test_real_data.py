"""Real photos from ../shared/data through the service; skipped cleanly where the data is absent."""

import pytest

from .conftest import headers

pytestmark = pytest.mark.realdata


def test_real_apple_photos_are_graded(client, shared_data):
    photos = sorted((shared_data / "fruitnet-apples" / "single" / "good").glob("*.jpg"))[:2]
    photos += sorted((shared_data / "fruitnet-apples" / "single" / "bad").glob("*.jpg"))[:2]
    for p in photos:
        r = client.post("/v1/grade", files={"image": (p.name, p.read_bytes(), "image/jpeg")}, data={"mm_per_px": "0.2"}, headers=headers())
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["fruits"]) >= 1, p.name
        assert all(0 <= f["defect"]["score"] <= 1 for f in body["fruits"])


def test_the_default_apple_model_on_unseen_capture_sessions_through_http(client, shared_data):
    """Photos of the two capture sessions no apple model learned from (IMG_9xxx all sound, 20190824
    all defective), every twelfth posted as a packhouse posts them: each gives exactly its one fruit
    (so nothing else can reach the review queue), and sound and defective are told apart (every
    photo: bench/http_eval.py)."""
    from datasets import fruitnet

    items = fruitnet.build_manifest(shared_data / "fruitnet-apples", {"test": ["IMG_9xxx", "20190824"]}, "single")
    right = {"sound": [], "defective": []}
    for label in right:
        chosen = [it for it in items if (it.label == "defective") == (label == "defective")][::12]
        for it in chosen:
            p = shared_data / "fruitnet-apples" / it.path
            r = client.post(
                "/v1/grade", files={"image": (p.name, p.read_bytes(), "image/jpeg")}, data={"commodity": "apple"}, headers=headers()
            )
            assert r.status_code == 200, r.text
            fruits = r.json()["fruits"]
            assert len(fruits) == 1, p.name
            right[label].append((fruits[0]["defect"]["label"] != "sound") == (label == "defective"))
    assert min(len(v) for v in right.values()) >= 20
    assert sum(sum(v) / len(v) for v in right.values()) / 2 >= 0.9, {k: sum(v) / len(v) for k, v in right.items()}

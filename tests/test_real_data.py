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

"""`grader serve` as a real process: a camera posts over real HTTP, the result survives a restart."""

import httpx
import pytest

from datasets.synthetic import make_fruit_image
from service.process import ServerProcess, free_port

from .conftest import API_KEYS, jpeg_bytes

pytestmark = pytest.mark.slow


def start(tmp_path, port, extra_env=None) -> ServerProcess:
    env = {"GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items()), **(extra_env or {})}
    return ServerProcess(tmp_path / "var", env, port=port).start()


def test_grade_over_real_http_and_result_survives_restart(tmp_path):
    port = free_port()
    img, _ = make_fruit_image(seed=3, diameter_mm=68, mm_per_px=0.25)
    proc = start(tmp_path, port)
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/grade", files={"image": ("a.jpg", jpeg_bytes(img), "image/jpeg")},
                       data={"mm_per_px": "0.25"}, headers={"X-API-Key": API_KEYS["camera"]}, timeout=30)
        assert r.status_code == 200, r.text
        rid = r.json()["id"]
    finally:
        proc.stop()
    proc = start(tmp_path, port)
    try:
        again = httpx.get(f"http://127.0.0.1:{port}/v1/results/{rid}", headers={"X-API-Key": API_KEYS["inspector"]}, timeout=10)
        assert again.status_code == 200
        assert again.json()["fruits"][0]["diameter_mm"] == pytest.approx(68, abs=1)
    finally:
        proc.stop()

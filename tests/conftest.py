from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

API_KEYS = {
    "camera": "cam-key-123456",
    "inspector": "insp-key-123456",
    "trainer": "train-key-123456",
    "admin": "admin-key-123456",
}


def jpeg_bytes(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def settings(tmp_path):
    from service.settings import Settings

    return Settings(
        data_dir=tmp_path / "var",
        api_keys=",".join(f"{r}:{k}" for r, k in API_KEYS.items()),
    )


@pytest.fixture
def client(settings):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


def headers(role: str = "camera") -> dict[str, str]:
    return {"X-API-Key": API_KEYS[role]}


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "fruitnet-apples").is_dir():
        pytest.skip("../shared/data is not present on this machine")
    return SHARED_DATA

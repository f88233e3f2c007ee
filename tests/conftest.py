from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

API_KEYS = {
    "camera": "camera-key-0123456789ab",
    "inspector": "inspector-key-0123456789",
    "trainer": "trainer-key-0123456789ab",
    "admin": "admin-key-0123456789abcd",
}


#: `grader train` overrides for a one-epoch model on a few synthetic fruit, small enough for a test
TINY_TRAIN = [
    "data.kind=synthetic",
    "data.n=24",
    "data.cache_size=64",
    "train.epochs=1",
    "train.batch_size=16",
    "model.arch=small_fruitnet_lite",
    "model.input_size=48",
    "version=0.0.1",
    "model.test_time_views=1",
    "train.method=finetune",
    "fruit_check=null",
]


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
        review_sample_share=0.0,  # tests that count flagged fruit must not meet a sampled one
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


PG_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _new_pg_database():
    """A new, empty PostgreSQL database (dropped when the generator closes); skips without a server."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    pytest.importorskip("psycopg")
    name = f"grader_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:  # no server on this machine
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432: {exc}")
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture
def fresh_pg_url():
    """A database of its own for one test."""
    yield from _new_pg_database()


@pytest.fixture(scope="session")
def pg_url():
    """One database for the whole run."""
    yield from _new_pg_database()

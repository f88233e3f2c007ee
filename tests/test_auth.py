"""API keys: kept hashed, compared in constant time, never shown; per-key rate limits."""

from __future__ import annotations

import hashlib
import json

import pytest

from service.auth import KeyRing, RateLimiter, fingerprint, load_or_create_keys, parse_api_keys

from .conftest import API_KEYS, headers


def test_generated_keys_are_shown_once_and_stored_hashed(tmp_path):
    ring, path, fresh = load_or_create_keys(None, tmp_path)
    assert set(fresh) == {"camera", "inspector", "trainer", "admin"}
    text = path.read_text()
    for key in fresh.values():
        assert key not in text  # only digests on disk
        assert ring.lookup(key) is not None
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    again, _, fresh2 = load_or_create_keys(None, tmp_path)
    assert fresh2 == {} and again.lookup(fresh["camera"]).role == "camera"


def test_an_older_plain_keys_file_is_rewritten_hashed(tmp_path):
    (tmp_path / "api_keys.json").write_text(json.dumps({"camera": "old-camera-key-1"}))
    ring, path, fresh = load_or_create_keys(None, tmp_path)
    assert fresh == {} and ring.lookup("old-camera-key-1").role == "camera"
    assert "old-camera-key-1" not in path.read_text()


def test_env_keys_plain_or_as_digests():
    d = hashlib.sha256(b"inspector-secret-9").hexdigest()
    ring = parse_api_keys(f"camera:camera-secret-0123456789, inspector:sha256:{d}")
    assert ring.lookup("camera-secret-0123456789").role == "camera"
    assert ring.lookup("inspector-secret-9").role == "inspector"
    assert ring.lookup("inspector-secret-") is None and ring.lookup("") is None
    with pytest.raises(ValueError) as err:
        parse_api_keys("camera:short")
    assert "short" not in str(err.value)  # a key never appears in an error
    with pytest.raises(ValueError) as err:  # keys set in the environment: 20 characters at least
        parse_api_keys("camera:nineteen-chars-key")
    assert "20" in str(err.value) and "nineteen" not in str(err.value)
    with pytest.raises(ValueError):
        parse_api_keys("camera:twenty-characters-k")  # 19
    assert parse_api_keys("camera:twenty-characters-ke").lookup("twenty-characters-ke").role == "camera"
    with pytest.raises(ValueError):
        parse_api_keys("camera:sha256:nothex")


def test_principals_carry_a_fingerprint_not_the_key():
    ring = KeyRing()
    ring.add("camera", hashlib.sha256(b"camera-secret-1").hexdigest())
    p = ring.lookup("camera-secret-1")
    assert p.key_id == fingerprint(hashlib.sha256(b"camera-secret-1").hexdigest()) and "secret" not in p.key_id


def test_claims_name_the_key_by_fingerprint(client):
    """Where a key must be named (a claim made without an inspector name), its fingerprint is used."""
    from datasets.synthetic import make_fruit_image

    from .conftest import png_bytes

    img, _ = make_fruit_image(seed=1)
    client.post("/v1/grade", files={"image": ("f.png", png_bytes(img), "image/png")}, headers=headers())
    fruit = client.get("/v1/review/queue", headers=headers("inspector")).json()["items"][0]["fruit"]
    who = client.post(f"/v1/review/fruits/{fruit}/claim", headers=headers("inspector")).json()["claimed_by"]
    assert API_KEYS["inspector"] not in who and who.startswith("inspector k-")


def test_rate_limiter_bucket():
    rl = RateLimiter(per_min=60)  # 1/s, bursts of 10
    assert all(rl.take("a") == 0 for _ in range(10))
    wait = rl.take("a")
    assert 0 < wait <= 1.0
    assert rl.take("b") == 0  # per key
    assert RateLimiter(0).take("a") == 0  # off


def test_requests_past_the_key_budget_get_429(tmp_path):
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings

    s = Settings(
        data_dir=tmp_path / "var", api_keys=",".join(f"{r}:{k}" for r, k in API_KEYS.items()), rate_limit_per_min=12
    )  # bursts of 2
    with TestClient(create_app(s)) as c:
        codes = [c.get("/v1/lots", headers=headers("inspector")).status_code for _ in range(3)]
        assert codes == [200, 200, 429]
        r = c.get("/v1/lots", headers=headers("inspector"))
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and r.json()["error"]["code"] == "rate_limited"
        assert API_KEYS["inspector"] not in r.text
        assert c.get("/v1/lots", headers=headers("camera")).status_code == 200  # another key has its own budget

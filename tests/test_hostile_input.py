"""Hostile input: a corpus of broken and malicious image files, and identifiers built to escape
the data dir or break SQL. Each gets a clear 4xx or a correct grade, never a 500 or a hang."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from datasets.synthetic import FruitSpec, make_frame

from .conftest import headers, jpeg_bytes, png_bytes

MM_PER_PX = 0.3


@pytest.fixture(scope="module")
def frame():
    """One 74 mm fruit off-centre (so a rotation moves its box), 480x640."""
    img, truth = make_frame([FruitSpec(74, (60, 70))], mm_per_px=MM_PER_PX, seed=5)
    return img, truth.fruits[0]


def post(client, data: bytes, name: str = "f.jpg", ctype: str = "image/jpeg", **form):
    return client.post("/v1/grade", files={"image": (name, data, ctype)}, data={"mm_per_px": str(MM_PER_PX), **form}, headers=headers())


def _png_with_size(w: int, h: int) -> bytes:
    """A valid tiny PNG whose header claims w x h pixels (a decompression bomb's calling card)."""
    raw = png_bytes(np.zeros((16, 16, 3), np.uint8))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return raw[:8] + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk)) + raw[33:]


def _jpeg_with_size(jpeg: bytes, w: int, h: int) -> bytes:
    i = jpeg.index(b"\xff\xc0")  # baseline SOF0: length(2) precision(1) height(2) width(2)
    return jpeg[: i + 5] + struct.pack(">HH", h, w) + jpeg[i + 9 :]


def _exif_orientation(img: np.ndarray, orientation: int) -> bytes:
    pil = Image.fromarray(img)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    pil.save(buf, format="JPEG", quality=95, exif=exif)
    return buf.getvalue()


def _animated(fmt: str) -> bytes:
    frames = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (40, 200)]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


REFUSED = {
    "zero-size": lambda img: b"",
    "truncated": lambda img: jpeg_bytes(img)[:2000],
    "wrong magic": lambda img: b"\x00\x01\x02\x03" + jpeg_bytes(img)[4:],
    "text posing as jpeg": lambda img: b"GET / HTTP/1.1\r\n" * 50,
    "pdf": lambda img: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF",
    "giant png dimensions": lambda img: _png_with_size(100_000, 100_000),
    "giant jpeg dimensions": lambda img: _jpeg_with_size(jpeg_bytes(img), 60_000, 60_000),
    "animated gif": lambda img: _animated("GIF"),
    "animated webp": lambda img: _animated("WEBP"),
    "animated png": lambda img: _animated("PNG"),
    "tiny": lambda img: png_bytes(np.zeros((4, 4, 3), np.uint8)),
    "svg": lambda img: b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_broken_and_malicious_files_get_a_clear_422(client, frame, name):
    r = post(client, REFUSED[name](frame[0]))
    assert r.status_code == 422, (name, r.status_code, r.text)
    err = r.json()["error"]
    assert err["field"] == "image" and err["message"]
    assert client.get("/v1/results", headers=headers("inspector")).json()["items"] == [], "nothing stored"


def _cmyk_jpeg(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).convert("CMYK").save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png16(img: np.ndarray) -> bytes:
    ok, enc = cv2.imencode(".png", cv2.cvtColor(img, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    return enc.tobytes()


def _polyglot_zip(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    import zipfile

    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("evil.sh", "rm -rf /\n")
    return jpeg_bytes(img) + buf.getvalue()  # a JPEG and a ZIP at once


def _png_with_html_chunk(img: np.ndarray) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "<html><script>alert(document.cookie)</script></html>")
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


GRADED = {
    "cmyk jpeg": _cmyk_jpeg,
    "16-bit png": _png16,
    "jpeg + zip polyglot": _polyglot_zip,
    "png with html in a text chunk": _png_with_html_chunk,
    "exif orientation out of range": lambda img: _exif_orientation(img, 42),
}


@pytest.mark.parametrize("name", sorted(GRADED))
def test_odd_but_valid_files_are_graded_correctly(client, frame, name):
    img, truth = frame
    r = post(client, GRADED[name](img))
    assert r.status_code == 200, (name, r.text)
    fruit = r.json()["fruits"]
    assert len(fruit) == 1 and fruit[0]["diameter_mm"] == pytest.approx(truth.diameter_mm, abs=1.5)
    served = client.get(f"/v1/results/{r.json()['id']}/image", headers=headers("inspector"))
    assert served.headers["content-type"] in ("image/jpeg", "image/png") and served.headers["x-content-type-options"] == "nosniff"


def test_exif_orientation_is_applied(client, frame):
    """A camera that stores its frames sideways with an EXIF orientation tag: the fruit is found
    where the picture shows it, not where the raw pixels put it."""
    img, truth = frame
    sideways = np.ascontiguousarray(np.rot90(img, k=1))  # raw pixels rotated 90° counter-clockwise...
    r = post(client, _exif_orientation(sideways, 6))  # ...and tagged "rotate 90° clockwise to view"
    assert r.status_code == 200
    upright = post(client, jpeg_bytes(img)).json()["fruits"][0]["bbox"]
    assert np.allclose(r.json()["fruits"][0]["bbox"], upright, atol=3)


def test_decoding_has_a_time_budget(settings, frame):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings.model_copy(update={"decode_budget_s": 1e-6}))) as c:
        r = post(c, jpeg_bytes(frame[0]))
    assert r.status_code == 422 and "took longer" in r.json()["error"]["message"]


ODD_IDS = ["../../etc/passwd", "..\\..\\windows\\win.ini", "🍎-线-\u202eevil", "x'; DROP TABLE results;--", "%2e%2e%2f", "a" * 100]


@pytest.mark.parametrize("camera_id", ODD_IDS, ids=range(len(ODD_IDS)))
def test_identifiers_are_data_never_paths_or_sql(client, frame, settings, camera_id):
    r = post(client, jpeg_bytes(frame[0]), camera_id=camera_id, fruit_id=camera_id)
    assert r.status_code == 200, r.text
    rid = r.json()["id"]
    got = client.get(f"/v1/results/{rid}", headers=headers("inspector")).json()
    assert got["camera_id"] == camera_id  # stored and returned as given
    listed = client.get("/v1/results", params={"camera_id": camera_id}, headers=headers("inspector")).json()["items"]
    assert [x["id"] for x in listed] == [rid]
    # nothing was written outside the content-addressed image store
    files = [p for p in settings.data_dir.rglob("*") if p.is_file()]
    assert all(p.name.split(".")[0] in ("grader", "api_keys") or "images" in p.parts or "models" in p.parts for p in files), files
    images = [p for p in settings.images_dir.rglob("*") if p.is_file()]
    assert all(len(p.stem) == 64 for p in images)
    assert client.get(f"/v1/cameras/{camera_id.replace('/', '%2F')}/calibration", headers=headers("inspector")).status_code in (404, 200)
    assert client.get("/v1/results", headers=headers("inspector")).status_code == 200  # the table is still there


@pytest.mark.parametrize("bad", ["nul\x00byte", "line\nbreak", "bell\x07"], ids=["nul", "newline", "bell"])
def test_control_characters_are_refused_everywhere(client, frame, bad):
    assert post(client, jpeg_bytes(frame[0]), camera_id=bad).status_code == 422
    assert post(client, jpeg_bytes(frame[0]), lot_id=bad).status_code == 422
    r = client.post("/v1/brix", json={"brix": 12.0, "fruit_id": bad}, headers=headers())
    assert r.status_code == 422
    r = client.post("/v1/lots", json={"id": "L-ok", "grower": bad}, headers=headers())
    assert r.status_code == 422 and r.json()["error"]["field"] == "grower"
    quoted = bad.replace("\x00", "%00").replace("\n", "%0A").replace("\x07", "%07")
    assert client.get(f"/v1/lots/{quoted}", headers=headers()).status_code == 422
    assert client.get(f"/v1/results?camera_id={quoted}", headers=headers()).status_code == 422


def test_very_long_fields_are_refused_naming_the_field(client, frame):
    r = post(client, jpeg_bytes(frame[0]), camera_id="c" * 10_000)
    assert r.status_code == 422 and r.json()["error"]["field"] == "camera_id"
    r = client.post("/v1/lots", json={"id": "L-" + "9" * 5000}, headers=headers())
    assert r.status_code == 422

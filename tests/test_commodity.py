"""Commodities on the line: the `commodity` of a grade (the request's, else its lot's, else the
service's), its default standard, and each commodity judged by its own serving model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from datasets.synthetic import make_fruit_image
from grader.commodities import load_commodities
from service.settings import SHIPPED_MODELS

from .conftest import headers, png_bytes

ART = SHIPPED_MODELS / (SHIPPED_MODELS / "DEFAULT").read_text().strip()
ORANGE_MODEL = load_commodities(Path(__file__).resolve().parents[1] / "grader" / "commodities")["orange"].model


def grade(client, **form):
    img, _ = make_fruit_image(seed=2, colour="orange")
    return client.post(
        "/v1/grade", files={"image": ("o.png", png_bytes(img), "image/png")}, data={"mm_per_px": "0.25", **form}, headers=headers()
    )


def test_commodity_field_picks_standard_and_is_recorded(client):
    r = grade(client, commodity="orange")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["commodity"] == "orange" and body["standard"]["id"] == "gbt-21488-navel-oranges"
    assert client.get(f"/v1/results/{body['id']}", headers=headers("inspector")).json()["commodity"] == "orange"
    assert grade(client).json()["commodity"] == "apple"  # the service's default
    bad = grade(client, commodity="durian")
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "commodity"
    client.post("/v1/lots", json={"id": "L-O", "commodity": "orange"}, headers=headers())
    assert grade(client, lot_id="L-O").json()["commodity"] == "orange"  # the lot's
    clash = grade(client, lot_id="L-O", commodity="lemon")
    assert clash.status_code == 422 and clash.json()["error"]["code"] == "commodity_mismatch"


@pytest.fixture
def orange_served(settings, tmp_path):
    """A models root where orange has its own artifact (here the apple graph, relabelled)."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    root = tmp_path / "models"
    # only the default model: the orange artifact below is this test's own
    shutil.copytree(
        SHIPPED_MODELS,
        root,
        ignore=lambda d, names: [n for n in names if d == str(SHIPPED_MODELS) and n not in ("DEFAULT", ART.parent.name)],
    )
    dest = root / ORANGE_MODEL  # where the shipped orange profile looks for its model
    shutil.copytree(ART, dest)
    meta = json.loads((dest / "metadata.json").read_text())
    meta.update(name="orange-defect", commodity="orange", version=dest.name)
    (dest / "metadata.json").write_text(json.dumps(meta))
    # the shipped lemon profile's model is absent from this root, so lemons fall back to the default model
    with TestClient(create_app(settings.model_copy(update={"models_root": root, "model_dir": root}))) as c:
        yield c


def test_each_commodity_is_judged_by_its_own_model(orange_served):
    c = orange_served
    v, ov = ART.name, Path(ORANGE_MODEL).name  # the default apple artifact, whose copy judges oranges here
    assert c.get("/healthz").json()["models"] == {"apple": f"apple-defect@{v}", "orange": f"orange-defect@{ov}"}
    assert grade(c, commodity="orange").json()["model"]["name"] == "orange-defect"
    assert grade(c, commodity="apple").json()["model"]["name"] == "apple-defect"
    assert grade(c, commodity="lemon").json()["model"]["name"] == "apple-defect"  # no lemon model here: the default judges it
    listed = c.get("/v1/models", headers=headers("trainer")).json()
    assert listed["serving_by_commodity"] == {"apple": f"apple-defect@{v}", "orange": f"orange-defect@{ov}"}
    # a rollback of one commodity leaves the other alone
    assert c.post("/v1/models/rollback?commodity=orange", headers=headers("trainer")).status_code == 409
    assert grade(c, commodity="apple").json()["model"]["name"] == "apple-defect"

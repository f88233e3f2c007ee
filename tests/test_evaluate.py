"""`grader evaluate`: an artifact's figures on the split its own manifest names, files checked by hash."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest

pytest.importorskip("matplotlib")

from cli.main import main as cli_main  # noqa: E402
from datasets.synthetic import make_fruit_image  # noqa: E402
from service.settings import SHIPPED_MODELS  # noqa: E402

from .conftest import SHARED_DATA, png_bytes  # noqa: E402


@pytest.fixture
def synthetic_artifact(tmp_path):
    """The shipped lemon model with a manifest of its own: six synthetic fruit photos (three sound,
    three blemished and labelled defective) in a test split, grouped by two 'sources'."""
    art = tmp_path / "art"
    art.mkdir()
    for name in ("model.onnx", "metadata.json"):
        shutil.copy(SHIPPED_MODELS / "lemon-defect" / "0.1.0" / name, art / name)
    data = tmp_path / "photos"
    data.mkdir()
    items = []
    for i in range(6):
        defective = i % 2 == 1
        img, _ = make_fruit_image(seed=i, diameter_mm=60, colour="lemon", blemishes_cm2=(1.5, 0.8) if defective else ())
        path = data / f"p{i}.png"
        path.write_bytes(png_bytes(img))
        items.append(
            {
                "path": path.name,
                "label": "defective" if defective else "sound",
                "source": f"src{i % 3}",
                "split": "test",
                "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            }
        )
    items.append({"path": "absent.png", "label": "sound", "source": "src0", "split": "train", "sha256": "0" * 64})
    (art / "manifest.json").write_text(json.dumps({"sha256": "x", "items": items}))
    return art, data


def test_evaluate_writes_report_and_figures(synthetic_artifact, tmp_path, capsys):
    art, data = synthetic_artifact
    out = tmp_path / "report"
    assert cli_main(["evaluate", str(art), "--data", str(data), "--out", str(out), "--latency-repeats", "2"]) == 0
    printed = capsys.readouterr().out
    assert "lemon-defect 0.1.0, test split: 6 photos" in printed and "src0" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["n"] == 6 and report["data"]["n_defective"] == 3
    assert set(report["per_group"]) == {"src0", "src1", "src2"}
    assert sum(g["n"] for g in report["per_group"].values()) == 6
    m = report["metrics"]
    assert 0.0 <= m["balanced_accuracy"] <= 1.0 and sum(map(sum, m["confusion"]["matrix"])) == 6
    assert report["latency_ms_per_crop"]["batch_16"] > 0
    assert len(report["scores"]) == 6 and all(0.0 <= s["score"] <= 1.0 for s in report["scores"])
    for name in ("roc.png", "reliability.png", "confusion.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![confusion](confusion.png)" in (out / "report.md").read_text()
    # how sure the figures are on so few photos: each recall's 95 % interval holds the recall
    (tn, fp), (fn, tp) = m["confusion"]["matrix"]
    for key, k, n in (("recall_defective", tp, tp + fn), ("recall_sound", tn, tn + fp)):
        lo, hi = m[key + "_ci95"]
        assert lo <= k / n <= hi and hi - lo > 0.3  # three photos a class say little
    assert m["balanced_accuracy_ci95"][0] <= m["balanced_accuracy"] <= m["balanced_accuracy_ci95"][1]
    assert "95 % intervals over these photos" in printed and "95 % intervals over these photos" in (out / "report.md").read_text()


def test_evaluate_refuses_changed_or_missing_photos(synthetic_artifact, tmp_path, capsys):
    art, data = synthetic_artifact
    (data / "p2.png").write_bytes((data / "p2.png").read_bytes() + b"\0")
    assert cli_main(["evaluate", str(art), "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    assert "changed since training (e.g. p2.png)" in capsys.readouterr().err
    (data / "p3.png").unlink()
    assert cli_main(["evaluate", str(art), "--data", str(data), "--out", str(tmp_path / "r")]) == 2
    assert "1 missing (e.g. p3.png)" in capsys.readouterr().err
    assert cli_main(["evaluate", str(tmp_path / "nowhere"), "--data", str(data)]) == 2


@pytest.mark.realdata
def test_evaluate_reproduces_the_shipped_lemon_figures(tmp_path):
    if not (SHARED_DATA / "lemons").is_dir():
        pytest.skip("../shared/data has no lemon photos on this machine")
    from training.evaluate import evaluate_artifact

    art = SHIPPED_MODELS / "lemon-defect" / "0.1.0"
    report, _ = evaluate_artifact(art, SHARED_DATA, out=tmp_path, latency_repeats=1)
    recorded = json.loads((art / "metadata.json").read_text())["metrics"]["test"]
    assert report["data"]["n"] == recorded["n"]
    # training scored crops from its resized crop cache, evaluate the full-resolution crops serving
    # makes: the figures agree to within a few photos
    assert report["metrics"]["balanced_accuracy"] == pytest.approx(recorded["balanced_accuracy"], abs=0.02)
    assert report["metrics"]["auc"] == pytest.approx(recorded["auc"], abs=0.01)


def test_evaluate_cuts_crops_with_the_segmentation_the_model_was_trained_on(tmp_path):
    """An artifact whose metadata records ``preprocessing.crop_segmentation`` (trained with
    ``data.segmentation: commodity``) is evaluated on crops cut with those settings, as its training
    crops were: here a white-mould orange on white, whole with the orange profile's texture cue."""
    from grader.commodities import load_commodities
    from service.onnx_model import OnnxDefectModel
    from training.crops import fruit_crop
    from training.evaluate import evaluate_artifact

    from .test_mould_segmentation import mouldy_orange

    art, data = tmp_path / "art", tmp_path / "photos"
    art.mkdir()
    data.mkdir()
    shutil.copy(SHIPPED_MODELS / "lemon-defect" / "0.1.0" / "model.onnx", art / "model.onnx")
    meta = json.loads((SHIPPED_MODELS / "lemon-defect" / "0.1.0" / "metadata.json").read_text())
    params = load_commodities()["orange"].segmentation()
    meta["preprocessing"]["crop_segmentation"] = {"flat_background_max_std": params.flat_background_max_std}
    (art / "metadata.json").write_text(json.dumps(meta))
    img = mouldy_orange(backdrop_noise=0.0)
    (data / "o.png").write_bytes(png_bytes(img))
    items = [
        {
            "path": "o.png",
            "label": "defective",
            "source": "lab",
            "split": "test",
            "sha256": hashlib.sha256((data / "o.png").read_bytes()).hexdigest(),
        }
    ]
    (art / "manifest.json").write_text(json.dumps({"sha256": "x", "items": items}))
    report, _ = evaluate_artifact(art, data, "test", tmp_path / "report", threads=1, latency_repeats=1)
    model = OnnxDefectModel(art, threads=1)
    assert model.spec.crop_segmentation == params
    margin = model.spec.crop_margin_frac
    [whole] = model.predict([fruit_crop(img, margin, params=params)])
    [half] = model.predict([fruit_crop(img, margin)])
    assert report["scores"][0]["score"] == pytest.approx(whole.score, abs=1e-9)
    assert abs(whole.score - half.score) > 1e-6  # the two crops differ, and so do their scores

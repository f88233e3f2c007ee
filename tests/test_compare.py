"""`grader compare`: a candidate defect model against the serving one on the same tiny dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("matplotlib")

from datasets.synthetic import random_fruit_image  # noqa: E402
from training.crops import fruit_crop  # noqa: E402

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"  # DEFAULT -> apple-defect/0.6.0
LENIENT = [
    "--gate",
    "min_balanced_accuracy_gain=-1",
    "--gate",
    "min_defective_recall=0",
    "--gate",
    "max_ece=1",
    "--gate",
    "max_latency_ratio=1000",
]


def make_dataset(root: Path, n_test: int = 16) -> Path:
    """Synthetic fruit: test items alternate whole photos and ready crops over 2 sessions and 3 lots
    (one of them null); a val split of 3 defective fruit only (no sound one)."""
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for k in range(n_test + 3):
        split = "test" if k < n_test else "val"
        rgb, defective = random_fruit_image(1000 + k, defective=bool(k % 2) or split == "val", size_px=96)
        label = "defective" if defective else "sound"
        kind = "image" if k % 4 < 2 else "crop"
        img = rgb if kind == "image" else fruit_crop(rgb, 0.08)
        rel = Path("crops" if kind == "crop" else "photos") / split / label / f"f{k}.{'png' if k % 3 else 'jpg'}"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        items.append(
            {
                "path": str(rel),
                "kind": kind,
                "label": label,
                "split": split,
                "session": f"cam-{k % 2 + 1}/2026-11-29",
                "lot": [None, "L-1", "L-2"][k % 3],
                "sha256": "x",
            }
        )
    (root / "manifest.json").write_text(json.dumps({"sha256": "tiny", "classes": ["sound", "defective"], "items": items}))
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("compare-data"))


@pytest.fixture(scope="module")
def candidate(tmp_path_factory, dataset) -> Path:
    """The shipped model under another version, its threshold set inside the current model's
    scores on the dataset so that the two label some items differently."""
    from service.onnx_model import OnnxDefectModel
    from training.evaluation import load_dataset, score_items

    current = OnnxDefectModel(MODELS, threads=1)
    scores = np.sort(score_items(load_dataset(dataset, "test").items, {"current": current})[0]["current"])
    t_cur = current.spec.threshold_defective
    n_cur = int((scores >= t_cur).sum())
    # between two neighbouring scores, so that two items fewer (or more) are called defective
    target = n_cur - 2 if n_cur > len(scores) // 2 else n_cur + 2
    k = len(scores) - target
    threshold = float((scores[k - 1] + scores[k]) / 2)
    assert int((scores >= threshold).sum()) == target

    out = tmp_path_factory.mktemp("candidate") / "apple-defect-0.7.0-test"
    out.mkdir()
    shutil.copy(current.model_dir / "model.onnx", out / "model.onnx")
    meta = json.loads((current.model_dir / "metadata.json").read_text())
    meta["version"] = "0.7.0-test"
    meta["thresholds"]["defective"] = threshold
    (out / "metadata.json").write_text(json.dumps(meta))
    return out


def run(*args: str) -> int:
    from cli.main import main

    return main(["compare", *map(str, args), "--threads", "1"])


def test_report_has_both_models_gates_and_figures(dataset, candidate, tmp_path, capsys):
    out = tmp_path / "report"
    status = run(MODELS, candidate, "--data", dataset, "--out", out, *LENIENT)
    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "verdict: promote" in printed

    for f in ("report.json", "report.md", "roc.png", "reliability.png", "confusion.png"):
        assert (out / f).stat().st_size > 0, f
    rep = json.loads((out / "report.json").read_text())
    assert rep["verdict"] == "promote" and rep["failing_gates"] == []
    assert rep["data"]["n"] == 16 and rep["data"]["n_image"] == 8 and rep["data"]["n_crop"] == 8
    cur, cand = rep["models"]["current"], rep["models"]["candidate"]
    assert (cur["version"], cand["version"]) == ("0.6.0", "0.7.0-test")
    for m in (cur, cand):
        for key in ("balanced_accuracy", "recall_defective", "recall_sound", "auc", "ece", "confusion", "threshold"):
            assert key in m["metrics"], key
        assert sum(map(sum, m["metrics"]["confusion"]["matrix"])) == 16
        assert set(m["per_session"]) == {"cam-1/2026-11-29", "cam-2/2026-11-29"}
        assert set(m["per_lot"]) == {"(none)", "L-1", "L-2"}
        assert sum(g["n"] for g in m["per_lot"].values()) == 16
        assert m["latency_ms_per_crop"]["batch_1"] > 0 and m["latency_ms_per_crop"]["batch_16"] > 0
    # same network, different threshold: identical scores, AUC and ECE; different labels
    assert cur["metrics"]["auc"] == pytest.approx(cand["metrics"]["auc"])
    assert cur["metrics"]["ece"] == pytest.approx(cand["metrics"]["ece"])
    dis = rep["disagreements"]
    assert dis["count"] > 0 and len(dis["items"]) == dis["count"]
    assert dis["candidate_right"] + dis["current_right"] == dis["count"]
    assert all((dataset / it["path"]).is_file() for it in dis["items"])
    assert all(it["current_label"] != it["candidate_label"] for it in dis["items"])
    gates = {g["gate"]: g for g in rep["gates"]}
    assert {"min_balanced_accuracy_gain", "min_defective_recall", "max_ece", "max_latency_ratio"} <= set(gates)
    assert gates["min_defective_recall"]["limit"] == 0 and gates["min_defective_recall"]["passed"] is True
    assert gates["min_sound_recall"]["passed"] is None  # off by default

    md = (out / "report.md").read_text()
    for needle in (
        "## Gates",
        "## Per session",
        "## Per lot",
        f"{dis['count']} of 16 items",
        "](roc.png)",
        "](reliability.png)",
        "](confusion.png)",
        "0.7.0-test",
    ):
        assert needle in md, needle


def test_a_failing_gate_keeps_the_current_model(dataset, candidate, tmp_path, capsys):
    out = tmp_path / "report"
    status = run(
        MODELS, candidate, "--data", dataset, "--out", out, *LENIENT, "--gate", "min_defective_recall=1.01", "--gate", "min_sound_recall=0"
    )
    printed = capsys.readouterr().out
    assert status == 1
    assert "verdict: keep current (failing: min_defective_recall)" in printed
    rep = json.loads((out / "report.json").read_text())
    assert rep["verdict"] == "keep current" and rep["failing_gates"] == ["min_defective_recall"]
    gates = {g["gate"]: g for g in rep["gates"]}
    assert gates["min_defective_recall"]["passed"] is False and gates["min_defective_recall"]["limit"] == 1.01
    assert gates["min_sound_recall"]["passed"] is True  # switched on by the override
    assert "**FAIL**" in (out / "report.md").read_text()


def test_a_split_with_one_class_reports_what_it_can(dataset, candidate, tmp_path, capsys):
    out = tmp_path / "report"
    status = run(MODELS, candidate, "--data", dataset, "--out", out, "--split", "val", *LENIENT, "--gate", "min_auc_gain=0")
    assert status == 1  # the AUC gate cannot be measured without sound fruit: it fails, saying why
    rep = json.loads((out / "report.json").read_text())
    assert rep["data"]["n"] == rep["data"]["n_defective"] == 3
    assert rep["models"]["candidate"]["metrics"]["auc"] is None  # NaN becomes null
    assert rep["models"]["candidate"]["metrics"]["recall_sound"] is None
    gate = next(g for g in rep["gates"] if g["gate"] == "min_auc_gain")
    assert gate["passed"] is False and gate["note"] == "not measurable on this split"
    assert (out / "roc.png").exists() and "| AUC | — | — |" in (out / "report.md").read_text()


def test_gate_logic():
    from training.compare import check_gates, load_gates

    def model(ba: float, rec: float, ece: float, ms16: float) -> dict:
        return {
            "metrics": {"balanced_accuracy": ba, "recall_defective": rec, "recall_sound": 0.5, "ece": ece, "auc": 0.9},
            "latency_ms_per_crop": {"batch_1": 1.0, "batch_16": ms16},
        }

    limits = load_gates()
    assert limits["min_defective_recall"] == 0.95 and limits["min_sound_recall"] is None
    ok = check_gates(limits, {"current": model(0.80, 0.96, 0.05, 2.0), "candidate": model(0.82, 0.97, 0.10, 2.9)})
    assert all(g["passed"] in (True, None) for g in ok)
    bad = check_gates(limits, {"current": model(0.80, 0.96, 0.05, 2.0), "candidate": model(0.79, float("nan"), 0.2, 3.1)})
    assert {g["gate"] for g in bad if g["passed"] is False} == {
        "min_balanced_accuracy_gain",
        "min_defective_recall",
        "max_ece",
        "max_latency_ratio",
    }
    assert next(g for g in bad if g["gate"] == "min_defective_recall")["note"] == "not measurable on this split"
    assert load_gates(overrides=["max_ece=null", "min_auc_gain=0.01"])["max_ece"] is None


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--split", "train"], "no items in split 'train' (splits present: test, val)"),
        (["--gate", "max_speed=2"], "unknown gate 'max_speed'"),
        (["--gate", "max_ece"], "must look like key=value"),
        (["--gate", "max_ece=high"], "needs a number"),
    ],
)
def test_bad_input_exits_2(dataset, candidate, tmp_path, capsys, bad, message):
    assert run(MODELS, candidate, "--data", dataset, "--out", tmp_path / "r", *bad) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.json").exists()


def test_missing_data_or_model_exits_2(dataset, tmp_path, capsys):
    assert run(MODELS, MODELS, "--data", tmp_path / "nowhere") == 2
    assert "no dataset directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert run(MODELS, MODELS, "--data", tmp_path / "empty") == 2
    assert "has no manifest.json" in capsys.readouterr().err
    assert run(MODELS, tmp_path / "empty", "--data", dataset, "--out", tmp_path / "r") == 2
    assert "candidate model: no model artifact" in capsys.readouterr().err


def test_cli_subcommand_with_default_out(dataset, candidate, tmp_path, monkeypatch, capsys):
    from cli.main import main

    monkeypatch.chdir(tmp_path)
    status = main(
        [
            "compare",
            str(MODELS),
            str(candidate),
            "--data",
            str(dataset),
            "--threads",
            "1",
            "--gate",
            "max_latency_ratio=1000",
            "--gate",
            "min_defective_recall=0",
            "--gate",
            "max_ece=1",
        ]
    )
    printed = capsys.readouterr().out
    out = tmp_path / "var" / "compare" / "0.6.0-vs-0.7.0-test"
    assert (out / "report.json").exists() and (out / "report.md").exists()
    rep = json.loads((out / "report.json").read_text())
    assert status == (0 if rep["verdict"] == "promote" else 1)
    assert f"verdict: {rep['verdict']}" in printed


def test_help_names_the_exit_statuses(capsys):
    from cli.main import main

    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "0 when the verdict is promote" in text and "2 for bad input" in text
    # python -m training.compare parses the same arguments, without the cli package
    from training.compare import main as compare_main

    with pytest.raises(SystemExit):
        compare_main(["--help"])
    assert " ".join(capsys.readouterr().out.split()) == text

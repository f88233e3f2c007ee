"""The model card is written from an artifact's own metadata: every figure in it is the export's."""

import json
from pathlib import Path

from training.model_card import card

APPLE = Path(__file__).resolve().parents[1] / "models" / "apple-defect" / "0.6.0"


def test_the_card_quotes_the_exports_figures_and_its_calibration():
    meta = json.loads((APPLE / "metadata.json").read_text())
    text = card(meta, notes="- a remark")
    test = meta["metrics"]["test"]
    lo, hi = test["balanced_accuracy_ci95"]
    assert f"| test | {test['n']} | {test['balanced_accuracy']:.3f} ({lo:.3f}–{hi:.3f}) |" in text
    cal = meta["calibration"]
    assert f"T = {cal['temperature']:.3f}, defective logit shifted by {cal['defective_logit_shift']:.3f}" in text
    assert text.rstrip().endswith("replaces this one.") and "- a remark" in text
    # the shipped card is this function's output (plus the bench and the notes it was given)
    shipped = (APPLE / "README.md").read_text()
    assert f"T = {cal['temperature']:.3f}, defective logit shifted by" in shipped

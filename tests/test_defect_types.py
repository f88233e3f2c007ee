"""Defect type in the evidence: a model with several defective classes says which defect, and how
sure it is of each; a sound/defective model's evidence stays exactly as it was."""

import numpy as np
import pytest

from grader.defect import ModelSpec, evidence_from_logits, softmax
from grader.records import DefectEvidence
from inference.metadata import read_spec

ORANGE_CLASSES = ("sound", "blackspot", "canker", "greening", "rot")


def spec(classes=("sound", "defective"), defective=("defective",), threshold=0.5, temperature=1.0) -> ModelSpec:
    return ModelSpec(
        name="m",
        version="1",
        classes=classes,
        defective_classes=defective,
        input_size=(8, 8),
        mean=(0.5, 0.5, 0.5),
        std=(0.2, 0.2, 0.2),
        temperature=temperature,
        threshold_defective=threshold,
    )


def test_binary_model_evidence_is_unchanged():
    logits = np.array([[2.0, -1.0], [-0.5, 1.5]])
    s = spec(temperature=1.3)
    sound, bad = evidence_from_logits(logits, s)
    p = softmax(logits, 1.3)
    assert (sound.label, bad.label) == ("sound", "defective")
    assert sound.score == pytest.approx(p[0, 1]) and bad.score == pytest.approx(p[1, 1])
    for e in (sound, bad):
        assert e.type is None and e.type_probabilities is None
        # the dict a camera gets back keeps exactly its old keys
        assert set(e.to_dict()) == {"label", "score", "probabilities", "ood_score", "ood"}


def test_multi_class_model_names_the_most_probable_defect():
    logits = np.array([[0.0, 0.5, 3.0, 1.0, -1.0]])
    [e] = evidence_from_logits(logits, spec(ORANGE_CLASSES, ORANGE_CLASSES[1:]))
    p = softmax(logits)[0]
    assert e.label == "canker" and e.type == "canker"
    assert e.score == pytest.approx(p[1:].sum())
    assert sum(e.type_probabilities.values()) == pytest.approx(1.0)
    assert e.type_probabilities["canker"] == pytest.approx(p[2] / p[1:].sum())
    assert max(e.type_probabilities, key=e.type_probabilities.get) == "canker"
    d = e.to_dict()
    assert d["type"] == "canker" and set(d["type_probabilities"]) == set(ORANGE_CLASSES[1:])


def test_sound_fruit_has_no_type_but_keeps_type_probabilities():
    logits = np.array([[4.0, 0.1, 0.2, 1.0, 0.0]])
    [e] = evidence_from_logits(logits, spec(ORANGE_CLASSES, ORANGE_CLASSES[1:]))
    assert e.label == "sound" and e.type is None
    assert max(e.type_probabilities, key=e.type_probabilities.get) == "greening"
    d = e.to_dict()
    assert d["type"] is None and d["type_probabilities"]["greening"] > 0.4


def test_the_threshold_decides_defective_and_the_type_follows():
    # P(defective) ~ 0.45 in all, spread over four types: below 0.5 sound, above 0.3 the likeliest type
    logits = np.array([[1.5, 0.0, -0.2, 0.1, -0.3]])
    strict, lenient = spec(ORANGE_CLASSES, ORANGE_CLASSES[1:], 0.5), spec(ORANGE_CLASSES, ORANGE_CLASSES[1:], 0.3)
    [a] = evidence_from_logits(logits, strict)
    [b] = evidence_from_logits(logits, lenient)
    assert a.label == "sound" and a.type is None
    assert b.label == "greening" and b.type == "greening"
    assert a.score == pytest.approx(b.score) and a.type_probabilities == pytest.approx(b.type_probabilities)


def test_type_probabilities_stay_defined_when_defective_probability_underflows():
    [e] = evidence_from_logits(np.array([[800.0, -800.0, -800.0, -800.0, -800.0]]), spec(ORANGE_CLASSES, ORANGE_CLASSES[1:]))
    assert e.label == "sound" and e.score == pytest.approx(0.0)
    assert all(np.isfinite(v) for v in e.type_probabilities.values())
    assert sum(e.type_probabilities.values()) == pytest.approx(1.0)


def test_evidence_built_positionally_as_before_still_works():
    e = DefectEvidence("rot", 0.9, {"sound": 0.1, "rot": 0.9}, "m", "1", 1.5, False)
    assert e.type is None and e.type_probabilities is None
    assert e.to_dict()["label"] == "rot" and "type" not in e.to_dict()


def test_metadata_with_several_defective_classes_loads():
    meta = {
        "name": "orange-defect",
        "version": "0.1.0",
        "classes": list(ORANGE_CLASSES),
        "defective_classes": list(ORANGE_CLASSES[1:]),
        "preprocessing": {"input_size": [8, 8], "mean": [0.5, 0.5, 0.5], "std": [0.2, 0.2, 0.2]},
    }
    s = read_spec(meta)
    [e] = evidence_from_logits(np.array([[0.0, 0.0, 0.0, 0.0, 5.0]]), s)
    assert e.label == "rot" and e.type == "rot"

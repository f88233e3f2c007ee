"""The defect-model interface: what any defect model must offer the grader, and the
preprocessing contract that a model's ``metadata.json`` describes.

The ONNX Runtime implementation lives in ``service/`` (an adapter); training builds models that
honour the same contract, and evaluation runs through :func:`preprocess` so a figure measured in
training is the figure served.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence, runtime_checkable

import cv2
import numpy as np

from .colour import ColourNormalise, resized_fruit_mask
from .crop import fruit_body
from .records import DefectEvidence
from .segment import SegmentationParams


@dataclass(frozen=True)
class ModelSpec:
    """What serving needs to know about a model. It is read from the model's ``metadata.json`` by
    ``inference.metadata.read_spec``, the one place that defines that file."""

    name: str
    version: str
    classes: tuple[str, ...]
    defective_classes: tuple[str, ...]
    input_size: tuple[int, int]  # height, width
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_name: str = "input"
    output_name: str = "logits"
    temperature: float = 1.0  # logits are divided by this before softmax (calibration)
    threshold_defective: float = 0.5  # score >= this -> label "defective"
    review_band: tuple[float, float] = (0.3, 0.7)  # scores inside go to an inspector
    #: energy score (-T·logsumexp(logits/T)) above which a crop is not a fruit this model knows;
    #: None when the model's metadata gives no threshold (then no OOD flag can fire)
    ood_energy_threshold: float | None = None
    #: ``ood_distance`` (Mahalanobis distance of the pooled features to the training fruit's) above
    #: which a crop is not a fruit this model knows; None for a model without that output
    ood_distance_threshold: float | None = None
    #: ``ood_distance_early`` (the same distance on an early block's globally averaged output: the
    #: texture statistics the pooled features average away) above which a crop is not a fruit this
    #: model knows; None for a model without that output
    ood_distance_early_threshold: float | None = None
    #: ``fruit_score`` (the fruit check: P(the crop is a fruit), training/fruit_check.py) below which
    #: a candidate region is not a fruit and is neither graded nor queued; None: no fruit check
    fruit_threshold: float | None = None
    crop_margin_frac: float = 0.08
    #: per-crop colour normalisation of the fruit pixels (``preprocessing.colour_normalise``), applied
    #: by :func:`preprocess` after resizing; None (the key absent): none
    colour_normalise: ColourNormalise | None = None
    #: how many symmetries of the crop the graph itself averages its logits over
    #: (``preprocessing.test_time_views.count``; training/views.py); nothing to do for serving, which
    #: runs the graph as it is, but every decision of the model is that average
    test_time_views: int = 1
    #: the fruit finder's settings the model's training crops were cut with
    #: (``preprocessing.crop_segmentation``: the fields of :class:`grader.segment.SegmentationParams`
    #: that differ from its defaults); None (the key absent): the defaults. Serving measures with the
    #: commodity's own settings; evaluation of an artifact on photos cuts its crops with these
    crop_segmentation: SegmentationParams | None = None
    #: ``preprocessing.fruit_body.factor``: every crop first gets :func:`grader.crop.fruit_body`
    #: (what sticks out of the fruit's round body painted out, e.g. a hand); None (the key absent): not
    fruit_body: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def preprocess(crops: Sequence[np.ndarray], spec: ModelSpec) -> np.ndarray:
    """RGB uint8 crops -> float32 NCHW batch, resized and normalised as the metadata says.

    With ``spec.colour_normalise`` each resized crop's fruit pixels (the crop's own fruit mask,
    resized alike) first get the canonical Lab mean and spread, exactly as training applied it to
    its augmented crops."""
    h, w = spec.input_size
    batch = np.empty((len(crops), 3, h, w), np.float32)
    mean = np.asarray(spec.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, np.float32).reshape(3, 1, 1)
    for i, crop in enumerate(crops):
        if spec.fruit_body is not None:
            crop = fruit_body(crop, spec.fruit_body)
        interp = cv2.INTER_AREA if crop.shape[0] >= h else cv2.INTER_LINEAR
        x = cv2.resize(crop, (w, h), interpolation=interp)
        if spec.colour_normalise is not None:
            x = spec.colour_normalise.apply(x, resized_fruit_mask(crop, (w, h), interp))
        batch[i] = (x.astype(np.float32).transpose(2, 0, 1) / 255.0 - mean) / std
    return batch


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def energy(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Energy score per row, -T·logsumexp(z/T): high for inputs unlike the training data."""
    z = logits.astype(np.float64) / temperature
    m = z.max(axis=1)
    return -temperature * (m + np.log(np.exp(z - m[:, None]).sum(axis=1)))


@dataclass(frozen=True)
class ModelOutputs:
    """A batch's model outputs, row-aligned: ``logits`` (N, classes) and, where the graph has them,
    ``defect_map`` (N, h, w), ``ood_distance`` (N,), ``ood_distance_early`` (N,) and ``fruit_score`` (N,)."""

    logits: np.ndarray
    defect_map: np.ndarray | None = None
    ood_distance: np.ndarray | None = None
    ood_distance_early: np.ndarray | None = None
    fruit_score: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.logits)

    def rows(self, start: int, stop: int) -> "ModelOutputs":
        """Rows start:stop of every output (one request's share of a micro-batch)."""
        cut = slice(start, stop)
        return ModelOutputs(
            self.logits[cut],
            None if self.defect_map is None else self.defect_map[cut],
            None if self.ood_distance is None else self.ood_distance[cut],
            None if self.ood_distance_early is None else self.ood_distance_early[cut],
            None if self.fruit_score is None else self.fruit_score[cut],
        )


def evidence_from_outputs(out: ModelOutputs, spec: ModelSpec) -> list[DefectEvidence]:
    """Calibrated defect evidence, one per crop, from all of a batch's outputs."""
    return evidence_from_logits(out.logits, spec, out.defect_map, out.ood_distance, out.ood_distance_early, out.fruit_score)


def evidence_from_logits(
    logits: np.ndarray,
    spec: ModelSpec,
    defect_map: np.ndarray | None = None,
    ood_distance: np.ndarray | None = None,
    ood_distance_early: np.ndarray | None = None,
    fruit_score: np.ndarray | None = None,
) -> list[DefectEvidence]:
    """Turn raw model outputs into calibrated defect evidence, one per crop.

    ``defect_map`` (N, h, w), ``ood_distance`` (N,) and ``ood_distance_early`` (N,) are the graph's
    extra outputs where it has them (see :class:`ModelOutputs`). A crop is ``ood`` when any signal
    with a threshold is past it: "energy", "distance", "early-distance" (``ood_signals``)."""
    n = len(logits)
    for name, extra in (
        ("defect_map", defect_map),
        ("ood_distance", ood_distance),
        ("ood_distance_early", ood_distance_early),
        ("fruit_score", fruit_score),
    ):
        if extra is not None and len(extra) != n:
            raise ValueError(f"{name} has {len(extra)} rows for {n} crops")
    logits = np.asarray(logits)
    probs = softmax(logits, spec.temperature)
    energies = energy(logits, spec.temperature)
    idx = [spec.classes.index(c) for c in spec.defective_classes]
    typed = len(idx) > 1  # the model tells defect types apart
    out = []
    for k, (row, e) in enumerate(zip(probs, energies)):
        dist = None if ood_distance is None else float(ood_distance[k])
        early = None if ood_distance_early is None else float(ood_distance_early[k])
        fruit = None if fruit_score is None else float(fruit_score[k])
        signals = []
        if spec.ood_energy_threshold is not None and e > spec.ood_energy_threshold:
            signals.append("energy")
        if dist is not None and spec.ood_distance_threshold is not None and not dist <= spec.ood_distance_threshold:
            signals.append("distance")  # a NaN distance counts as far
        early_judged = early is not None and spec.ood_distance_early_threshold is not None
        if early_judged and not early <= spec.ood_distance_early_threshold:
            signals.append("early-distance")
        judged = spec.ood_energy_threshold is not None or (dist is not None and spec.ood_distance_threshold is not None) or early_judged
        score = float(row[idx].sum())
        if score >= spec.threshold_defective:
            label = spec.defective_classes[int(np.argmax(row[idx]))] if typed else spec.defective_classes[0]
        else:
            label = max((c for c in spec.classes if c not in spec.defective_classes), key=lambda c: row[spec.classes.index(c)])
        type_probabilities = None
        if typed:  # P(type | defective): the defective classes' share of P(defective)
            within = row[idx] / score if score > 0 else np.full(len(idx), 1.0 / len(idx))
            type_probabilities = {c: float(p) for c, p in zip(spec.defective_classes, within)}
        out.append(
            DefectEvidence(
                label=label,
                score=score,
                probabilities={c: float(p) for c, p in zip(spec.classes, row)},
                model_name=spec.name,
                model_version=spec.version,
                ood_score=float(e),
                ood=bool(signals) if judged else None,
                type=label if typed and label in spec.defective_classes else None,
                type_probabilities=type_probabilities,
                ood_distance=dist,
                ood_signals=tuple(signals),
                ood_distance_early=early,
                defect_map=None if defect_map is None else np.asarray(defect_map[k], np.float32),
                map_crop_margin_frac=None if defect_map is None else spec.crop_margin_frac,
                fruit_score=fruit,
                is_fruit=None if fruit is None or spec.fruit_threshold is None else bool(fruit >= spec.fruit_threshold),
            )
        )
    return out


@runtime_checkable
class DefectModel(Protocol):
    """Anything that scores fruit crops for defects (ONNX Runtime in service, torch in training)."""

    spec: ModelSpec

    def predict(self, crops: Sequence[np.ndarray]) -> list[DefectEvidence]:
        """One piece of evidence per RGB uint8 crop, in order."""
        ...


def parity_probe(input_size: tuple[int, int]) -> np.ndarray:
    """The fixed input whose logits an exported artifact records (metadata ``parity``): anyone can
    rerun it through the ONNX graph and check it still computes what the trained network did."""
    h, w = input_size
    return np.random.default_rng(0).standard_normal((2, 3, h, w)).astype(np.float32)

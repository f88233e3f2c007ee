"""The schema an uploaded model's metadata.json must meet before anything of it is stored.

Every number the service will grade with is checked here: thresholds finite and within [0, 1]
(a "NaN" threshold would grade every fruit sound), the review band ordered, the classes named
and distinct, the normalisation finite. What the graph itself must offer (input type, channels,
batch axis, outputs matching the classes) is checked when ONNX Runtime loads it
(service/onnx_model.py)."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictStr, ValidationError, field_validator, model_validator

from grader.errors import InvalidModelArtifact

Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Probability = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Positive = Annotated[float, Strict(), Field(gt=0.0, allow_inf_nan=False)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9._-]+$")]
Side = Annotated[int, Strict(), Field(ge=8, le=2048)]

#: the test metrics a version needs before it may serve (POST /v1/models/{id}/promote)
PROMOTION_METRICS = ("balanced_accuracy", "recall_defective")


class Preprocessing(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_size: tuple[Side, Side]
    mean: tuple[Finite, Finite, Finite]
    std: tuple[Positive, Positive, Positive]
    crop_margin_frac: Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.08


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="allow")

    defective: Probability
    review_band: tuple[Probability, Probability] | None = None
    ood_energy: Finite | None = None
    ood_distance: Positive | None = None
    ood_distance_early: Positive | None = None

    @model_validator(mode="after")
    def _band(self) -> "Thresholds":
        if self.review_band is not None and not self.review_band[0] < self.review_band[1]:
            raise ValueError(f"review_band must be [low, high] with low < high, got {list(self.review_band)}")
        return self


class Calibration(BaseModel):
    model_config = ConfigDict(extra="allow")

    temperature: Annotated[float, Strict(), Field(gt=0.0, lt=100.0, allow_inf_nan=False)] = 1.0


class Parity(BaseModel):
    model_config = ConfigDict(extra="allow")

    logits: list[list[Finite]] = Field(min_length=1)
    tolerance: Positive = 1e-3


class ModelMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: Name
    version: Name
    classes: list[Annotated[StrictStr, Field(min_length=1, max_length=50)]] = Field(min_length=2, max_length=64)
    defective_classes: list[StrictStr] | None = None
    preprocessing: Preprocessing
    thresholds: Thresholds
    calibration: Calibration | None = None
    metrics: dict[str, Any]
    training_data: dict[str, Any]
    parity: Parity
    input_name: StrictStr = "input"
    output_name: StrictStr = "logits"
    commodity: Name | None = None

    @field_validator("classes")
    @classmethod
    def _distinct(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"classes must be distinct, got {v}")
        return v

    @model_validator(mode="after")
    def _defective_among_classes(self) -> "ModelMetadata":
        if self.defective_classes is not None:
            unknown = sorted(set(self.defective_classes) - set(self.classes))
            if unknown or not self.defective_classes:
                raise ValueError(f"defective_classes must be a non-empty subset of classes; not among them: {unknown}")
        elif "sound" not in self.classes:
            raise ValueError("without defective_classes, one of the classes must be 'sound'")
        if len(self.parity.logits[0]) != len(self.classes):
            raise ValueError(f"parity.logits rows have {len(self.parity.logits[0])} values, there are {len(self.classes)} classes")
        return self


def validate_metadata(meta: Any) -> ModelMetadata:
    """The parsed metadata.json, checked; InvalidModelArtifact naming every bad field otherwise."""
    if not isinstance(meta, dict):
        raise InvalidModelArtifact("metadata.json must hold a JSON object", field="metadata")
    try:
        return ModelMetadata.model_validate(meta)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'metadata'}: {e['msg']}" for e in exc.errors()[:10])
        raise InvalidModelArtifact(f"metadata.json is not valid model metadata: {problems}", field="metadata") from None


def promotion_problem(meta: dict[str, Any]) -> str | None:
    """Why a version may not serve (thresholds or preprocessing out of bounds, as a version
    registered before these checks might have; missing or impossible test metrics), or None."""
    for name, schema in (("thresholds", Thresholds), ("preprocessing", Preprocessing)):
        try:
            schema.model_validate(meta.get(name))
        except ValidationError as exc:
            e = exc.errors()[0]
            return f"{name}.{'.'.join(str(x) for x in e['loc'])}: {e['msg']}"
    test = (meta.get("metrics") or {}).get("test")
    if not isinstance(test, dict):
        return "its metadata has no metrics.test: evaluate it (grader train or grader evaluate) before promoting"
    for key in PROMOTION_METRICS:
        if key not in test:
            return f"metrics.test.{key} is missing: evaluate the model before promoting it"
        v = test[key]
        if v is None:  # recorded as null: not measurable on that split (grader train writes NaN so)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
            return f"metrics.test.{key} is not a number within [0, 1] (got {v!r})"
    return None

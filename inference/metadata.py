"""metadata.json, defined once: the typed schema every artifact's metadata follows.

``grader train`` writes it (training/artifact.py validates what it writes), serving and evaluation
read it (:func:`read_spec` gives the :class:`grader.defect.ModelSpec` they run with) and an upload
must meet it (:func:`validate_artifact`, POST /v1/models). Every number the service grades with is
checked: thresholds finite and within [0, 1] (a "NaN" threshold would grade every fruit sound),
the review band ordered, the classes named and distinct, the normalisation finite. What the graph
itself must offer (input type, channels, batch axis, outputs matching the classes) is checked when
ONNX Runtime loads it (inference/onnx_model.py).

``schema_version``: 2 since the schema had a version; artifacts written before it hold none and
read as 1 (the same fields).
"""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictStr, ValidationError, field_validator, model_validator

from grader.colour import ColourNormalise
from grader.defect import ModelSpec
from grader.errors import InvalidModelArtifact
from grader.segment import SegmentationParams

#: the version ``grader train`` writes into every metadata.json
SCHEMA_VERSION = 2

Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Probability = Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Positive = Annotated[float, Strict(), Field(gt=0.0, allow_inf_nan=False)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9._-]+$")]
Side = Annotated[int, Strict(), Field(ge=8, le=2048)]


class Preprocessing(BaseModel):
    model_config = ConfigDict(extra="allow")

    input_size: tuple[Side, Side]
    mean: tuple[Finite, Finite, Finite]
    std: tuple[Positive, Positive, Positive]
    crop_margin_frac: Annotated[float, Strict(), Field(ge=0.0, le=1.0, allow_inf_nan=False)] = 0.08
    #: per-crop colour normalisation of the fruit pixels (grader.colour.ColourNormalise.to_dict)
    colour_normalise: dict[str, Any] | None = None
    #: {"count": n, ...}: the graph averages its logits over n views of the crop (training/views.py)
    test_time_views: dict[str, Any] | None = None
    #: the fruit finder's settings that differ from grader.segment.SegmentationParams' defaults
    crop_segmentation: dict[str, Any] | None = None
    #: {"factor": f}: grader.crop.fruit_body before the resize
    fruit_body: dict[str, Any] | None = None


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="allow")

    defective: Probability
    review_band: tuple[Probability, Probability] | None = None
    ood_energy: Finite | None = None
    ood_distance: Positive | None = None
    ood_distance_early: Positive | None = None
    fruit: Probability | None = None

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


class ServingMetadata(BaseModel):
    """What serving reads: the classes, the preprocessing, the calibration and the thresholds."""

    model_config = ConfigDict(extra="allow")

    schema_version: Annotated[int, Strict(), Field(ge=1, le=SCHEMA_VERSION)] = 1
    name: Name
    version: Name
    classes: list[Annotated[StrictStr, Field(min_length=1, max_length=50)]] = Field(min_length=2, max_length=64)
    defective_classes: list[StrictStr] | None = None
    preprocessing: Preprocessing
    #: absent: a defective threshold of 0.5, the default review band and no OOD or fruit check (an
    #: artifact always has them: ArtifactMetadata requires them)
    thresholds: Thresholds | None = None
    calibration: Calibration | None = None
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
    def _defective_among_classes(self) -> "ServingMetadata":
        if self.defective_classes is not None:
            unknown = sorted(set(self.defective_classes) - set(self.classes))
            if unknown or not self.defective_classes:
                raise ValueError(f"defective_classes must be a non-empty subset of classes; not among them: {unknown}")
        elif "sound" not in self.classes:
            raise ValueError("without defective_classes, one of the classes must be 'sound'")
        fb = (self.preprocessing.fruit_body or {}).get("factor")
        if fb is not None and not (isinstance(fb, (int, float)) and 1.0 <= fb <= 3.0):
            raise ValueError(f"preprocessing.fruit_body.factor must be within 1..3, got {fb!r}")
        return self

    def spec(self) -> ModelSpec:
        """The ModelSpec serving and evaluation run with (``raw``: the metadata as given)."""
        pre, thr = self.preprocessing, self.thresholds or Thresholds(defective=0.5)
        classes = tuple(self.classes)
        band = thr.review_band or (0.3, 0.7)
        return ModelSpec(
            name=self.name,
            version=self.version,
            classes=classes,
            defective_classes=tuple(self.defective_classes or [c for c in classes if c != "sound"]),
            input_size=(int(pre.input_size[0]), int(pre.input_size[1])),
            mean=tuple(float(x) for x in pre.mean),  # type: ignore[arg-type]
            std=tuple(float(x) for x in pre.std),  # type: ignore[arg-type]
            input_name=self.input_name,
            output_name=self.output_name,
            temperature=float(self.calibration.temperature if self.calibration else 1.0),
            threshold_defective=float(thr.defective),
            review_band=(float(band[0]), float(band[1])),
            crop_margin_frac=float(pre.crop_margin_frac),
            colour_normalise=None if pre.colour_normalise is None else ColourNormalise.from_dict(pre.colour_normalise),
            test_time_views=int((pre.test_time_views or {}).get("count", 1)),
            crop_segmentation=None if pre.crop_segmentation is None else SegmentationParams(**pre.crop_segmentation),
            fruit_body=None if pre.fruit_body is None else float(pre.fruit_body["factor"]),
            ood_energy_threshold=thr.ood_energy,
            ood_distance_threshold=thr.ood_distance,
            ood_distance_early_threshold=thr.ood_distance_early,
            fruit_threshold=thr.fruit,
        )


class ArtifactMetadata(ServingMetadata):
    """A whole artifact's metadata: what serving reads plus the evidence it was made and checked
    (metrics, training data, the parity logits); what ``grader train`` writes and an upload needs."""

    thresholds: Thresholds
    metrics: dict[str, Any]
    training_data: dict[str, Any]
    parity: Parity

    @model_validator(mode="after")
    def _parity_matches_classes(self) -> "ArtifactMetadata":
        if len(self.parity.logits[0]) != len(self.classes):
            raise ValueError(f"parity.logits rows have {len(self.parity.logits[0])} values, there are {len(self.classes)} classes")
        return self


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'metadata'}: {e['msg']}" for e in exc.errors()[:10])


def read_spec(meta: Any) -> ModelSpec:
    """The ModelSpec of a metadata.json (parsed): checked against :class:`ServingMetadata`;
    InvalidModelArtifact naming every bad field otherwise."""
    if not isinstance(meta, dict):
        raise InvalidModelArtifact("metadata.json must hold a JSON object", field="metadata")
    try:
        parsed = ServingMetadata.model_validate(meta)
        spec = parsed.spec()
    except ValidationError as exc:
        raise InvalidModelArtifact(f"metadata.json is not valid model metadata: {_problems(exc)}", field="metadata") from None
    except (KeyError, TypeError, ValueError) as exc:  # a colour_normalise or crop_segmentation record that does not parse
        raise InvalidModelArtifact(f"metadata.json is incomplete or malformed: {exc!r}", field="metadata") from None
    return dataclasses.replace(spec, raw=meta)


def validate_artifact(meta: Any) -> ArtifactMetadata:
    """A whole artifact's metadata.json (parsed), checked: what an upload and the writer need;
    InvalidModelArtifact naming every bad field otherwise."""
    if not isinstance(meta, dict):
        raise InvalidModelArtifact("metadata.json must hold a JSON object", field="metadata")
    missing = [k for k in REQUIRED_FIELDS if k not in meta]
    if missing:
        raise InvalidModelArtifact(f"metadata.json misses required fields {missing} (required: {list(REQUIRED_FIELDS)})", field="metadata")
    try:
        parsed = ArtifactMetadata.model_validate(meta)
        parsed.spec()
    except ValidationError as exc:
        raise InvalidModelArtifact(f"metadata.json is not valid model metadata: {_problems(exc)}", field="metadata") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidModelArtifact(f"metadata.json is incomplete or malformed: {exc!r}", field="metadata") from None
    return parsed


#: the top-level fields every artifact's metadata.json holds (the schema's required ones)
REQUIRED_FIELDS = tuple(k for k, f in ArtifactMetadata.model_fields.items() if f.is_required())

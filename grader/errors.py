"""Domain errors. The service maps each of these to one HTTP status code, in one place."""

from __future__ import annotations


class GraderError(Exception):
    """Base class of every error the domain core raises on purpose."""

    #: the request field the problem is about, when there is one
    field: str | None = None

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if field is not None:
            self.field = field


class InvalidImage(GraderError):
    """The bytes are not an image we can grade (not decodable, truncated, too large...)."""

    field = "image"


class InvalidMeasurementInput(GraderError):
    """A number handed to measurement is out of range (mm_per_px <= 0, NaN, ...)."""


class Uncalibrated(GraderError):
    """A size was asked for but no mm_per_px is known."""


class UnknownStandard(GraderError):
    """No grade standard with that id is loaded."""

    field = "standard"


class InvalidStandard(GraderError):
    """A standard file does not match the schema."""


class InvalidModelArtifact(GraderError):
    """A model directory lacks model.onnx/metadata.json or its metadata is inconsistent."""

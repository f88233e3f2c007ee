"""Domain errors. The service maps each of these to one HTTP status code, in one place
(service/errors.py: STATUS); nothing else assigns a status."""

from __future__ import annotations


class GraderError(Exception):
    """Base class of every error the domain core raises on purpose."""

    #: the request field the problem is about, when there is one
    field: str | None = None
    #: a finer error code than the one the service's table gives the class, for an error that
    #: comes in several forms (out_of_range or invalid_number; image_too_large or model_too_large)
    code: str | None = None

    def __init__(self, message: str, *, field: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if field is not None:
            self.field = field
        if code is not None:
            self.code = code


# ------------------------------------------------------------------ images and measurement


class InvalidImage(GraderError):
    """The bytes are not an image we can grade (not decodable, truncated, too large...)."""

    field = "image"


class InvalidMeasurementInput(GraderError):
    """A number handed to measurement is out of range (mm_per_px <= 0, NaN, ...)."""


class Uncalibrated(GraderError):
    """A size was asked for but no mm_per_px is known."""


class CalibrationFailed(GraderError):
    """The reference image does not show one clean round reference."""

    field = "image"


class InvalidReading(GraderError):
    """A Brix reading (or its temperature) outside what a refractometer and the correction table give."""

    field = "brix"


# ------------------------------------------------------------------ standards and commodities


class UnknownStandard(GraderError):
    """No grade standard with that id is loaded."""

    field = "standard"


class InvalidStandard(GraderError):
    """A standard file does not match the schema."""


class UnknownCommodity(GraderError):
    """No commodity profile with that id is loaded."""

    field = "commodity"


class InvalidCommodity(GraderError):
    """A request field names a commodity the service does not grade (a field's value, where
    UnknownCommodity is a look-up by id)."""

    field = "commodity"


class CommodityMismatch(GraderError):
    """The commodity asked for is not the one its lot or standard is for."""

    field = "commodity"


# ------------------------------------------------------------------ requests


class OutOfRange(GraderError, ValueError):
    """A physical value outside its plausible range (service/limits.py: PHYSICAL), or not a number
    at all: code ``out_of_range`` or ``invalid_number``."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message, field=field, code=code)


class InvalidField(GraderError):
    """A form field that does not parse (``scene``, ``boxes``): the message says what it must be."""


class TextTooLong(GraderError):
    """A text field longer than its limit."""


class ControlCharacters(GraderError):
    """A text field holding control characters (NUL, newlines...)."""


class UploadTooLarge(GraderError):
    """An uploaded file over its byte limit: code ``<kind>_too_large`` (image, model...)."""


class IdempotencyKeyReused(GraderError):
    """An idempotency key already stood for a different request."""

    field = "Idempotency-Key"


# ------------------------------------------------------------------ lots


class UnknownLot(GraderError):
    """No lot with that id has been opened."""

    field = "lot_id"


class LotClosed(GraderError):
    """The lot is closed: it takes no more fruit."""

    field = "lot_id"


# ------------------------------------------------------------------ models


class InvalidModelArtifact(GraderError):
    """A model directory lacks model.onnx/metadata.json or its metadata is inconsistent."""


class UnknownModel(GraderError):
    """No registered model version with that id."""

    field = "model_id"


class ModelExists(GraderError):
    """That model version is registered already."""

    field = "metadata"


class ModelNotPromotable(GraderError):
    """The version may not serve (its metrics or records fall short)."""

    field = "model_id"


class ModelIsServing(GraderError):
    """The version serves already: it cannot also be its own shadow."""

    field = "model_id"


class NoPreviousModel(GraderError):
    """No earlier serving version to roll back to."""


# ------------------------------------------------------------------ line video


class InvalidVideo(GraderError):
    """Not a video that can be decoded, or its frames disagree."""

    field = "video"


class InvalidFrame(GraderError):
    """A live stream's frame that does not fit the stream (another size)."""

    field = "frame"


class VideoFrameTooLarge(GraderError):
    """A clip's frame over the image pixel limit."""

    field = "video"


class VideoTooLong(GraderError):
    """A clip over the frame limit."""

    field = "video"


class VideoTooSlow(GraderError):
    """A clip that took longer than its budget to decode and grade."""

    field = "video"


# ------------------------------------------------------------------ stored records: results, fruit, verdicts, lots, calibrations


class UnknownResult(GraderError):
    """No stored result with that id (or none the key may see)."""

    field = "result_id"


class MissingImage(GraderError):
    """A result's image is no longer in the image store."""

    field = "result_id"


class UnknownFruit(GraderError):
    """No graded fruit with that id, number or index."""

    field = "fruit"


class UnknownVerdict(GraderError):
    """No inspector's verdict with that id."""

    field = "verdict_id"


class NoCalibration(GraderError):
    """The camera has never been calibrated."""

    field = "camera_id"


# ------------------------------------------------------------------ conflicts with what is stored


class LotExists(GraderError):
    """A lot with that id was opened already."""

    field = "id"


class FruitClaimed(GraderError):
    """Another inspector holds the fruit (their claim has not lapsed)."""

    field = "fruit"


class AlreadyExamined(GraderError):
    """The fruit has a verdict already: it is undone before another is given."""

    field = "fruit"


# ------------------------------------------------------------------ review


class InvalidGrade(GraderError):
    """A corrected grade that is not one of the fruit's standard's grades."""

    field = "grade"

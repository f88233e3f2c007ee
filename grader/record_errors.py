"""Domain errors about the records the service keeps: results and their images, fruit and their
review, verdicts, lots, camera calibrations. Like grader/errors.py (their base class), each is given
its HTTP status in one place only, service/errors.py: STATUS.

They live apart from grader/errors.py because the measurement modules import that one, and its
source is part of every crop's cache key (training/crops.py: measurement_sources)."""

from __future__ import annotations

from .errors import GraderError

# ------------------------------------------------------------------ look-ups


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

"""Whether a registered version may serve: the promotion policy on top of the metadata schema
(inference/metadata.py)."""

from __future__ import annotations

import math
from typing import Any

from pydantic import ValidationError

from inference.metadata import Preprocessing, Thresholds

#: the test metrics a version needs before it may serve (POST /v1/models/{id}/promote)
PROMOTION_METRICS = ("balanced_accuracy", "recall_defective")


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

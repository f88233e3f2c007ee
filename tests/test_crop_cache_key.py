"""The crop cache key covers the measurement code a crop depends on: a change to any grader module
that grader/measure.py imports (followed transitively) changes it, wherever that code has moved."""

from __future__ import annotations

import shutil
from pathlib import Path

from training.crops import measurement_code_hash, measurement_sources

GRADER = Path(__file__).resolve().parents[1] / "grader"


def test_every_module_the_measurement_imports_is_in_the_key(tmp_path):
    names = {p.name for p in measurement_sources()}
    assert {"segment.py", "measure.py", "crop.py", "blemish.py", "colour_bands.py", "crop_fill.py", "records.py", "errors.py"} <= names
    copy = tmp_path / "grader"
    shutil.copytree(GRADER, copy)
    start = copy / "measure.py"
    base = measurement_code_hash(start)
    assert measurement_code_hash(start) == base  # stable
    for f in measurement_sources(start):
        original = f.read_text()
        f.write_text(original + "\n# changed\n")
        assert measurement_code_hash(start) != base, f"{f.name} changes no crop key"
        f.write_text(original)
    assert measurement_code_hash(start) == base
    # a module the measurement does not import leaves the key alone
    (copy / "rules.py").write_text((copy / "rules.py").read_text() + "\n# changed\n")
    assert measurement_code_hash(start) == base

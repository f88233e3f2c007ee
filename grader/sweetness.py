"""Sweetness evidence: refractometer temperature correction, lot samples, outliers."""

from __future__ import annotations

import math
import statistics
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .errors import InvalidReading
from .records import SweetnessEvidence

TABLE = Path(__file__).parent / "data" / "icumsa_brix_temperature.toml"
#: a refractometer reading of fruit juice outside this range is a sensor or handling error
BRIX_MIN, BRIX_MAX = 0.0, 35.0


@lru_cache(maxsize=1)
def _table() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = tomllib.loads(TABLE.read_text())
    temps = sorted(data["corrections"], key=float)
    return (np.array([float(t) for t in temps]), np.array(data["brix"], float), np.array([data["corrections"][t] for t in temps], float))


def correct_to_20c(brix: float, temperature_c: float | None) -> float:
    """°Brix at 20 °C from a reading at ``temperature_c`` (bilinear in the ICUMSA table)."""
    if not math.isfinite(brix) or not BRIX_MIN <= brix <= BRIX_MAX:
        raise InvalidReading(f"brix must be between {BRIX_MIN:g} and {BRIX_MAX:g} °Brix, got {brix}")
    if temperature_c is None:
        return brix
    temps, brixes, corr = _table()
    if not math.isfinite(temperature_c) or not temps[0] <= temperature_c <= temps[-1]:
        raise InvalidReading(
            f"temperature_c must be between {temps[0]:g} and {temps[-1]:g} °C for the correction table, got {temperature_c}",
            field="temperature_c",
        )
    per_temp = np.array([np.interp(brix, brixes, row) for row in corr])
    return float(brix + np.interp(temperature_c, temps, per_temp))


@dataclass(frozen=True)
class LotSample:
    """The destructive refractometer samples of a lot, summarised."""

    n: int
    mean_brix: float
    sd_brix: float | None

    def evidence(self) -> SweetnessEvidence:
        return SweetnessEvidence(brix=self.mean_brix, source="lot-sample", n=self.n, spread=self.sd_brix)


def lot_sample(readings_brix: list[float]) -> LotSample | None:
    if not readings_brix:
        return None
    sd = statistics.stdev(readings_brix) if len(readings_brix) > 1 else None
    return LotSample(len(readings_brix), float(statistics.fmean(readings_brix)), sd)


def is_outlier(value: float, population: list[float], k: float, min_n: int) -> tuple[bool, float | None]:
    """Is ``value`` more than k robust standard deviations (1.4826·MAD) from the population's
    median? Returns (outlier, z). Undecided (False, None) below ``min_n`` values."""
    if len(population) < min_n:
        return False, None
    med = float(np.median(population))
    mad = float(np.median(np.abs(np.asarray(population) - med))) * 1.4826
    sigma = max(mad, 1e-6 + 0.02 * abs(med))  # a very uniform lot still tolerates 2 % variation
    z = (value - med) / sigma
    return abs(z) > k, float(z)

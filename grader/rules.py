"""The rule engine: the best grade of a standard that a fruit meets, and why not a better one.

For every grade above the one given, each failed rule is reported with the measured value and the
limit ("blemish 1.40 cm² > 1.00 cm² for Premium"). A measure the rule needs but that is unknown
(no Brix reading, no calibration) does not fail the rule: the grade is *provisional* and the reason
says which measure is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import OUT_OF_GRADE, DefectEvidence, GradeDecision, Reason
from .standards import GradeRule, Standard


@dataclass(frozen=True)
class FruitFacts:
    """The measures the rules read; ``None`` = unknown."""

    diameter_mm: float | None = None
    brix: float | None = None
    blemish_area_cm2: float | None = None
    largest_blemish_cm2: float | None = None
    colour_coverage: float | None = None
    defects: tuple[str, ...] = ()  # labels/types the defect evidence asserts, e.g. ("defective",)


def facts_from(
    measure_diameter_mm: float | None,
    brix: float | None,
    blemish_area_cm2: float | None,
    largest_blemish_cm2: float | None,
    colour_coverage: float | None,
    defect: DefectEvidence | None,
    sound_labels: tuple[str, ...] = ("sound",),
) -> FruitFacts:
    """The facts the rules judge. A defective fruit asserts its label and, where the model tells
    defect types apart, its type too, plus the generic "defective": a standard can then exclude
    any defect from a grade ("defective") or only some types ("rot", "greening", ...)."""
    if defect is None or defect.label in sound_labels:
        defects: tuple[str, ...] = ()
    else:
        defects = tuple(dict.fromkeys(d for d in ("defective", defect.label, defect.type) if d))
    return FruitFacts(measure_diameter_mm, brix, blemish_area_cm2, largest_blemish_cm2, colour_coverage, defects)


def _check(rule: GradeRule, f: FruitFacts) -> tuple[list[Reason], list[Reason]]:
    """(failures, unverified) of one grade's rules for these facts."""
    fails: list[Reason] = []
    unknown: list[Reason] = []
    g = rule.name

    def missing(rule_name: str, what: str, limit: float) -> None:
        unknown.append(Reason(g, rule_name, None, limit, f"{what} unknown: {g} needs it (limit {limit:g}); grade provisional", True))

    # size, with an optional relaxation for sweet fruit
    min_d = rule.min_diameter_mm
    if rule.size_relaxation is not None and f.brix is not None and f.brix >= rule.size_relaxation.min_brix:
        min_d = rule.size_relaxation.min_diameter_mm
    if min_d is not None:
        if f.diameter_mm is None:
            missing("min_diameter_mm", "diameter", min_d)
        elif f.diameter_mm < min_d:
            fails.append(
                Reason(g, "min_diameter_mm", round(f.diameter_mm, 1), min_d, f"diameter {f.diameter_mm:.1f} mm < {min_d:g} mm for {g}")
            )
    if rule.max_diameter_mm is not None:
        if f.diameter_mm is None:
            missing("max_diameter_mm", "diameter", rule.max_diameter_mm)
        elif f.diameter_mm > rule.max_diameter_mm:
            fails.append(
                Reason(
                    g,
                    "max_diameter_mm",
                    round(f.diameter_mm, 1),
                    rule.max_diameter_mm,
                    f"diameter {f.diameter_mm:.1f} mm > {rule.max_diameter_mm:g} mm for {g}",
                )
            )
    if rule.min_brix is not None:
        if f.brix is None:
            missing("min_brix", "°Brix", rule.min_brix)
        elif f.brix < rule.min_brix:
            fails.append(
                Reason(g, "min_brix", round(f.brix, 2), rule.min_brix, f"sweetness {f.brix:.1f} °Brix < {rule.min_brix:g} °Brix for {g}")
            )
    for attr, what in (("blemish_area_cm2", "blemish"), ("largest_blemish_cm2", "largest blemish")):
        limit = getattr(rule, f"max_{attr}")
        value = getattr(f, attr)
        if limit is None:
            continue
        if value is None:
            missing(f"max_{attr}", f"{what} area", limit)
        elif value > limit:
            fails.append(Reason(g, f"max_{attr}", round(value, 3), limit, f"{what} {value:.2f} cm² > {limit:g} cm² for {g}"))
    if rule.min_colour_coverage is not None:
        if f.colour_coverage is None:
            missing("min_colour_coverage", "colour coverage", rule.min_colour_coverage)
        elif f.colour_coverage < rule.min_colour_coverage:
            fails.append(
                Reason(
                    g,
                    "min_colour_coverage",
                    round(f.colour_coverage, 3),
                    rule.min_colour_coverage,
                    f"colour coverage {f.colour_coverage:.0%} < {rule.min_colour_coverage:.0%} for {g}",
                )
            )
    for d in f.defects:
        if d in rule.excluded_defects:
            fails.append(Reason(g, "excluded_defects", d, ",".join(rule.excluded_defects), f"defect '{d}' excludes {g}"))
    return fails, unknown


def outlet_for(standard: Standard, grade: str, diameter_mm: float | None) -> str | None:
    for o in standard.outlets:
        if o.grade != grade:
            continue
        if o.min_diameter_mm is not None and (diameter_mm is None or diameter_mm < o.min_diameter_mm):
            continue
        if o.max_diameter_mm is not None and (diameter_mm is None or diameter_mm > o.max_diameter_mm):
            continue
        return o.outlet
    return None


def grade_fruit(standard: Standard, facts: FruitFacts) -> GradeDecision:
    """The best grade whose rules the fruit meets; reasons for every better grade it missed."""
    reasons: list[Reason] = []
    for rule in standard.grades:
        fails, unknown = _check(rule, facts)
        if not fails:
            return GradeDecision(
                grade=rule.name,
                standard_id=standard.id,
                standard_version=standard.version,
                reasons=reasons + unknown,
                provisional=bool(unknown),
                outlet=outlet_for(standard, rule.name, facts.diameter_mm),
            )
        reasons.extend(fails)
    return GradeDecision(
        grade=OUT_OF_GRADE,
        standard_id=standard.id,
        standard_version=standard.version,
        reasons=reasons,
        provisional=False,
        outlet=outlet_for(standard, OUT_OF_GRADE, facts.diameter_mm),
    )

"""Every rule of every shipped standard at and across its limit, and a property: the engine never
returns a grade whose limits the fruit violates."""

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from grader.records import OUT_OF_GRADE
from grader.rules import FruitFacts, _check, grade_fruit
from grader.standards import load_standards

STANDARDS = load_standards()
EPS = 0.01


def perfect(rule) -> FruitFacts:
    """Facts that meet every limit of this grade."""
    d = 75.0
    if rule.min_diameter_mm:
        d = max(d, rule.min_diameter_mm + 1)
    if rule.max_diameter_mm:
        d = min(d, rule.max_diameter_mm - 1)
    return FruitFacts(diameter_mm=d, brix=20.0, blemish_area_cm2=0.0, largest_blemish_cm2=0.0, colour_coverage=1.0)


def cases():
    for std in STANDARDS.values():
        for rule in std.grades:
            limits = {
                "min_diameter_mm": ("diameter_mm", -EPS),
                "max_diameter_mm": ("diameter_mm", +EPS),
                "min_brix": ("brix", -EPS),
                "max_blemish_area_cm2": ("blemish_area_cm2", +EPS),
                "max_largest_blemish_cm2": ("largest_blemish_cm2", +EPS),
                "min_colour_coverage": ("colour_coverage", -EPS),
            }
            for name, (fact, across) in limits.items():
                if getattr(rule, name) is not None:
                    yield pytest.param(std.id, rule.name, name, fact, across, id=f"{std.id}:{rule.name}:{name}")


@pytest.mark.parametrize("std_id,grade,limit_name,fact,across", list(cases()))
def test_rule_at_and_across_its_limit(std_id, grade, limit_name, fact, across):
    rule = next(g for g in STANDARDS[std_id].grades if g.name == grade)
    limit = getattr(rule, limit_name)
    base = perfect(rule)
    if limit_name == "min_diameter_mm" and rule.size_relaxation is not None:
        base = replace(base, brix=rule.size_relaxation.min_brix - 1)  # the strict size limit applies
    at = replace(base, **{fact: limit})
    fails, _ = _check(rule, at)
    assert fails == [], f"{grade}: {fact}={limit} is at the limit and must pass"
    beyond = replace(base, **{fact: limit + across})
    fails, _ = _check(rule, beyond)
    assert [f.rule for f in fails] == [limit_name]
    assert fails[0].measured is not None and fails[0].limit == limit


@pytest.mark.parametrize("std_id", sorted(STANDARDS))
def test_excluded_defects_exclude(std_id):
    for rule in STANDARDS[std_id].grades:
        for d in rule.excluded_defects:
            fails, _ = _check(rule, replace(perfect(rule), defects=(d,)))
            assert [f.rule for f in fails] == ["excluded_defects"]


maybe = lambda s: st.one_of(st.none(), s)  # noqa: E731
facts_st = st.builds(
    FruitFacts,
    diameter_mm=maybe(st.floats(20, 120)),
    brix=maybe(st.floats(0, 30)),
    blemish_area_cm2=maybe(st.floats(0, 6)),
    largest_blemish_cm2=maybe(st.floats(0, 6)),
    colour_coverage=maybe(st.floats(0, 1)),
    defects=st.lists(st.sampled_from(["defective", "rot", "greening", "canker", "scab"]), max_size=2).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(std_id=st.sampled_from(sorted(STANDARDS)), facts=facts_st)
def test_engine_never_returns_a_grade_the_fruit_violates(std_id, facts):
    std = STANDARDS[std_id]
    d = grade_fruit(std, facts)
    if d.grade == OUT_OF_GRADE:
        assert all(_check(r, facts)[0] for r in std.grades)  # every grade has a failed rule
        return
    rule = next(g for g in std.grades if g.name == d.grade)
    fails, unknown = _check(rule, facts)
    assert fails == []
    assert d.provisional == bool(unknown)
    better = std.grade_names[: std.grade_names.index(d.grade)]
    assert all(_check(next(g for g in std.grades if g.name == b), facts)[0] for b in better)  # the best it meets
    assert {r.grade for r in d.reasons if not r.unverified} == set(better)

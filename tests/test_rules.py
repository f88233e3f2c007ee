"""Standards as data and the rule engine."""

import pytest

from grader.errors import InvalidStandard, UnknownStandard
from grader.records import OUT_OF_GRADE
from grader.rules import FruitFacts, grade_fruit
from grader.standards import get_standard, load_standard_file, load_standards


@pytest.fixture(scope="module")
def standards():
    return load_standards()


def test_shipped_standards_load(standards):
    assert {"unece-ffv50-apples", "gbt-21488-navel-oranges", "usda-apples"} <= set(standards)
    assert standards["gbt-21488-navel-oranges"].grade_names == ["Premium", "Grade 1", "Grade 2"]


def test_best_grade_with_reasons_for_the_better_ones(standards):
    std = standards["gbt-21488-navel-oranges"]
    d = grade_fruit(std, FruitFacts(brix=12.0, blemish_area_cm2=1.4, largest_blemish_cm2=0.2, colour_coverage=0.95))
    assert d.grade == "Grade 1" and not d.provisional and d.outlet == "lane-2"
    assert [r.text for r in d.reasons] == ["blemish 1.40 cm² > 1 cm² for Premium"]
    r = d.reasons[0]
    assert (r.grade, r.rule, r.measured, r.limit) == ("Premium", "max_blemish_area_cm2", 1.4, 1.0)


def test_limits_are_inclusive(standards):
    std = standards["gbt-21488-navel-oranges"]
    at = FruitFacts(brix=11.0, blemish_area_cm2=1.0, largest_blemish_cm2=0.3, colour_coverage=0.90)
    assert grade_fruit(std, at).grade == "Premium"
    below = FruitFacts(brix=10.99, blemish_area_cm2=1.0, largest_blemish_cm2=0.3, colour_coverage=0.90)
    assert grade_fruit(std, below).grade == "Grade 1"


def test_fruit_meeting_no_grade_is_out_of_grade_with_all_reasons(standards):
    std = standards["gbt-21488-navel-oranges"]
    d = grade_fruit(std, FruitFacts(brix=8.0, blemish_area_cm2=0.1, largest_blemish_cm2=0.1, colour_coverage=0.95))
    assert d.grade == OUT_OF_GRADE and d.outlet == "processing"
    assert [r.grade for r in d.reasons] == ["Premium", "Grade 1", "Grade 2"]


def test_unknown_brix_makes_the_grade_provisional(standards):
    std = standards["gbt-21488-navel-oranges"]
    d = grade_fruit(std, FruitFacts(blemish_area_cm2=0.1, largest_blemish_cm2=0.1, colour_coverage=0.95))
    assert d.grade == "Premium" and d.provisional
    assert any(r.unverified and r.rule == "min_brix" for r in d.reasons)


def test_defect_label_excludes_grades(standards):
    std = standards["unece-ffv50-apples"]
    clean = FruitFacts(diameter_mm=72, blemish_area_cm2=0.0, largest_blemish_cm2=0.0)
    assert grade_fruit(std, clean).grade == "Extra"
    bad = FruitFacts(diameter_mm=72, blemish_area_cm2=0.0, largest_blemish_cm2=0.0, defects=("defective",))
    d = grade_fruit(std, bad)
    assert d.grade == "Class II"
    assert "defect 'defective' excludes Extra" in [r.text for r in d.reasons]
    rotten = FruitFacts(diameter_mm=72, blemish_area_cm2=0.0, largest_blemish_cm2=0.0, defects=("rot",))
    assert grade_fruit(std, rotten).grade == OUT_OF_GRADE


def test_size_relaxation_for_sweet_apples(standards):
    std = standards["unece-ffv50-apples"]
    small = dict(diameter_mm=55, blemish_area_cm2=0.0, largest_blemish_cm2=0.0)
    assert grade_fruit(std, FruitFacts(**small, brix=10.0)).grade == OUT_OF_GRADE
    assert grade_fruit(std, FruitFacts(**small, brix=10.5)).grade == "Extra"


def test_outlet_by_size_band(standards):
    std = standards["unece-ffv50-apples"]
    f = dict(blemish_area_cm2=0.5, largest_blemish_cm2=0.5)
    assert grade_fruit(std, FruitFacts(diameter_mm=75, **f)).outlet == "lane-2"
    assert grade_fruit(std, FruitFacts(diameter_mm=65, **f)).outlet == "lane-3"


def test_unknown_standard(standards):
    with pytest.raises(UnknownStandard):
        get_standard(standards, "nope")


def test_invalid_standard_file_names_the_problem(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text('id = "x"\nname = "x"\nversion = "1"\ncommodity = "apple"\n[[grades]]\nname = "A"\nmin_brix = -3\n')
    with pytest.raises(InvalidStandard, match="min_brix"):
        load_standard_file(p)


def test_packhouse_adds_its_own_standard(tmp_path):
    (tmp_path / "house.toml").write_text(
        'id = "house-gala"\nname = "House Gala"\nversion = "1"\ncommodity = "apple"\n'
        '[[grades]]\nname = "Premium"\nmin_diameter_mm = 70\nmin_brix = 11.5\n'
    )
    std = load_standards(tmp_path)["house-gala"]
    assert grade_fruit(std, FruitFacts(diameter_mm=71, brix=12)).grade == "Premium"


def _evidence(label, type_=None):
    from grader.records import DefectEvidence

    return DefectEvidence(
        label=label, score=0.9 if label != "sound" else 0.1, probabilities={}, model_name="m", model_version="1", type=type_
    )


@pytest.mark.parametrize(
    ("label", "type_", "grade"),
    [
        ("sound", None, "Premium"),
        ("blackspot", "blackspot", "Grade 2"),  # any defect: out of Premium and Grade 1
        ("canker", "canker", "Grade 2"),
        ("greening", "greening", "Grade 2"),  # greening caps a fruit at Grade 2
        ("rot", "rot", OUT_OF_GRADE),  # decay excludes every grade
        ("defective", None, "Grade 2"),  # a model without types
    ],
)
def test_defect_type_decides_the_navel_orange_grade(standards, label, type_, grade):
    from grader.rules import facts_from

    facts = facts_from(80.0, 12.0, 0.0, 0.0, 0.95, _evidence(label, type_))
    assert facts.defects == (() if label == "sound" else tuple(dict.fromkeys(("defective", label))))
    assert grade_fruit(standards["gbt-21488-navel-oranges"], facts).grade == grade


def test_lemon_standard(standards):
    std = standards["citrus-export-lemons"]
    assert std.commodity == "lemon" and std.grade_names == ["Class I", "Class II"]
    ok = FruitFacts(brix=7.0, blemish_area_cm2=0.5)
    assert grade_fruit(std, ok).grade == "Class I"
    assert grade_fruit(std, FruitFacts(brix=6.0, blemish_area_cm2=0.5)).grade == OUT_OF_GRADE  # below 6.5 °Brix
    assert grade_fruit(std, FruitFacts(brix=7.0, blemish_area_cm2=1.5)).grade == "Class II"

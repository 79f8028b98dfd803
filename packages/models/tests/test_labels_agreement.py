"""Agreement statistics: equal to reference implementations, published worked examples,
undefined cases and bad input."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mlinfra_models.labels import (
    AnnotationError,
    UndefinedMetricError,
    cohen_kappa,
    fleiss_kappa,
    krippendorff_alpha,
    measure_agreement,
    parse_taxonomy,
)

# Fleiss (1971) as on Wikipedia's "Fleiss' kappa" worked example: 10 subjects, 14 raters each,
# 5 categories; kappa = 0.210.
FLEISS_1971 = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)
# Krippendorff (2011), "Computing Krippendorff's alpha-reliability", the example with missing
# data: 4 observers, 12 units, values 1-5 (None = not rated); nominal alpha = 0.743.
KRIPPENDORFF_2011 = [
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def long_from_counts(counts: np.ndarray) -> pl.DataFrame:
    """One row per rating of a count table; annotator ids by position within the item."""
    rows = []
    for i, row in enumerate(counts):
        labels = np.repeat(np.arange(row.size), row)
        rows += [(i, f"r{j:02d}", f"c{k}") for j, k in enumerate(labels)]
    return pl.DataFrame(rows, schema=["item_id", "annotator_id", "label"], orient="row")


def long_from_matrix(matrix: list[list[int | None]]) -> pl.DataFrame:
    """Annotators x items reliability data (None = missing) as a long table."""
    rows = [
        (item, f"obs_{a}", str(value))
        for a, row in enumerate(matrix)
        for item, value in enumerate(row)
        if value is not None
    ]
    return pl.DataFrame(rows, schema=["item_id", "annotator_id", "label"], orient="row")


def test_fleiss_1971_worked_example() -> None:
    assert fleiss_kappa(FLEISS_1971) == pytest.approx(0.2099, abs=1e-4)
    result = measure_agreement(long_from_counts(FLEISS_1971), n_boot=200)
    assert round(result.fine.fleiss_kappa or 0, 3) == 0.210
    assert result.fine.n_items == 10 and result.fine.n_ratings == 140
    assert result.fine.observed_agreement == pytest.approx(0.3780, abs=1e-4)  # P-bar


def test_krippendorff_2011_worked_example_with_missing_data() -> None:
    result = measure_agreement(long_from_matrix(KRIPPENDORFF_2011), n_boot=200)
    assert round(result.fine.krippendorff_alpha or 0, 3) == 0.743
    # Unit 12 has a single value: not pairable, left out and counted.
    assert result.excluded_items == 1 and result.fine.n_items == 11
    # Items have 2 to 4 ratings: Fleiss is undefined, with a reason; the others are computed.
    assert result.fine.fleiss_kappa is None
    assert "different numbers of ratings" in result.fine.reasons["fleiss_kappa"]
    assert "fleiss_kappa" not in result.fine.intervals
    assert result.fine.mean_pairwise_cohen_kappa is not None
    low, high = result.fine.intervals["krippendorff_alpha"]
    assert low < 0.743 < high


def test_mean_pairwise_cohen_is_the_mean_over_pairs() -> None:
    result = measure_agreement(long_from_matrix(KRIPPENDORFF_2011), n_boot=0)
    kappas = result.fine.pairwise["cohen_kappa"].to_numpy()
    assert result.fine.mean_pairwise_cohen_kappa == pytest.approx(kappas.mean())
    assert result.fine.pairwise.height == 6  # 4 observers, every pair shares items


def test_weighted_kappa_needs_an_order() -> None:
    with pytest.raises(AnnotationError, match="need an order"):
        cohen_kappa(["a", "b"], ["b", "b"], weights="linear")
    with pytest.raises(AnnotationError, match="missing from the category order"):
        measure_agreement(long_from_counts(FLEISS_1971), order=["c0", "c1"], n_boot=0)


def test_coarse_level_maps_through_the_taxonomy() -> None:
    taxonomy = parse_taxonomy(
        {
            "version": "t1",
            "categories": [
                {"name": "a1", "parent": "A"},
                {"name": "a2", "parent": "A"},
                {"name": "b1", "parent": "B"},
            ],
        }
    )
    table = pl.DataFrame(
        {
            "event_id": [1, 1, 2, 2, 3, 3, 4, 4],
            "annotator_id": ["x", "y"] * 4,
            "label": ["a1", "a2", "a1", "a1", "b1", "b1", "a2", "b1"],
        }
    )
    result = measure_agreement(table, taxonomy=taxonomy, n_boot=50)
    assert result.fine.categories == ("a1", "a2", "b1")
    assert result.coarse is not None and result.coarse.categories == ("A", "B")
    assert result.fine.observed_agreement == pytest.approx(0.5)
    assert result.coarse.observed_agreement == pytest.approx(0.75)
    # Pooled confusion: ordered rating pairs, symmetric, diagonal = agreeing pairs.
    assert result.fine.confusion.tolist() == [[2, 1, 0], [1, 0, 1], [0, 1, 2]]
    top = result.fine.top_confusions(5)
    assert top.height == 2 and set(top["pairs"]) == {2}
    per = {r["category"]: r for r in result.fine.per_category.to_dicts()}
    assert per["a1"]["specific_agreement"] == pytest.approx(2 / 3)
    assert per["a2"]["specific_agreement"] == pytest.approx(0.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    table = long_from_counts(FLEISS_1971)
    one = measure_agreement(table, n_boot=300, seed=3)
    two = measure_agreement(table, n_boot=300, seed=3)
    other = measure_agreement(table, n_boot=300, seed=4)
    assert one.fine.intervals == two.fine.intervals
    assert one.fine.intervals != other.fine.intervals
    for key, (low, high) in one.fine.intervals.items():
        assert low <= getattr(one.fine, key) <= high, key
    assert measure_agreement(table, n_boot=0).fine.intervals == {}


def test_json_form_has_the_headline_statistics() -> None:
    result = measure_agreement(long_from_matrix(KRIPPENDORFF_2011), n_boot=20).as_dict()
    for key in (
        "fleiss_kappa",
        "krippendorff_alpha",
        "mean_pairwise_cohen_kappa",
        "observed_agreement",
        "n_items",
        "n_annotators",
        "reasons",
    ):
        assert key in result
    assert result["fleiss_kappa"] is None and "fleiss_kappa" in result["reasons"]
    assert result["coarse"] is None and result["excluded_items"] == 1


def test_undefined_when_everyone_uses_one_category() -> None:
    table = pl.DataFrame(
        {"item_id": [1, 1, 2, 2], "annotator_id": ["a", "b"] * 2, "label": ["x"] * 4}
    )
    result = measure_agreement(table, n_boot=10)
    assert result.fine.observed_agreement == 1.0
    assert result.fine.fleiss_kappa is None and result.fine.krippendorff_alpha is None
    assert result.fine.mean_pairwise_cohen_kappa is None
    assert set(result.fine.reasons) == {
        "fleiss_kappa",
        "krippendorff_alpha",
        "mean_pairwise_cohen_kappa",
    }
    with pytest.raises(UndefinedMetricError):
        krippendorff_alpha(np.array([[2], [2]]))


GOOD = {
    "item_id": [1, 1, 2, 2],
    "annotator_id": ["a", "b", "a", "b"],
    "label": ["x", "y", "x", "x"],
}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            pl.DataFrame(
                schema={"item_id": pl.Int64, "annotator_id": pl.String, "label": pl.String}
            ),
            "the table is empty",
        ),
        (pl.DataFrame(GOOD).drop("label"), r"missing columns \['label'\]"),
        (pl.DataFrame(GOOD).drop("item_id"), r"missing columns \['item_id'\]"),
        (
            pl.DataFrame(GOOD).with_columns(annotator_id=pl.lit("a")),
            r"2 duplicate \(item_id, annotator_id\) rows",
        ),
        (
            pl.DataFrame(GOOD).with_columns(label=pl.Series(["x", None, "x", "x"])),
            r"null values in \{'label': 1\}",
        ),
        (
            pl.DataFrame({"item_id": [1, 2], "annotator_id": ["a", "b"], "label": ["x", "y"]}),
            "no item has two or more ratings",
        ),
    ],
)
def test_bad_input_is_named(table: pl.DataFrame, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        measure_agreement(table, n_boot=0)


def test_labels_outside_the_taxonomy_are_named() -> None:
    taxonomy = parse_taxonomy(
        {
            "version": "t1",
            "categories": [{"name": "x", "parent": "P"}, {"name": "z", "parent": "P"}],
        }
    )
    with pytest.raises(AnnotationError, match=r"1 labels are not categories.*'y' \(1\)"):
        measure_agreement(pl.DataFrame(GOOD), taxonomy=taxonomy, n_boot=0)
    assert issubclass(AnnotationError, ValueError)


def test_single_rated_items_are_excluded_and_counted() -> None:
    table = pl.concat(
        [
            pl.DataFrame(GOOD),
            pl.DataFrame({"item_id": [3, 4], "annotator_id": ["a", "b"], "label": ["x", "y"]}),
        ]
    )
    result = measure_agreement(table, n_boot=0)
    assert result.excluded_items == 2 and result.fine.n_items == 2
    assert result.n_annotations == 6


def test_resampling_item_patterns_equals_resampling_items(monkeypatch: pytest.MonkeyPatch) -> None:
    """Items with the same count row are interchangeable: drawing patterns (multinomial) and
    drawing items give the same bootstrap distribution."""
    from mlinfra_models.labels import agreement as module

    rng = np.random.default_rng(2)
    truth = rng.integers(0, 4, 3000)
    labels = np.where(rng.random((3000, 3)) < 0.3, rng.integers(0, 4, (3000, 3)), truth[:, None])
    table = pl.DataFrame(
        {
            "item_id": np.repeat(np.arange(3000), 3),
            "annotator_id": np.tile(["a", "b", "c"], 3000),
            "label": [f"k{v}" for v in labels.ravel()],
        }
    )
    monkeypatch.setattr(module, "_PATTERN_COST", 1)  # 20 patterns << 3000 items: patterns
    grouped = measure_agreement(table, n_boot=2000).fine
    monkeypatch.setattr(module, "_PATTERN_COST", 10**9)  # never: items
    items = measure_agreement(table, n_boot=2000).fine
    assert grouped.fleiss_kappa == items.fleiss_kappa
    for key, (low, high) in items.intervals.items():
        assert grouped.intervals[key][0] == pytest.approx(low, abs=0.006), key
        assert grouped.intervals[key][1] == pytest.approx(high, abs=0.006), key

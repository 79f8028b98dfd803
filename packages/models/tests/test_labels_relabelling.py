"""Relabelling batches: stratified, reproducible samples and the CSV round trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlinfra_models.labels import (
    AnnotationError,
    parse_taxonomy,
    read_relabelled_csv,
    sample_for_relabelling,
    write_relabelling_csv,
)

CATEGORIES = ["common", "medium", "rare"]
TAXONOMY = parse_taxonomy(
    {"version": "v1", "categories": [{"name": c, "parent": "P"} for c in CATEGORIES]}
)


def predictions(n: int = 5000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame(
        {
            "event_id": np.arange(1, n + 1),
            "predicted": rng.choice(CATEGORIES, n, p=[0.8, 0.18, 0.02]),
            "confidence": rng.beta(5, 2, n),
        }
    )


def test_sample_is_stratified_and_covers_rare_strata() -> None:
    preds = predictions()
    sample = sample_for_relabelling(preds, 500, seed=1, taxonomy=TAXONOMY)
    assert sample.height == 500 and sample["event_id"].n_unique() == 500
    assert set(sample.columns) == {
        "event_id",
        "predicted",
        "confidence",
        "confidence_bin",
        "stratum_size",
        "inclusion_probability",
    }
    strata = sample.group_by("predicted", "confidence_bin").agg(
        n=pl.len(), size=pl.col("stratum_size").first()
    )
    # Equal allocation: a stratum gives all it has, or the same share as every other one.
    share = strata.filter(pl.col("n") < pl.col("size"))["n"]
    assert share.max() - share.min() <= 1  # type: ignore[operator]
    whole = strata.filter(pl.col("n") == pl.col("size"))
    assert whole.height >= 1 and (whole["size"] <= share.max()).all()  # small strata: whole
    # 2% of predictions are rare: ~10 of 500 by proportion, far more by equal allocation.
    assert sample.filter(pl.col("predicted") == "rare").height >= 80
    probs = sample["inclusion_probability"]
    assert ((probs > 0) & (probs <= 1)).all()


def test_sample_is_reproducible_whatever_the_row_order() -> None:
    preds = predictions()
    one = sample_for_relabelling(preds, 300, seed=7)
    two = sample_for_relabelling(preds.sample(fraction=1.0, shuffle=True, seed=3), 300, seed=7)
    assert one.equals(two)
    other = sample_for_relabelling(preds, 300, seed=8)
    assert set(one["event_id"]) != set(other["event_id"])


def test_proportional_allocation_follows_stratum_sizes() -> None:
    preds = predictions()
    sample = sample_for_relabelling(preds, 1000, allocation="proportional")
    assert sample.height == 1000
    common = sample.filter(pl.col("predicted") == "common").height
    assert 760 <= common <= 840  # ~80% of predictions


def test_a_sample_larger_than_the_population_takes_everything() -> None:
    preds = predictions(40)
    sample = sample_for_relabelling(preds, 500)
    assert sample.height == 40 and (sample["inclusion_probability"] == 1).all()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.drop("confidence"), r"missing columns \['confidence'\]"),
        (lambda p: p.head(0), "the table is empty"),
        (lambda p: p.with_columns(event_id=pl.lit(1)), "rows share an event_id"),
        (lambda p: p.with_columns(confidence=pl.lit(1.5)), r"within \[0, 1\]"),
        (lambda p: p.with_columns(predicted=pl.lit("zz")), r"\['zz'\] are not in taxonomy v1"),
    ],
)
def test_bad_predictions_are_named(change: object, message: str) -> None:
    with pytest.raises(AnnotationError, match=message):
        sample_for_relabelling(change(predictions(50)), 10, taxonomy=TAXONOMY)  # type: ignore[operator]


def test_csv_round_trip(tmp_path: Path) -> None:
    preds = predictions(200)
    events = preds.select("event_id").with_columns(
        name=pl.lit("page_viewed"), module=pl.lit("analytics"), text=pl.lit("opened a page")
    )
    sample = sample_for_relabelling(preds, 20, seed=2)
    path = write_relabelling_csv(sample, tmp_path / "batch" / "relabel.csv", events=events)
    exported = pl.read_csv(path)
    assert exported.columns == ["event_id", "name", "module", "text", "annotator_id", "label"]
    assert exported["event_id"].to_list() == sample["event_id"].to_list()
    assert (exported["label"].fill_null("") == "").all()  # empty for annotators to fill
    assert [p.name for p in path.parent.iterdir()] == ["relabel.csv"]

    filled = exported.with_columns(
        annotator_id=pl.lit("ann_01"),
        label=pl.when(pl.int_range(pl.len()) < 15).then(pl.lit("medium")).otherwise(None),
    )
    filled.write_csv(path)
    batch = read_relabelled_csv(path, taxonomy=TAXONOMY, expected_ids=sample["event_id"])
    assert batch.annotations.columns == ["event_id", "annotator_id", "label"]
    assert batch.annotations.height == 15 and batch.blank_rows == 5
    assert batch.unlabelled_events == 5


def _returned(tmp_path: Path, rows: list[tuple[object, ...]], header: str) -> Path:
    path = tmp_path / "returned.csv"
    path.write_text(header + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    ("rows", "header", "message"),
    [
        ([(1, "common")], "event_id,label", r"missing columns \['annotator_id'\]"),
        ([(99, "a", "common")], "event_id,annotator_id,label", r"not in the batch, e\.g\. \[99\]"),
        ([(1, "a", "nope")], "event_id,annotator_id,label", r"labels \['nope'\] are not categ"),
        (
            [(1, "a", "common"), (1, "a", "rare")],
            "event_id,annotator_id,label",
            r"1 duplicate \(event_id, annotator_id\) rows|2 duplicate",
        ),
        ([("x1", "a", "common")], "event_id,annotator_id,label", "must be an integer"),
        ([(1, "", "common")], "event_id,annotator_id,label", "have no annotator_id"),
    ],
)
def test_bad_returned_files_are_named(
    tmp_path: Path, rows: list[tuple[object, ...]], header: str, message: str
) -> None:
    path = _returned(tmp_path, rows, header)
    with pytest.raises(AnnotationError, match=message) as info:
        read_relabelled_csv(path, taxonomy=TAXONOMY, expected_ids=[1, 2, 3])
    assert str(path) in str(info.value)


def test_an_unreadable_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AnnotationError, match=r"missing\.csv: cannot read"):
        read_relabelled_csv(tmp_path / "missing.csv")

"""Property-based equality with the reference implementations on random annotation tables:
scikit-learn's ``cohen_kappa_score`` (unweighted, linear, quadratic), statsmodels'
``fleiss_kappa`` and the ``krippendorff`` package's nominal alpha.

Needs hypothesis, statsmodels and krippendorff (root dev group; CI adds them to the isolated
run of this package's tests); skipped without them.
"""

from __future__ import annotations

import warnings

import numpy as np
import polars as pl
import pytest

from mlinfra_models.labels import cohen_kappa, measure_agreement

hypothesis = pytest.importorskip("hypothesis")
st = pytest.importorskip("hypothesis.strategies")
given, settings, assume = hypothesis.given, hypothesis.settings, hypothesis.assume


@st.composite
def annotation_tables(draw: st.DrawFn, complete: bool = False) -> pl.DataFrame:
    """Random long tables: 2-25 items, 2-5 annotators, 2-5 categories, optional gaps."""
    n_items = draw(st.integers(2, 25))
    n_annotators = draw(st.integers(2, 5))
    k = draw(st.integers(2, 5))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n_items)
    noise = draw(st.floats(0.0, 1.0))
    labels = np.where(
        rng.random((n_items, n_annotators)) < noise,
        rng.integers(0, k, (n_items, n_annotators)),
        truth[:, None],
    )
    rated = np.ones_like(labels, dtype=bool) if complete else rng.random(labels.shape) < 0.7
    rated[0] = True  # at least one item with two or more ratings
    item, annotator = np.nonzero(rated)
    return pl.DataFrame(
        {
            "item_id": item,
            "annotator_id": [f"a{j}" for j in annotator],
            "label": [f"k{v}" for v in labels[item, annotator]],
        }
    )


@settings(max_examples=60, deadline=None)
@given(annotation_tables(complete=True))
def test_fleiss_equals_statsmodels(table: pl.DataFrame) -> None:
    sm = pytest.importorskip("statsmodels.stats.inter_rater")
    counts, _ = sm.aggregate_raters(
        table.pivot(on="annotator_id", index="item_id", values="label").drop("item_id").to_numpy()
    )
    with np.errstate(all="ignore"):  # statsmodels divides by zero when kappa is undefined
        expected = sm.fleiss_kappa(counts, method="fleiss")
    assume(np.isfinite(expected))
    result = measure_agreement(table, n_boot=0)
    assert result.fine.fleiss_kappa == pytest.approx(expected, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(annotation_tables())
def test_alpha_equals_the_krippendorff_package(table: pl.DataFrame) -> None:
    kd = pytest.importorskip("krippendorff")
    pivot = table.with_columns(pl.col("label").str.slice(1).cast(pl.Float64)).pivot(
        on="item_id", index="annotator_id", values="label"
    )
    data = pivot.drop("annotator_id").to_numpy().astype(np.float64)
    pairable = (np.isfinite(data).sum(axis=0) >= 2).any()
    assume(pairable)
    values = np.unique(data[:, np.isfinite(data).sum(axis=0) >= 2])
    assume(np.isfinite(values).sum() >= 2)
    expected = kd.alpha(reliability_data=data, level_of_measurement="nominal")
    result = measure_agreement(table, n_boot=0)
    assert result.fine.krippendorff_alpha == pytest.approx(expected, abs=1e-9)


@settings(max_examples=60, deadline=None)
@given(annotation_tables(), st.sampled_from([None, "linear", "quadratic"]))
def test_pairwise_cohen_equals_scikit_learn(table: pl.DataFrame, weights: str | None) -> None:
    from sklearn.metrics import cohen_kappa_score

    order = [f"k{i}" for i in range(5)]
    result = measure_agreement(table, n_boot=0, order=order)
    column = "cohen_kappa" if weights is None else f"cohen_kappa_{weights}"
    kept = table.filter(pl.col("item_id").count().over("item_id") >= 2)
    for row in result.fine.pairwise.iter_rows(named=True):
        a = kept.filter(pl.col("annotator_id") == row["annotator_a"])
        b = kept.filter(pl.col("annotator_id") == row["annotator_b"])
        both = a.join(b, on="item_id", suffix="_b")
        assert both.height == row["n_items"]
        y1, y2 = both["label"].to_list(), both["label_b"].to_list()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # scikit-learn warns when kappa is undefined (NaN)
            expected = cohen_kappa_score(y1, y2, labels=order, weights=weights)
        if np.isfinite(expected):
            assert row[column] == pytest.approx(expected, abs=1e-9)
            assert cohen_kappa(y1, y2, order=order, weights=weights) == pytest.approx(expected)
        else:
            assert row[column] is None

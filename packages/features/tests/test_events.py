"""Product events and annotations of the demo warehouse: taxonomy, schema, truth, agreement."""

from datetime import UTC, datetime

import numpy as np
import polars as pl
import pytest

from mlinfra_features._events import generate_product_events, load_taxonomy_v1

START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2024, 7, 1, tzinfo=UTC)


def make_customers(n: int = 300, seed: int = 0) -> pl.DataFrame:
    """Customers signing up across 2023-2024; about half churn 1-300 days after signup."""
    rng = np.random.default_rng(seed)
    signup = np.datetime64("2023-01-01T00:00:00", "us") + rng.integers(
        0, 640 * 86_400 * 10**6, n
    ).astype("timedelta64[us]")
    churn = signup + rng.integers(86_400 * 10**6, 300 * 86_400 * 10**6, n).astype("timedelta64[us]")
    churned = rng.random(n) < 0.5
    return pl.DataFrame(
        {
            "customer_id": np.arange(1, n + 1, dtype=np.int64),
            "signup_at": signup,
            "churned_at": pl.Series(churn).set(pl.Series(~churned), None),
        }
    ).with_columns(pl.col("signup_at", "churned_at").dt.replace_time_zone("UTC"))


def generate(seed: int, n_events: int, **kwargs: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    return generate_product_events(
        np.random.default_rng(seed), make_customers(), START, END, n_events, **kwargs
    )


@pytest.fixture(scope="module")
def default_sample() -> tuple[pl.DataFrame, pl.DataFrame]:
    return generate(seed=0, n_events=20_000)


def fleiss_kappa(labels: np.ndarray) -> float:
    """Fleiss' kappa of an (items, raters) array of category codes."""
    n_items, n_raters = labels.shape
    counts = np.zeros((n_items, labels.max() + 1))
    np.add.at(counts, (np.repeat(np.arange(n_items), n_raters), labels.ravel()), 1)
    p_observed = ((counts * (counts - 1)).sum(axis=1) / (n_raters * (n_raters - 1))).mean()
    p_expected = ((counts.sum(axis=0) / (n_items * n_raters)) ** 2).sum()
    return float((p_observed - p_expected) / (1 - p_expected))


def label_matrix(annotations: pl.DataFrame, mapping: dict[str, str] | None = None) -> np.ndarray:
    labels = annotations.sort("event_id", "annotator_id")["label"]
    if mapping is not None:
        labels = labels.replace_strict(mapping)
    _, codes = np.unique(labels.to_numpy(), return_inverse=True)
    return codes.reshape(annotations["event_id"].n_unique(), -1)


def test_taxonomy_v1_has_24_fine_categories_under_coarse_parents() -> None:
    taxonomy = load_taxonomy_v1()
    assert taxonomy.version == "v1"
    assert len(taxonomy.names) == 24
    assert len(set(taxonomy.names)) == 24
    assert set(taxonomy.parents) == set(taxonomy.names)
    assert len(taxonomy.coarse_names) == 6
    assert all(taxonomy.descriptions[name].strip() for name in taxonomy.names)
    assert 2 <= len(taxonomy.protected) <= 4
    assert set(taxonomy.protected) <= set(taxonomy.names)
    assert taxonomy.parents["user_engagement"] == taxonomy.parents["feature_usage"]


def test_same_seed_gives_identical_frames() -> None:
    events_a, annotations_a = generate(seed=3, n_events=2_000, n_annotated=200)
    events_b, annotations_b = generate(seed=3, n_events=2_000, n_annotated=200)
    events_c, _ = generate(seed=4, n_events=2_000, n_annotated=200)
    assert events_a.equals(events_b)
    assert annotations_a.equals(annotations_b)
    assert not events_a.equals(events_c)


def test_schema_and_ids() -> None:
    events, annotations = generate(seed=5, n_events=1_000)
    assert events.schema == pl.Schema(
        {
            "event_id": pl.Int64,
            "customer_id": pl.Int64,
            "event_timestamp": pl.Datetime("us", "UTC"),
            "name": pl.Utf8,
            "module": pl.Utf8,
            "text": pl.Utf8,
            "duration_s": pl.Float64,
            "items_count": pl.Int64,
            "value_usd": pl.Float64,
            "true_category": pl.Utf8,
        }
    )
    assert annotations.schema == pl.Schema(
        {"event_id": pl.Int64, "annotator_id": pl.Utf8, "label": pl.Utf8}
    )
    assert events["event_id"].to_list() == list(range(1, 1_001))
    assert events["event_timestamp"].is_sorted()
    assert events.null_count().sum_horizontal().item() == 0
    assert (events["duration_s"] > 0).all()
    assert (events["items_count"] >= 0).all()
    words = events["text"].str.split(" ").list.len()
    assert words.min() == 5
    assert words.max() == 10


def test_events_fall_in_window_while_customer_is_alive() -> None:
    customers = make_customers()
    events, _ = generate(seed=6, n_events=5_000)
    joined = events.join(customers, on="customer_id", how="left")
    ts = pl.col("event_timestamp")
    assert joined["signup_at"].null_count() == 0
    checks = joined.select(
        after_start=(ts > START).all(),
        until_end=(ts <= END).all(),
        after_signup=(pl.col("signup_at") <= ts).all(),
        before_churn=(pl.col("churned_at").is_null() | (ts < pl.col("churned_at"))).all(),
    )
    assert checks.row(0, named=True) == dict.fromkeys(checks.columns, True)
    dead_before_start = customers.filter(pl.col("churned_at") <= START)["customer_id"]
    born_after_end = customers.filter(pl.col("signup_at") > END)["customer_id"]
    assert len(dead_before_start) > 0
    assert len(born_after_end) > 0
    assert not events["customer_id"].is_in(dead_before_start.append(born_after_end)).any()


def test_all_categories_appear_and_attributes_follow_category(
    default_sample: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    taxonomy = load_taxonomy_v1()
    events, _ = default_sample
    assert set(events["true_category"].unique()) == set(taxonomy.names)
    paid = events.filter(pl.col("value_usd") > 0)["true_category"].unique().to_list()
    assert set(paid) <= {
        "subscription_change",
        "payment_success",
        "payment_failure",
        "invoice_activity",
        "api_usage",
        "data_import",
    }
    by_category = events.group_by("true_category").agg(
        pl.col("duration_s").median(), pl.col("items_count").mean()
    )
    durations = dict(by_category.select("true_category", "duration_s").iter_rows())
    items = dict(by_category.select("true_category", "items_count").iter_rows())
    assert durations["api_usage"] < durations["user_engagement"] < durations["support_request"]
    assert items["data_import"] > 100 * items["commenting"]
    # The engagement pair shares an event name; unrelated categories do not.
    names = events.group_by("true_category").agg(pl.col("name").unique())
    name_sets = {row[0]: set(row[1]) for row in names.iter_rows()}
    assert name_sets["user_engagement"] & name_sets["feature_usage"]
    assert not name_sets["security_alert"] & name_sets["commenting"]


def test_each_annotated_event_has_distinct_annotators(
    default_sample: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    taxonomy = load_taxonomy_v1()
    events, annotations = default_sample
    per_event = annotations.group_by("event_id").agg(
        pl.len().alias("n"), pl.col("annotator_id").n_unique().alias("distinct")
    )
    assert per_event.height == 500
    assert (per_event["n"] == 3).all()
    assert (per_event["distinct"] == 3).all()
    assert per_event["event_id"].is_in(events["event_id"]).all()
    assert set(annotations["annotator_id"].unique()) <= {f"ann_{i:02d}" for i in range(1, 7)}
    assert set(annotations["label"].unique()) <= set(taxonomy.names)


def test_small_sample_annotates_every_event() -> None:
    _, annotations = generate(
        seed=8, n_events=40, n_annotated=500, annotators_per_event=2, n_annotators=4
    )
    assert annotations["event_id"].n_unique() == 40
    assert annotations.height == 80


def test_agreement_matches_calibration(
    default_sample: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    taxonomy = load_taxonomy_v1()
    _, annotations = default_sample
    fine = fleiss_kappa(label_matrix(annotations))
    coarse = fleiss_kappa(label_matrix(annotations, dict(taxonomy.parents)))
    assert 0.57 <= fine <= 0.65
    assert 0.74 <= coarse <= 0.82


def test_agreement_is_calibrated_on_average_over_seeds() -> None:
    # One sample of 500 events has a spread of about 0.02; the mean of 10 is near the target.
    parents = dict(load_taxonomy_v1().parents)
    kappas = []
    for seed in range(10):
        _, annotations = generate(seed=100 + seed, n_events=2_000)
        fine = fleiss_kappa(label_matrix(annotations))
        coarse = fleiss_kappa(label_matrix(annotations, parents))
        kappas.append((fine, coarse))
    mean_fine, mean_coarse = np.mean(kappas, axis=0)
    assert mean_fine == pytest.approx(0.61, abs=0.02)
    assert mean_coarse == pytest.approx(0.78, abs=0.02)


def test_engagement_pair_is_most_confused(
    default_sample: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    events, annotations = default_sample
    # Disagreements between two annotators of the same event, as unordered label pairs.
    pairs = (
        annotations.join(annotations, on="event_id", suffix="_other")
        .filter(pl.col("label") < pl.col("label_other"))
        .group_by("label", "label_other")
        .len()
        .sort("len", "label", descending=[True, False])
    )
    assert pairs.row(0)[:2] == ("feature_usage", "user_engagement")
    assert pairs["len"][0] > 1.5 * pairs["len"][1]
    # Against the hidden truth: the most frequent error is within the engagement pair too.
    errors = (
        annotations.join(events.select("event_id", "true_category"), on="event_id")
        .filter(pl.col("label") != pl.col("true_category"))
        .with_columns(
            pl.min_horizontal("label", "true_category").alias("a"),
            pl.max_horizontal("label", "true_category").alias("b"),
        )
        .group_by("a", "b")
        .len()
        .sort("len", "a", descending=[True, False])
    )
    assert errors.row(0)[:2] == ("feature_usage", "user_engagement")


def test_bad_inputs_are_named() -> None:
    customers = make_customers()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="end"):
        generate_product_events(rng, customers, END, START, 10)
    with pytest.raises(ValueError, match="churned_at"):
        generate_product_events(rng, customers.drop("churned_at"), START, END, 10)
    with pytest.raises(ValueError, match="annotators_per_event"):
        generate_product_events(rng, customers, START, END, 10, annotators_per_event=7)
    with pytest.raises(ValueError, match="alive"):
        generate_product_events(rng, customers.head(0), START, END, 10)

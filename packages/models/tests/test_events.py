"""The event classifier: majority labels under a taxonomy version, the time split, the model's
behaviour on synthetic events with a known process, multi-class evaluation and the retrain with
a taxonomy change (major version, not like-for-like)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import accuracy_score, f1_score

from mlinfra_models import (
    EVENT_FEATURES,
    EventClassifierSettings,
    EventGateSettings,
    RegistrySettings,
    compare_multiclass,
    confusion_pairs,
    evaluate_multiclass,
    event_confusion,
    macro_f1,
    majority_labels,
    retrain_event_classifier,
    split_events,
    train_event_classifier,
)
from mlinfra_models.labels import TaxonomyError, parse_taxonomy, propose_merges

# Six categories under three parents; browse/search look alike (shared name, module, words).
CATEGORIES = {
    "browse": ("engagement", ["page_viewed", "app_opened"], "web", ["page", "view", "open"]),
    "search": ("engagement", ["page_viewed", "search_run"], "web", ["query", "find", "result"]),
    "payment": ("billing", ["charge_ok", "invoice_paid"], "billing", ["card", "charge", "paid"]),
    "refund": ("billing", ["refund_issued", "credit"], "billing", ["refund", "credit", "back"]),
    "error": ("reliability", ["error_logged", "crash"], "api", ["error", "stack", "failed"]),
    "alert": ("reliability", ["alert_fired", "login_flag"], "security", ["alert", "login", "ip"]),
}
PRIOR = np.array([0.3, 0.2, 0.2, 0.1, 0.12, 0.08])
GENERIC = ["the", "user", "team", "account", "workspace", "today"]


def taxonomy_v1():  # type: ignore[no-untyped-def]
    return parse_taxonomy(
        {
            "version": "v1",
            "categories": [{"name": n, "parent": p[0]} for n, p in CATEGORIES.items()],
            "protected": ["alert"],
        }
    )


def taxonomy_v2():  # type: ignore[no-untyped-def]
    cats = [{"name": n, "parent": p[0]} for n, p in CATEGORIES.items() if n != "search"]
    return parse_taxonomy(
        {
            "version": "v2",
            "categories": cats,
            "protected": ["alert"],
            "maps_from": {"version": "v1", "mapping": {"search": "browse"}},
        }
    )


def synthetic_events(n: int = 500, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events with features and a hidden category, and 3 noisy annotations per event."""
    rng = np.random.default_rng(seed)
    names = list(CATEGORIES)
    truth = rng.choice(len(names), n, p=PRIOR)
    rows = []
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i, c in enumerate(truth):
        _, event_names, module, words = CATEGORIES[names[c]]
        text = [
            rng.choice(words) if rng.random() < 0.6 else rng.choice(GENERIC)
            for _ in range(rng.integers(4, 9))
        ]
        rows.append(
            {
                "event_id": i + 1,
                "event_timestamp": start + timedelta(hours=4 * i),
                "event_name": str(rng.choice(event_names)),
                "module": module if rng.random() < 0.9 else "web",
                "event_text": " ".join(map(str, text)),
                "duration_s": float(rng.lognormal(c, 0.5)),
                "items_count": int(rng.poisson(2 + 3 * c)),
                "value_usd": float(rng.lognormal(3, 1)) if names[c] in {"payment", "refund"} else 0,
                "true_category": names[c],
            }
        )
    events = pl.DataFrame(rows)
    annotations = []
    for i, c in enumerate(truth):
        for a in rng.choice(5, 3, replace=False):
            label = names[c]
            if rng.random() < 0.15:
                partner = {"browse": "search", "search": "browse"}.get(label)
                label = partner if partner and rng.random() < 0.7 else str(rng.choice(names))
            annotations.append({"event_id": i + 1, "annotator_id": f"ann_{a}", "label": label})
    return events, pl.DataFrame(annotations)


class EventFeatures:
    """A feature source over an in-memory event table (what Feast provides in production)."""

    def __init__(self, events: pl.DataFrame) -> None:
        self.table = events.select("event_id", *EVENT_FEATURES)
        self.calls: list[str] = []

    def __call__(self, service: str, rows: pl.DataFrame) -> pl.DataFrame:
        if service != "event_classifier_v1":
            raise LookupError(f"unknown feature service {service!r}")
        self.calls.append(service)
        return rows.join(self.table, on="event_id", how="left", maintain_order="left")


FAST = EventClassifierSettings(iterations=150, thread_count=2, bootstrap_resamples=50)


@pytest.fixture(scope="module")
def demo() -> tuple[pl.DataFrame, pl.DataFrame]:
    return synthetic_events()


def labelled(demo: tuple[pl.DataFrame, pl.DataFrame], taxonomy) -> pl.DataFrame:  # type: ignore[no-untyped-def]
    events, annotations = demo
    labels = majority_labels(annotations, taxonomy_v1(), taxonomy)
    return events.join(labels, on="event_id").sort("event_timestamp")


# -- labels ----------------------------------------------------------------------------------


def test_majority_label_with_deterministic_ties_and_taxonomy_conversion() -> None:
    annotations = pl.DataFrame(
        {
            "event_id": [1, 1, 1, 2, 2, 2, 3, 3, 3],
            "annotator_id": ["a", "b", "c"] * 3,
            "label": [
                *("refund", "payment", "refund"),
                *("alert", "search", "browse"),
                *("search", "browse", "payment"),
            ],
        }
    )
    v1 = majority_labels(annotations, taxonomy_v1(), taxonomy_v1())
    assert v1["label"].to_list() == ["refund", "browse", "browse"], (
        "majority; a three-way tie goes to the category listed first in the taxonomy"
    )
    assert v1["votes"].to_list() == [2, 1, 1] and v1["ratings"].to_list() == [3, 3, 3]
    # Under v2 (search merged into browse) the votes for the two count together.
    v2 = majority_labels(annotations, taxonomy_v1(), taxonomy_v2())
    assert v2["label"].to_list() == ["refund", "browse", "browse"]
    assert v2["votes"].to_list() == [2, 2, 2]


def test_majority_labels_reject_bad_annotations() -> None:
    good = pl.DataFrame({"event_id": [1, 1], "annotator_id": ["a", "b"], "label": ["browse"] * 2})
    with pytest.raises(TaxonomyError, match=r"'browze'.*not categories of taxonomy v1"):
        majority_labels(good.with_columns(label=pl.lit("browze")), taxonomy_v1(), taxonomy_v1())
    with pytest.raises(ValueError, match="annotations are empty"):
        majority_labels(good.clear(), taxonomy_v1(), taxonomy_v1())
    with pytest.raises(ValueError, match=r"lack column\(s\) \['annotator_id'\]"):
        majority_labels(good.drop("annotator_id"), taxonomy_v1(), taxonomy_v1())
    with pytest.raises(ValueError, match="event 1 by a"):
        majority_labels(pl.concat([good, good.head(1)]), taxonomy_v1(), taxonomy_v1())
    with pytest.raises(TaxonomyError, match="does not map from v2"):
        majority_labels(good, taxonomy_v2(), taxonomy_v1())


def test_split_is_by_time(demo: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    frame = labelled(demo, taxonomy_v1())
    split = split_events(frame.sample(fraction=1.0, shuffle=True, seed=1), FAST)
    assert split.evaluation.height == 100 and split.train.height == 400
    assert split.train["event_timestamp"].max() < split.evaluation["event_timestamp"].min()
    with pytest.raises(ValueError, match="min_train_events=50"):
        split_events(frame.head(40), FAST)
    with pytest.raises(ValueError, match="labelled events are empty"):
        split_events(frame.clear(), FAST)


# -- the model -------------------------------------------------------------------------------


def test_classifier_beats_the_majority_class_by_a_wide_margin(
    demo: tuple[pl.DataFrame, pl.DataFrame],
) -> None:
    split = split_events(labelled(demo, taxonomy_v1()), FAST)
    model = train_event_classifier(split.train, FAST, taxonomy_v1())
    predicted = model.predict(split.evaluation)
    y = split.evaluation["label"].to_list()
    majority = split.train["label"].mode().sort()[0]
    baseline = [majority] * len(y)
    assert accuracy_score(y, predicted) > accuracy_score(y, baseline) + 0.4
    assert macro_f1(y, predicted.tolist()) > macro_f1(y, baseline) + 0.5
    # It learns the hidden categories, not only the noisy majority labels.
    truth = split.evaluation["true_category"].to_list()
    assert accuracy_score(truth, predicted) > 0.75
    proba = model.predict_proba(split.evaluation)
    assert proba.shape == (split.evaluation.height, len(model.classes))
    assert np.allclose(proba.sum(axis=1), 1)
    # Reproducible: the same seed gives the same model.
    again = train_event_classifier(split.train, FAST, taxonomy_v1())
    assert (again.predict(split.evaluation) == predicted).all()


def test_training_rejects_bad_input(demo: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    frame = labelled(demo, taxonomy_v1())
    with pytest.raises(ValueError, match=r"lack column\(s\) \['event_text'\]"):
        train_event_classifier(frame.drop("event_text"), FAST, taxonomy_v1())
    with pytest.raises(ValueError, match="training set is empty"):
        train_event_classifier(frame.clear(), FAST, taxonomy_v1())
    with pytest.raises(TaxonomyError, match=r"\['search'\] that are not categories of taxonomy v2"):
        train_event_classifier(frame, FAST, taxonomy_v2())
    with pytest.raises(ValueError, match="single category"):
        train_event_classifier(frame.with_columns(label=pl.lit("browse")), FAST, taxonomy_v1())
    with pytest.raises(ValueError, match="evaluation_fraction must be in"):
        EventClassifierSettings(evaluation_fraction=1.0)


# -- evaluation ------------------------------------------------------------------------------


def test_macro_f1_and_confusion_match_scikit_learn() -> None:
    rng = np.random.default_rng(3)
    names = list(CATEGORIES)
    y = rng.choice(names[:5], 300).tolist()  # "alert" never occurs in the labels...
    p = [t if rng.random() < 0.6 else str(rng.choice(names)) for t in y]  # ...but is predicted
    assert macro_f1(y, p) == pytest.approx(f1_score(y, p, average="macro"))
    ev = evaluate_multiclass(y, p, taxonomy_v1(), n_boot=100, seed=0)
    assert ev.metrics["macro_f1"].value == pytest.approx(f1_score(y, p, average="macro"))
    assert ev.metrics["accuracy"].value == pytest.approx(accuracy_score(y, p))
    low, high = ev.metrics["macro_f1"].low, ev.metrics["macro_f1"].high
    assert low < ev.metrics["macro_f1"].value < high and high - low < 0.2
    per_class = f1_score(y, p, average=None, labels=names)
    assert [ev.per_class[n]["f1"] for n in names] == pytest.approx(per_class.tolist())
    assert ev.per_class["alert"]["support"] == 0
    cm = np.array(ev.confusion)
    assert cm.sum() == 300 and cm.trace() == sum(a == b for a, b in zip(y, p, strict=True))
    pairs = confusion_pairs(ev)
    assert pairs["count"].sum() == 300 and set(pairs.columns) == {"label", "predicted", "count"}
    with pytest.raises(TaxonomyError, match="not categories of taxonomy v2"):
        evaluate_multiclass(y, p, taxonomy_v2())
    with pytest.raises(ValueError, match="evaluation set is empty"):
        evaluate_multiclass([], [], taxonomy_v1())

    deltas = compare_multiclass(y, y, y, p, n_boot=100)
    assert deltas["accuracy"].value == pytest.approx(1 - accuracy_score(y, p))
    assert deltas["macro_f1"].low > 0


# -- retrain: registry, gate and taxonomy change ---------------------------------------------


def test_retrain_registers_and_a_taxonomy_change_is_a_major_version(
    demo: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path
) -> None:
    events, annotations = demo
    source = EventFeatures(events)
    registry = RegistrySettings(home=tmp_path / "home")
    common = {
        "annotation_taxonomy": taxonomy_v1(),
        "registry": registry,
        "report_dir": tmp_path / "reports",
        "log": lambda _: None,
    }
    keys = events.select("event_id", "event_timestamp")
    first = retrain_event_classifier(
        annotations, keys, source, FAST, taxonomy=taxonomy_v1(), **common
    )
    assert (first.version, first.semver, first.alias) == ("1", "1.0.0", "champion")
    assert first.taxonomy_version == "v1" and first.macro_f1_change is None
    assert "<svg" in first.report_path.read_text()

    # The champion's confusion feeds the merge proposal as model evidence.
    confusion = event_confusion(registry)
    assert confusion["count"].sum() == 100
    proposal = propose_merges(
        annotations.rename({"event_id": "item_id"}),
        taxonomy_v1(),
        target_categories=5,
        model_confusion=confusion,
    )
    assert {proposal.steps[0].kept, proposal.steps[0].absorbed} == {"browse", "search"}
    assert proposal.steps[0].model_confusion is not None

    second = retrain_event_classifier(
        annotations, keys, source, FAST, taxonomy=taxonomy_v2(), **common
    )
    assert (second.version, second.semver) == ("2", "2.0.0"), "a new taxonomy is major"
    assert not second.like_for_like and second.champion_taxonomy_version == "v1"
    assert second.macro_f1_change is not None
    assert second.macro_f1_change.value == pytest.approx(
        second.metrics["macro_f1"] - second.metrics["champion_macro_f1"]
    )
    assert second.champion_mapped_macro_f1 is not None
    assert "label sets differ" in second.decision.reason
    assert second.alias == "champion", "merging the confused pair raises macro-F1"
    page = second.report_path.read_text()
    assert "not like-for-like" in page and page.count("<svg") == 2

    # Within one taxonomy the gate is like-for-like; a taxonomy change can be held for a person.
    strict = EventGateSettings(promote_taxonomy_change=False)
    third = retrain_event_classifier(
        annotations, keys, source, FAST, taxonomy=taxonomy_v1(), gate_settings=strict, **common
    )
    assert third.semver == "3.0.0"
    assert third.alias == "challenger" and "promoted by a person" in third.decision.reason

"""Merge proposals on synthetic annotations with known confusions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlinfra_models.labels import (
    AnnotationError,
    MergeError,
    Taxonomy,
    convert_annotations,
    load_taxonomy,
    measure_agreement,
    parse_taxonomy,
    propose_merges,
    write_taxonomy,
)

TAXONOMY = parse_taxonomy(
    {
        "version": "v1",
        "categories": [
            {"name": "e1", "parent": "E", "description": "engagement one"},
            {"name": "e2", "parent": "E", "description": "engagement two"},
            {"name": "e3", "parent": "E", "description": "engagement three"},
            {"name": "b1", "parent": "B", "description": "billing one"},
            {"name": "b2", "parent": "B", "description": "billing two"},
            {"name": "bp", "parent": "B", "description": "billing, protected"},
            {"name": "c1", "parent": "C", "description": "collaboration one"},
            {"name": "c2", "parent": "C", "description": "collaboration two"},
        ],
        "protected": ["bp"],
    }
)
#: (true category, label given, rate): e1/e2 most confused; bp/b1 even more, but bp is
#: protected; c1/e3 across parents; b1/b2 a little.
CONFUSIONS = [
    ("e1", "e2", 0.35),
    ("e2", "e1", 0.35),
    ("bp", "b1", 0.45),
    ("b1", "bp", 0.45),
    ("c1", "e3", 0.25),
    ("e3", "c1", 0.25),
    ("b1", "b2", 0.08),
    ("b2", "b1", 0.08),
]


def synthetic_annotations(
    taxonomy: Taxonomy = TAXONOMY, n_items: int = 1500, per_item: int = 3, seed: int = 0
) -> pl.DataFrame:
    """Each item is labelled by 3 of 5 annotators; wrong labels follow ``CONFUSIONS`` plus 4%
    uniform noise."""
    rng = np.random.default_rng(seed)
    names = list(taxonomy.names)
    k = len(names)
    confusion = np.full((k, k), 0.04 / (k - 1))
    for true, given, rate in CONFUSIONS:
        confusion[names.index(true), names.index(given)] += rate
    np.fill_diagonal(confusion, 0.0)
    np.fill_diagonal(confusion, 1 - confusion.sum(axis=1))
    truth = rng.integers(0, k, n_items)
    rows = []
    for item, t in enumerate(truth):
        for annotator in rng.choice(5, per_item, replace=False):
            label = rng.choice(k, p=confusion[t])
            rows.append((item + 1, f"ann_{annotator}", names[label]))
    return pl.DataFrame(rows, schema=["event_id", "annotator_id", "label"], orient="row")


@pytest.fixture(scope="module")
def annotations() -> pl.DataFrame:
    return synthetic_annotations()


def test_the_known_confusable_pair_is_merged_first(annotations: pl.DataFrame) -> None:
    proposal = propose_merges(annotations, TAXONOMY, target_categories=5)
    first = proposal.steps[0]
    assert {first.kept, first.absorbed} == {"e1", "e2"}
    assert first.annotator_confusion == max(s.annotator_confusion for s in proposal.steps)
    assert first.fleiss_kappa is not None and first.krippendorff_alpha is not None
    assert first.fleiss_kappa > (proposal.baseline["fleiss_kappa"] or 0) + 0.03
    assert [s.n_categories for s in proposal.steps] == [7, 6, 5]
    assert len(proposal.taxonomy) == 5 and proposal.taxonomy.version == "v2"


def test_protected_categories_are_never_merged(annotations: pl.DataFrame) -> None:
    for target, cross in ((4, False), (2, True)):  # the lowest reachable targets
        proposal = propose_merges(annotations, TAXONOMY, target, allow_cross_parent=cross)
        merged = {name for s in proposal.steps for name in (s.kept, s.absorbed)}
        assert "bp" not in merged
        assert proposal.mapping["bp"] == "bp" and "bp" in proposal.taxonomy.protected


def test_cross_parent_merges_only_when_allowed(annotations: pl.DataFrame) -> None:
    within = propose_merges(annotations, TAXONOMY, 5)
    for step in within.steps:
        assert TAXONOMY.parent_of(step.kept) == TAXONOMY.parent_of(step.absorbed)
    across = propose_merges(annotations, TAXONOMY, 5, allow_cross_parent=True)
    assert {across.steps[1].kept, across.steps[1].absorbed} == {"c1", "e3"}
    assert across.steps[1].parent == TAXONOMY.parent_of(across.steps[1].kept)


def test_predicted_agreement_is_that_of_the_relabelled_annotations(
    annotations: pl.DataFrame,
) -> None:
    proposal = propose_merges(annotations, TAXONOMY, 5)
    for step in proposal.steps:
        relabelled = convert_annotations(annotations, TAXONOMY, step.taxonomy)
        measured = measure_agreement(relabelled, taxonomy=step.taxonomy, n_boot=0).fine
        assert step.fleiss_kappa == pytest.approx(measured.fleiss_kappa)
        assert step.krippendorff_alpha == pytest.approx(measured.krippendorff_alpha)
        assert step.observed_agreement == pytest.approx(measured.observed_agreement)
        assert set(step.mapping) == set(TAXONOMY.names)
        assert step.taxonomy.maps_from is not None
        assert step.taxonomy.maps_from.version == "v1"


def test_the_proposed_taxonomy_is_a_valid_file(annotations: pl.DataFrame, tmp_path: Path) -> None:
    proposal = propose_merges(annotations, TAXONOMY, 6)
    path = write_taxonomy(proposal.taxonomy, tmp_path / "v2.yaml")
    loaded = load_taxonomy(path)
    assert loaded == proposal.taxonomy
    assert dict(loaded.maps_from.mapping) == proposal.mapping  # type: ignore[union-attr]
    as_dict = proposal.as_dict()
    assert as_dict["source_categories"] == 8 and len(as_dict["steps"]) == 2


def test_model_confusion_is_evidence_too(annotations: pl.DataFrame) -> None:
    model = pl.DataFrame(
        {
            "label": ["b1", "b2", "e1", "c2"],
            "predicted": ["b2", "b1", "e1", "c2"],
            "count": [500, 500, 10, 10],
        }
    )
    proposal = propose_merges(annotations, TAXONOMY, 7, model_confusion=model)
    step = proposal.steps[0]
    assert {step.kept, step.absorbed} == {"b1", "b2"}
    assert step.model_confusion == pytest.approx(1000 / 1020)
    with pytest.raises(AnnotationError, match=r"model_confusion: \['zz'\] are not categories"):
        propose_merges(
            annotations, TAXONOMY, 7, model_confusion=model.with_columns(predicted=pl.lit("zz"))
        )


@pytest.mark.parametrize(
    ("target", "cross", "message"),
    [
        (0, False, "must be at least 1"),
        (9, False, "more than the 8 categories"),
        (3, False, r"unreachable.*1 protected categories stay.*\(3 parents\).*at least 4"),
        (1, True, r"unreachable.*the other categories can merge into one.*at least 2"),
    ],
)
def test_unreachable_targets_say_why(
    annotations: pl.DataFrame, target: int, cross: bool, message: str
) -> None:
    with pytest.raises(MergeError, match=message):
        propose_merges(annotations, TAXONOMY, target, allow_cross_parent=cross)


def test_target_below_the_protected_count() -> None:
    taxonomy = parse_taxonomy(
        {
            "version": "v1",
            "categories": [{"name": n, "parent": "P"} for n in "abcd"],
            "protected": ["a", "b", "c"],
        }
    )
    table = pl.DataFrame({"item_id": [1, 1], "annotator_id": ["x", "y"], "label": ["a", "d"]})
    with pytest.raises(MergeError, match=r"below the 3 protected categories .*\(a, b, c\)"):
        propose_merges(table, taxonomy, 2)


def test_no_step_when_already_at_the_target(annotations: pl.DataFrame) -> None:
    proposal = propose_merges(annotations, TAXONOMY, 8)
    assert proposal.steps == () and proposal.taxonomy is TAXONOMY
    assert proposal.mapping == {n: n for n in TAXONOMY.names}

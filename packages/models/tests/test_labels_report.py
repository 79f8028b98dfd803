"""The label report: HTML with inline SVG charts and the same figures as JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from mlinfra_models.labels import (
    ReviewSettings,
    label_figures,
    measure_agreement,
    parse_taxonomy,
    propose_merges,
    review_labels,
    write_label_figures,
    write_label_report,
    write_review,
)

TAXONOMY = parse_taxonomy(
    {
        "version": "v1",
        "categories": [
            {"name": "a1", "parent": "A", "description": "first"},
            {"name": "a2", "parent": "A", "description": "second"},
            {"name": "a3", "parent": "A", "description": "third"},
            {"name": "b1", "parent": "B", "description": "fourth"},
            {"name": "b2", "parent": "B", "description": "fifth"},
        ],
        "protected": ["b2"],
    }
)


@pytest.fixture(scope="module")
def annotations() -> pl.DataFrame:
    rng = np.random.default_rng(5)
    names = np.array(TAXONOMY.names)
    truth = rng.integers(0, 5, 400)
    labels = np.where(rng.random((400, 3)) < 0.25, rng.integers(0, 5, (400, 3)), truth[:, None])
    labels[(truth == 0)[:, None] & (rng.random((400, 3)) < 0.4)] = 1  # a1 read as a2
    return pl.DataFrame(
        {
            "event_id": np.repeat(np.arange(400), 3),
            "annotator_id": np.tile(["x", "y", "z"], 400),
            "label": names[labels.ravel()],
        }
    )


def test_report_and_figures(annotations: pl.DataFrame, tmp_path: Path) -> None:
    agreement = measure_agreement(annotations, taxonomy=TAXONOMY, n_boot=100)
    proposal = propose_merges(annotations, TAXONOMY, 3)
    figures = label_figures(agreement, proposal)
    path = write_label_figures(figures, tmp_path / "out" / "labels.json")
    loaded = json.loads(path.read_text())
    assert loaded["agreement"]["fine"]["fleiss_kappa"] == pytest.approx(agreement.fine.fleiss_kappa)
    assert set(loaded["agreement"]) == {"fine", "coarse"}
    assert len(loaded["per_category"]) == 5
    assert len(loaded["confusion"]["row_share"]) == 5
    assert loaded["top_confusions"][0]["category_a"] == "a1"
    assert loaded["top_confusions"][0]["category_b"] == "a2"
    assert [s["n_categories"] for s in loaded["merges"]["steps"]] == [4, 3]

    html = write_label_report(
        agreement, tmp_path / "out" / "labels.html", proposal=proposal, facts={"source": "t"}
    ).read_text()
    assert html.count("<svg") == 3  # fine and coarse heatmaps, merge chart
    for text in (
        "Fleiss&#x27; kappa",
        "Most confused pairs",
        "Proposed merges: v1 (5) &rarr; v2 (3)",
    ):
        assert text in html
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels.html", "labels.json"]


def test_report_without_taxonomy_or_merges(annotations: pl.DataFrame, tmp_path: Path) -> None:
    agreement = measure_agreement(annotations, n_boot=0)
    html = write_label_report(agreement, tmp_path / "r.html").read_text()
    assert html.count("<svg") == 1 and "Proposed merges" not in html
    figures = label_figures(agreement)
    assert figures["merges"] is None and set(figures["agreement"]) == {"fine"}
    json.dumps(figures, allow_nan=False)


def test_review_writes_report_figures_and_taxonomy(
    annotations: pl.DataFrame, tmp_path: Path
) -> None:
    review = review_labels(annotations, TAXONOMY, ReviewSettings(target_categories=3, n_boot=50))
    paths = write_review(review, tmp_path / "run", facts={"annotations": "synthetic"})
    assert {p.name for p in paths.values()} == {"labels.html", "labels.json", "taxonomy-v2.yaml"}
    assert paths["taxonomy"].read_text().startswith("# Taxonomy v2: proposed by merging")
    headline = review.headline()
    assert headline["proposed_categories"] == 3 and len(headline["merges"]) == 2
    assert headline["merges"][0] in ("a1 -> a2", "a2 -> a1")
    with pytest.raises(ValueError, match=r"target_categories=0 is invalid"):
        ReviewSettings(target_categories=0)

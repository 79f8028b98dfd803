"""The label-review flow end to end on a temporary home, under a real Prefect API."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from flows.config import load
from flows.label_review import label_review, resolve_taxonomy
from mlinfra_models.labels import TaxonomyError, convert_annotations, load_taxonomy


@pytest.mark.usefixtures("prefect_harness")
def test_label_review_on_the_demo_annotations(tmp_path: Path) -> None:
    # 3,000 customers give 600 events, of which the default 500 are annotated by 3 of 6.
    cfg = load("label_review", [f"paths.home={tmp_path}", "features.n_customers=3000"])
    result = label_review(cfg)

    assert result["n_items"] == 500 and result["n_annotators"] == 6
    # The demo's calibration: Fleiss' kappa about 0.61 fine and 0.78 coarse (spread ~0.02).
    assert 0.55 < result["fine_fleiss_kappa"] < 0.67
    assert 0.72 < result["coarse_fleiss_kappa"] < 0.84
    assert result["coarse_fleiss_kappa"] > result["fine_fleiss_kappa"]
    # The most confused pair of the generator goes first; protected categories never merge.
    assert result["merges"][0] in (
        "feature_usage -> user_engagement",
        "user_engagement -> feature_usage",
    )
    assert len(result["merges"]) == 9 and result["proposed_categories"] == 15
    protected = {"payment_failure", "security_alert", "error_report"}
    assert not protected & {name for m in result["merges"] for name in m.split(" -> ")}
    assert result["predicted_fleiss_kappa"] > result["fine_fleiss_kappa"] + 0.05

    out = Path(result["html"]).parent
    assert out.parent == tmp_path / "reports" / "labels"
    assert sorted(p.name for p in out.iterdir()) == [
        "labels.html",
        "labels.json",
        "taxonomy-v2.yaml",
    ]
    figures = json.loads((out / "labels.json").read_text())
    assert figures["agreement"]["fine"]["fleiss_kappa"] == pytest.approx(
        result["fine_fleiss_kappa"]
    )
    assert len(figures["merges"]["steps"]) == 9
    v2 = load_taxonomy(out / "taxonomy-v2.yaml")
    assert len(v2) == 15 and v2.maps_from is not None and v2.maps_from.version == "v1"
    # The proposed taxonomy converts the demo's labels.
    annotations = pl.read_parquet(tmp_path / "warehouse" / "event_annotations.parquet")
    converted = convert_annotations(annotations, resolve_taxonomy("v1"), v2)
    assert set(converted["label"]) <= set(v2.names)
    assert "Proposed merges: v1 (24) &rarr; v2 (15)" in (out / "labels.html").read_text()


@pytest.mark.usefixtures("prefect_harness")
def test_label_review_of_a_given_file(tmp_path: Path) -> None:
    names = resolve_taxonomy("v1").names
    rows = [
        (item, annotator, names[(item + (annotator == "c" and item % 3 == 0)) % len(names)])
        for item in range(120)
        for annotator in ("a", "b", "c")
    ]
    path = tmp_path / "annotations.csv"
    pl.DataFrame(rows, schema=["item_id", "annotator_id", "label"], orient="row").write_csv(path)
    cfg = load(
        "label_review",
        [
            f"paths.home={tmp_path / 'home'}",
            f"annotations={path}",
            "target_categories=20",
            "taxonomy=v1",
            "review.n_boot=50",
        ],
    )
    result = label_review(cfg)
    assert result["n_items"] == 120 and result["proposed_categories"] == 20
    assert not (tmp_path / "home" / "warehouse").exists()  # no demo warehouse needed


def test_an_unknown_taxonomy_is_named() -> None:
    with pytest.raises(TaxonomyError, match=r"taxonomy='v7' is neither a file.*\['v1'\]"):
        resolve_taxonomy("v7")

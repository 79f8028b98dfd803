"""The event classifier's retrain end to end on a small demo home: under taxonomy v1 it becomes
the first champion; after the label review proposes v2, `taxonomy=v2` retrains under the merged
taxonomy as a major version and reports the change in macro-F1 against the v1 champion."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.config import load
from flows.label_review import label_review
from flows.retrain import retrain
from mlinfra_models import RegistrySettings, event_confusion, mlflow_client

FAST = [
    "model=event_classifier",
    "model.event_classifier.settings.iterations=120",
    "model.event_classifier.settings.thread_count=2",
    "model.event_classifier.settings.bootstrap_resamples=50",
]


@pytest.mark.usefixtures("prefect_harness")
def test_retrain_under_v1_then_under_the_proposed_v2(tmp_path: Path) -> None:
    # 1,500 customers give 300 events, all annotated by 3 of 6 annotators.
    home = [f"paths.home={tmp_path}", "features.n_customers=1500"]
    first = retrain(load("retrain", [*home, *FAST]))["event_classifier"]  # materializes first
    assert (first["version"], first["semver"], first["alias"]) == ("1", "1.0.0", "champion")
    assert first["taxonomy_version"] == "v1" and first["macro_f1_change"] is None
    # 24 categories from ~240 training events: far above the majority class (macro-F1 ~0.01).
    assert first["macro_f1"] > 0.25 and first["accuracy"] > 0.4
    assert "<svg" in Path(first["report"]).read_text()

    client = mlflow_client(RegistrySettings(home=tmp_path))
    version = client.get_model_version("event_classifier", "1")
    assert version.tags["taxonomy_version"] == "v1"
    assert json.loads(version.tags["contract"])["extras"]["taxonomy_version"] == "v1"
    assert event_confusion(RegistrySettings(home=tmp_path))["count"].sum() == 60

    # No proposed v2 yet: a clear error that says what to run, and nothing is registered.
    with pytest.raises(FileNotFoundError, match=r"taxonomy=v2: .*flows\.label_review"):
        retrain(load("retrain", [*home, *FAST, "taxonomy=v2"]))
    assert len(client.search_model_versions("name='event_classifier'")) == 1

    review = label_review(load("label_review", [*home, "review.n_boot=100"]))
    proposed = Path(review["html"]).parent / "taxonomy-v2.yaml"
    second = retrain(load("retrain", [*home, *FAST, "taxonomy=v2"]))["event_classifier"]
    assert second["taxonomy_source"] == str(proposed)
    assert (second["version"], second["semver"]) == ("2", "2.0.0"), "a new taxonomy is major"
    assert second["taxonomy_version"] == "v2" and second["champion_taxonomy_version"] == "v1"
    assert not second["like_for_like"]
    assert second["macro_f1_change"] == pytest.approx(
        second["macro_f1"] - second["champion_macro_f1"]
    )
    assert "change vs the v1 champion" in second["note"]
    assert "label sets differ" in second["decision"]
    assert second["champion_mapped_macro_f1"] is not None
    v2 = client.get_model_version("event_classifier", "2")
    assert v2.tags["taxonomy_version"] == "v2"
    assert "not like-for-like" in Path(second["report"]).read_text()

"""The materialize flow end to end on a small demo, under a real Prefect API."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import load
from flows.materialize import materialize
from mlinfra_features import VIEWS, FeatureStoreSettings, Ledger, online_features


@pytest.mark.usefixtures("prefect_harness")
def test_materialize_flow_end_to_end(tmp_path: Path) -> None:
    cfg = load("materialize", [f"paths.home={tmp_path}", "features.n_customers=600"])
    result = materialize(cfg)
    assert set(result["offline_rows"]) == set(VIEWS)
    assert all(rows > 0 for rows in result["offline_rows"].values())
    assert result["freshness"]["customer_logins"] == "fresh"
    assert result["freshness"]["account_activity_daily"] == "fresh"
    store = FeatureStoreSettings(home=tmp_path)
    assert (tmp_path / "warehouse" / "_manifest.json").is_file()
    assert (store.feast_dir / "feature_store.yaml").is_file()
    values = online_features(store, "churn_v2", [1, 2, 3])
    assert values.drop_nulls().height >= 1

    # a second run reuses the warehouse and continues incrementally from the watermark
    first_runs = Ledger(store.ledger_path).runs()
    materialize(cfg)
    later = Ledger(store.ledger_path).runs()[len(first_runs) :]
    assert {r.feature_view for r in later} == set(VIEWS)
    for run in later:
        earlier = [r for r in first_runs if r.feature_view == run.feature_view]
        assert run.window_start == min(earlier[-1].window_end, earlier[-1].max_event_timestamp)

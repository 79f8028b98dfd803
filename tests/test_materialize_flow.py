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


@pytest.mark.usefixtures("prefect_harness")
def test_a_late_view_that_lands_announces_its_recovery(tmp_path: Path) -> None:
    home = [f"paths.home={tmp_path}", "features.n_customers=300"]
    late = materialize(load("materialize", [*home, "features.warehouse.delay_hours=72"]))
    assert late["freshness"]["account_activity_daily"] == "late"
    assert late["recovered"] == [], "nothing was fresh before and nothing recovered"
    on_time = materialize(load("materialize", [*home, "features.refresh=always"]))
    assert "account_activity_daily" in on_time["recovered"]
    again = materialize(load("materialize", home))
    assert again["recovered"] == [], "a view that stays fresh is not announced again"


def test_the_weekly_retrain_is_triggered_by_the_recovery_event() -> None:
    import yaml
    from prefect.events import DeploymentEventTrigger

    from flows.materialize import RECOVERED_EVENT

    root = Path(__file__).resolve().parent.parent
    deployments = yaml.safe_load((root / "prefect.yaml").read_text())["deployments"]
    (weekly,) = [d for d in deployments if d["name"] == "retrain-anomaly-detector-weekly"]
    (trigger,) = [DeploymentEventTrigger.model_validate(t) for t in weekly["triggers"]]
    assert trigger.expect == {RECOVERED_EVENT}
    assert trigger.match.model_dump()["prefect.resource.id"] == (
        "mlinfra.feature_view.account_activity_daily"
    )
    assert trigger.parameters == {"overrides": ["model=anomaly_detector"]}

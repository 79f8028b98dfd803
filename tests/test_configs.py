"""Every primary config composes, and every ``_target_`` in it instantiates."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from flows.config import CONFIG_DIR, build, load

JOBS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def targets(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    if isinstance(node, dict):
        if "_target_" in node:
            found.append((path, node))
        for key, value in node.items():
            found += targets(value, f"{path}.{key}" if path else str(key))
    return found


def job_with_group(group: str) -> str:
    """A primary config whose defaults list selects ``group`` (retrain when it does)."""
    from omegaconf import OmegaConf

    def groups(job: str) -> set[str]:
        primary = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / f"{job}.yaml"))
        defaults = primary.get("defaults", []) if isinstance(primary, dict) else []
        return {k for d in defaults if isinstance(d, dict) for k in d}

    job = next((j for j in ["retrain", *JOBS] if group in groups(j)), None)
    assert job, f"no primary config selects the group {group}"
    return job


def test_there_are_primary_configs() -> None:
    assert {"materialize", "retrain"} <= set(JOBS)


@pytest.mark.parametrize("job", JOBS)
def test_config_composes_and_instantiates(job: str, tmp_path: Path) -> None:
    cfg = load(job, [f"paths.home={tmp_path}", "features.n_customers=500"])
    nodes = targets(cfg)
    assert nodes, f"{job} instantiates nothing"
    for path, node in nodes:
        obj = build(node)
        assert type(obj).__name__ == node["_target_"].rsplit(".", 1)[1], path
    assert cfg["features"]["warehouse"]["n_customers"] == 500


@pytest.mark.parametrize("group", sorted(p.name for p in CONFIG_DIR.iterdir() if p.is_dir()))
def test_every_group_option_composes(group: str, tmp_path: Path) -> None:
    options = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
    assert options, f"config group {group} is empty"
    for option in options:
        cfg = load(job_with_group(group), [f"paths.home={tmp_path}", f"{group}={option}"])
        for path, node in targets(cfg):
            build(node)
            assert path


def test_unknown_override_is_rejected() -> None:
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        load("materialize", ["features.no_such_key=1"])

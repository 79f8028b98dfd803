"""Hydra composition for the flows: one primary config per job under ``configs/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def load(job: str, overrides: list[str] | None = None) -> dict[str, Any]:
    """Compose ``configs/<job>.yaml`` with Hydra overrides into a plain, resolved dict."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3", job_name=job):
        cfg = compose(config_name=job, overrides=list(overrides or []))
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(resolved, dict)
    return {str(k): v for k, v in resolved.items()}


def build(node: dict[str, Any]) -> Any:
    """Instantiate a ``_target_`` node of a resolved config into its typed settings object."""
    return instantiate(DictConfig(node), _convert_="all")

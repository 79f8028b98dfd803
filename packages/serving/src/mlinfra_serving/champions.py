"""The champions the service scores with, kept in step with the registry's ``champion`` alias.

:class:`Champions` holds one immutable :class:`Champion` per model. A background thread polls
the alias every ``reload_interval_s``; when it points to another version, that version is loaded
*beside* the current one and then swapped in with one reference assignment. A request reads the
reference once and scores all its ids with that champion, so it never mixes versions and never
waits for a load. A version that fails to load leaves the current champion serving (the error is
kept for ``/readyz``); an alias that disappears removes the model (its route answers 503).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from mlinfra_models import RegistrySettings, champion, mlflow_client
from mlinfra_serving.models import MODEL_SPECS, Scorer

__all__ = ["Champion", "Champions"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    model: str
    version: str
    semver: str
    feature_service: str
    scorer: Scorer
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    #: The registered version's tags (``taxonomy_version``, ``data_window``, ...).
    tags: dict[str, str] = field(default_factory=dict)


class Champions:
    """The loaded champion of each served model, refreshed by polling the registry."""

    def __init__(
        self,
        registry: RegistrySettings,
        models: tuple[str, ...],
        *,
        reload_interval_s: float,
        on_change: Callable[[str, Champion | None, Champion | None], None] | None = None,
    ) -> None:
        self.registry = registry
        self.models = models
        self.reload_interval_s = reload_interval_s
        self._on_change = on_change
        self._current: dict[str, Champion] = {}
        self.errors: dict[str, str] = {}
        self._client: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refresh_lock = threading.Lock()

    def get(self, model: str) -> Champion | None:
        return self._current.get(model)

    def loaded(self) -> dict[str, Champion]:
        return dict(self._current)

    def refresh(self) -> None:
        """Poll every model's alias once and swap in versions that moved."""
        with self._refresh_lock:
            if self._client is None:
                self._client = mlflow_client(self.registry)
            for model in self.models:
                try:
                    self._refresh_one(model)
                except Exception as exc:  # keep serving what is loaded
                    self.errors[model] = f"{type(exc).__name__}: {exc}"
                    logger.exception("reloading the %s champion failed", model)

    def _refresh_one(self, model: str) -> None:
        spec = MODEL_SPECS[model]
        version = champion(self._client, model)
        current = self._current.get(model)
        if version is None:
            self.errors[model] = f"model {model!r} has no version with the alias 'champion'"
            if current is not None:
                del self._current[model]
                self._changed(model, current, None)
            return
        if current is not None and current.version == version.version:
            self.errors.pop(model, None)
            return
        feature_service = version.tags.get("feature_service", spec.default_feature_service)
        scorer = spec.load(version.source, list(version.contract.features))
        new = Champion(
            model=model,
            version=version.version,
            semver=version.semver,
            feature_service=feature_service,
            scorer=scorer,
            tags=dict(version.tags),
        )
        self._current[model] = new  # the atomic swap
        self.errors.pop(model, None)
        logger.info("serving %s version %s (%s)", model, new.version, new.semver)
        self._changed(model, current, new)

    def _changed(self, model: str, old: Champion | None, new: Champion | None) -> None:
        if self._on_change is not None:
            self._on_change(model, old, new)

    def start(self) -> None:
        """Load the champions now, then keep polling in a daemon thread."""
        self.refresh()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="champion-reload", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.reload_interval_s):
            self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None

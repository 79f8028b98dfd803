"""The model registry on MLflow: runs, semantic versions from contracts, and the promotion gate.

Tracking and registry default to a SQLite database and an artifact folder under the platform
home; a tracking server is one setting away (``tracking_uri``). A registered version carries a
semantic version tag computed from its *contract* (features in, output out) against the
champion's: major when a feature is removed or renamed or the output changes, minor when
features are only added, patch when retrained on the same contract.

Registration is the last step of a training run: the run's parameters, metrics, report and
model are logged first, and only a complete, finished run becomes a version. The ``champion``
alias moves only after the version exists and the gate passed; otherwise the version gets
``challenger`` and the decision records why.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "Contract",
    "GateDecision",
    "RegistrySettings",
    "champion",
    "gate",
    "mlflow_client",
    "next_semver",
    "promote",
    "publish",
    "register",
    "semantic_version",
]

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class RegistrySettings:
    """Where MLflow tracks runs and keeps the registry."""

    home: Path = Path(".mlinfra")
    tracking_uri: str | None = None
    experiment: str = "mlinfra"

    def __post_init__(self) -> None:
        object.__setattr__(self, "home", Path(self.home).absolute())

    @property
    def uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.home / 'mlflow' / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return (self.home / "mlflow" / "artifacts").as_uri()


def mlflow_client(settings: RegistrySettings) -> Any:
    """Point MLflow at the settings' store (creating the local one) and return a client.

    An unreachable tracking server is reported at once with the URI, not after retries.
    MLflow's usage telemetry is turned off unless the caller set it: no network but the
    tracking server.
    """
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    import mlflow

    if settings.tracking_uri and settings.tracking_uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{settings.tracking_uri.rstrip('/')}/health", timeout=5)
        except (urllib.error.URLError, OSError) as exc:
            raise ConnectionError(
                f"MLflow tracking URI {settings.tracking_uri!r} is unreachable ({exc}); "
                "expected a running MLflow server"
            ) from exc
    if settings.tracking_uri is None:
        (settings.home / "mlflow").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.uri)
    mlflow.set_registry_uri(settings.uri)
    if mlflow.get_experiment_by_name(settings.experiment) is None:
        mlflow.create_experiment(settings.experiment, artifact_location=settings.artifact_location)
    mlflow.set_experiment(settings.experiment)
    return mlflow.MlflowClient(tracking_uri=settings.uri, registry_uri=settings.uri)


@dataclass(frozen=True)
class Contract:
    """What a model consumes and produces; versions are compared on it."""

    features: list[str]
    output: str
    extras: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {"features": self.features, "output": self.output, "extras": self.extras},
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> Contract:
        data = json.loads(text)
        return cls(list(data["features"]), str(data["output"]), dict(data.get("extras", {})))


def semantic_version(candidate: Contract, reference: Contract | None, version: str | None) -> str:
    """The candidate's semantic version relative to the reference version's contract."""
    if reference is None or version is None:
        return "1.0.0"
    major, minor, patch = (int(p) for p in version.split("."))
    removed = set(reference.features) - set(candidate.features)
    added = set(candidate.features) - set(reference.features)
    if removed or candidate.output != reference.output or candidate.extras != reference.extras:
        return f"{major + 1}.0.0"
    if added:
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


@dataclass(frozen=True)
class ChampionVersion:
    version: str
    semver: str
    contract: Contract
    tags: dict[str, str]
    run_id: str | None
    source: str


def champion(client: Any, model_name: str) -> ChampionVersion | None:
    """The version holding the ``champion`` alias, or None when there is none."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None
    return ChampionVersion(
        version=str(mv.version),
        semver=mv.tags["semver"],
        contract=Contract.from_json(mv.tags["contract"]),
        tags=dict(mv.tags),
        run_id=mv.run_id,
        source=f"models:/{model_name}/{mv.version}",
    )


def latest_semver(client: Any, model_name: str) -> str | None:
    """The highest semantic version registered under ``model_name``."""
    versions = client.search_model_versions(f"name='{model_name}'")
    semvers = [mv.tags.get("semver") for mv in versions if mv.tags.get("semver")]
    if not semvers:
        return None
    return max(semvers, key=lambda s: tuple(int(p) for p in s.split(".")))


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metric: str
    candidate: float
    champion: float | None
    tolerance: float


def gate(
    metric: str,
    candidate: float,
    champion_value: float | None,
    tolerance: float,
    *,
    higher_is_better: bool = True,
) -> GateDecision:
    """Promote unless the candidate is worse than the champion by more than ``tolerance``."""
    if champion_value is None:
        return GateDecision(True, "no champion yet", metric, candidate, None, tolerance)
    worse_by = (champion_value - candidate) if higher_is_better else (candidate - champion_value)
    if worse_by > tolerance:
        return GateDecision(
            False,
            f"{metric} {candidate:.4f} is worse than the champion's {champion_value:.4f} by "
            f"{worse_by:.4f}, beyond the tolerance {tolerance:.4f} (same evaluation window)",
            metric,
            candidate,
            champion_value,
            tolerance,
        )
    return GateDecision(
        True,
        f"{metric} {candidate:.4f} vs champion {champion_value:.4f} "
        f"(within tolerance {tolerance:.4f} or better)",
        metric,
        candidate,
        champion_value,
        tolerance,
    )


def register(
    client: Any,
    model_name: str,
    run_id: str,
    artifact_path: str,
    tags: Mapping[str, str],
) -> str:
    """Register a finished run's logged model as a new version, with its tags, in one call."""
    run = client.get_run(run_id)
    if run.info.status != "FINISHED":
        raise RuntimeError(
            f"run {run_id} is {run.info.status}; only a finished run can be registered"
        )
    from mlflow.exceptions import MlflowException

    with contextlib.suppress(MlflowException):  # it already exists
        client.create_registered_model(model_name)
    logged = [
        m
        for m in client.search_logged_models(
            experiment_ids=[run.info.experiment_id],
            filter_string=f"source_run_id = '{run_id}' AND name = '{artifact_path}'",
        )
    ]
    if not logged:
        raise RuntimeError(f"run {run_id} has no logged model named {artifact_path!r}")
    mv = client.create_model_version(
        name=model_name,
        source=logged[0].model_uri,
        run_id=run_id,
        tags=dict(tags),
        model_id=logged[0].model_id,
    )
    return str(mv.version)


def promote(client: Any, model_name: str, version: str, decision: GateDecision) -> str:
    """Move ``champion`` to the version if the gate passed; else mark it ``challenger``."""
    client.set_model_version_tag(model_name, version, "gate", decision.reason)
    alias = CHAMPION if decision.promote else CHALLENGER
    client.set_registered_model_alias(model_name, alias, version)
    return alias


def next_semver(
    client: Any, model_name: str, contract: Contract, current: ChampionVersion | None
) -> str:
    """The candidate's semantic version against the champion (1.0.0 when there is none)."""
    if current is None:
        return semantic_version(contract, None, None)
    return semantic_version(contract, current.contract, latest_semver(client, model_name))


def publish(
    client: Any,
    model_name: str,
    run_id: str,
    *,
    contract: Contract,
    tags: Mapping[str, str],
    decision: GateDecision,
) -> tuple[str, str]:
    """The last step of every retrain: register the finished run's ``model`` with its tags and
    contract, then move ``champion`` (or ``challenger``) per the gate. Returns (version, alias).
    """
    version = register(
        client, model_name, run_id, "model", tags={**tags, "contract": contract.to_json()}
    )
    return version, promote(client, model_name, version, decision)

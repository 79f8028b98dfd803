"""Batch scoring: a whole population scored by the churn champion, as resumable Parquet.

    frame = population(store, "churn_v2", as_of)          # every active customer, PIT features
    result = score_population(frame, champion, as_of, settings)

**Population.** Every customer the feature pipeline holds as active at ``as_of``: the customers
with a row at the feature service's newest snapshot at or before ``as_of``, each with the newest
values of every view at or before ``as_of`` and within the view's TTL (Feast's point-in-time
semantics; nulls where a view has no such row). It reads the offline store's Parquet tables with
Polars, not Feast's pandas join, so it scales to millions of customers; the tests check it equals
``mlinfra_features.training_set``.

**Scoring.** :class:`ChurnBatchPredictor` turns an Arrow batch into CatBoost's own input (a
float32 matrix of the numeric features and a bytes matrix of the categorical ones: no pandas)
and scores it. The same predictor runs in process or in Ray Data's ``map_batches(...,
batch_format="pyarrow")``, built once per Ray worker process (tasks pool) or actor.

**Engine.** ``in_process`` scores in this process with CatBoost's threads; ``ray`` scores the
pending partitions as one Ray Data dataset (one fixed start-up cost per run, not per partition)
with ``threads_per_actor`` CatBoost threads per worker, each reserving ``actor_num_cpus`` (less
than it uses, so that other tasks still get a CPU). ``ray.pool`` chooses the workers:

* ``tasks`` (the default): Ray Data tasks on Ray's reusable worker processes, which build a
  model's predictor once per process and keep it
  (:func:`~mlinfra_serving._predictor.score_with_cached_predictor`). A worker process costs a
  start and the import of Ray Data and CatBoost once per Ray job (~4.6 s on 2 cores, for a
  no-op too). :func:`warm_ray_scoring` pays it up front, one process per concurrent task, held
  at a rendezvous so that no two warm-up tasks share a process: the batch flow runs it while it
  reads the population, and :func:`score_with_ray` runs it first when this Ray job has not.
  Every later run in the job starts scoring at once.
* ``actors``: a fixed pool of actors started for the run, each building the predictor once,
  which costs every run those process starts and imports (Ray ends an actor's process with it).

``auto`` takes Ray when a cluster address is configured, in process below ``crossover_rows``
pending rows, Ray above; in process whatever the size when ``crossover_rows`` is None (the
default: on 2 cores Ray Data scores no faster per row than CatBoost in process, so there is no
size where it pays off).

**Output and resumption.** ``<output_dir>/<model>/as_of=<UTC time>/version=<version>/``:

* ``_run.json``: the run (model, version, semver, feature service, as_of, rows, partition size
  and a digest of the population's ids), written before anything is scored; a rerun checks
  that it scores the same population the same way;
* ``part-00000.parquet`` ...: one file per ``partition_rows`` customers (sorted by id):
  ``customer_id``, ``score``, ``model``, ``version``, ``semver``, ``feature_service``,
  ``as_of``, ``scored_at``. Each is written to a temporary name and renamed, so a partition file
  that exists is complete; a rerun skips those (and removes temporary files a crash left);
* ``_SUCCESS``: written last, with the partitions' row counts, once every partition is there.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from mlinfra_features import FEATURE_SERVICES, VIEWS, FeatureStoreSettings, service_entity_key
from mlinfra_models import RegistrySettings, write_atomic, write_text_atomic
from mlinfra_serving._predictor import (
    SCORE,
    ChurnBatchPredictor,
    Rendezvous,
    null_row,
    score_with_cached_predictor,
    warm_worker,
)

__all__ = [
    "ENGINES",
    "ENGINE_WORDS",
    "BatchScoreResult",
    "BatchScoreSettings",
    "ChurnBatchPredictor",
    "RayScoringSettings",
    "RayWarmup",
    "choose_engine",
    "load_batch_champion",
    "population",
    "score_in_process",
    "score_population",
    "score_with_ray",
    "warm_ray_scoring",
]

ENGINES = ("auto", "in_process", "ray")
#: How logs and reports say where rows were scored.
ENGINE_WORDS = {"in_process": "in process", "ray": "on Ray Data"}
POOLS = ("actors", "tasks")
RUN_FILE = "_run.json"
SUCCESS_FILE = "_SUCCESS"
_TS = "event_timestamp"


@dataclass(frozen=True)
class RayScoringSettings:
    """How the Ray engine sizes its pool (tasks or actors) and blocks."""

    #: A running cluster (``auto``, ``ray://head:10001``); None: the local Ray of this process.
    address: str | None = None
    #: ``tasks``: Ray Data tasks on Ray's reusable worker processes, each process building a
    #: model's predictor once and keeping it for later tasks and runs (warmed once per Ray job;
    #: see the module docstring); ``actors``: a fixed pool of actors started for every run, each
    #: building the predictor once.
    pool: str = "tasks"
    #: Concurrent tasks (or actors in the fixed pool), each with the model loaded once; None:
    #: one per ``threads_per_actor`` CPUs of the cluster.
    actors: int | None = None
    #: CatBoost threads per actor. CatBoost builds its input pool on one thread, so several
    #: one-thread actors keep more cores busy than one actor with many threads.
    threads_per_actor: int = 1
    #: CPUs each actor (or task) reserves: below what it uses, so that Ray's other tasks
    #: (reads, metadata) still get a CPU; two actors of one CPU each on a 2-CPU node starve them,
    #: and tasks of one CPU each ran one at a time.
    actor_num_cpus: float = 0.5
    #: Rows per Ray block, at most (one ``map_batches`` call each); smaller when there are
    #: fewer rows than ``actors`` blocks of this size.
    block_rows: int = 500_000

    def __post_init__(self) -> None:
        if self.pool not in POOLS:
            raise ValueError(f"ray.pool must be one of {', '.join(POOLS)}; got {self.pool!r}")
        if self.actors is not None and self.actors < 1:
            raise ValueError(
                f"ray.actors must be a positive number of actors or null, got {self.actors}"
            )
        if self.threads_per_actor < 1:
            raise ValueError(
                f"ray.threads_per_actor must be a positive number, got {self.threads_per_actor}"
            )
        if self.actor_num_cpus <= 0:
            raise ValueError(f"ray.actor_num_cpus must be positive, got {self.actor_num_cpus}")
        if self.block_rows < 1:
            raise ValueError(
                f"ray.block_rows must be a positive number of rows, got {self.block_rows}"
            )


@dataclass(frozen=True)
class BatchScoreSettings:
    """Where scores go, how the population is partitioned and which engine scores it."""

    output_dir: Path
    model: str = "churn"
    #: ``auto``, ``in_process`` or ``ray`` (see the module docstring).
    engine: str = "auto"
    #: ``auto`` scores in process below this many pending rows and with Ray at or above it; None:
    #: Ray never wins on this machine (no crossover measured), so ``auto`` scores in process
    #: unless a cluster address is configured. Measured on 2 cores: none with the tasks pool
    #: (see ``configs/batch_score.yaml``); re-measure on a bigger node.
    crossover_rows: int | None = None
    #: Customers per output partition (the unit of resumption).
    partition_rows: int = 500_000
    #: CatBoost threads in process; None: every core.
    threads: int | None = None
    ray: RayScoringSettings = field(default_factory=RayScoringSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "output_dir", Path(self.output_dir))
        if isinstance(self.ray, dict):
            object.__setattr__(self, "ray", RayScoringSettings(**self.ray))
        if self.model != "churn":
            raise ValueError(
                f"model must be 'churn' (the only batch-scored model), got {self.model!r}"
            )
        if self.engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {self.engine!r}")
        if self.partition_rows < 1:
            raise ValueError(
                f"partition_rows must be a positive number of rows, got {self.partition_rows}"
            )
        if self.crossover_rows is not None and self.crossover_rows < 0:
            raise ValueError(
                f"crossover_rows must be >= 0 or null (no crossover), got {self.crossover_rows}"
            )
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be a positive number or null, got {self.threads}")


# --- population --------------------------------------------------------------------------------


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError(f"as_of={value.isoformat()} has no time zone; expected a UTC time")
    return value.astimezone(UTC)


def population(store: FeatureStoreSettings, feature_service: str, as_of: datetime) -> pl.DataFrame:
    """Every entity active at ``as_of`` with the service's point-in-time features, by id.

    The population is the entities with a row at the service's newest snapshot at or before
    ``as_of`` (the feature pipeline writes a snapshot row for every active customer); their
    features are the newest of each view at or before that snapshot and within the view's TTL,
    as Feast's point-in-time join returns them (nulls where a view has none). Columns: the
    entity key, ``event_timestamp`` (the snapshot) and the features in declaration order.
    Scoring as of any time between two snapshots therefore scores the same rows.
    """
    if feature_service not in FEATURE_SERVICES:
        raise LookupError(
            f"unknown feature service {feature_service!r}; expected one of "
            f"{sorted(FEATURE_SERVICES)}"
        )
    as_of = _utc(as_of)
    key = service_entity_key(feature_service)
    views = FEATURE_SERVICES[feature_service]
    tables: dict[str, pl.LazyFrame] = {}
    firsts: list[datetime] = []
    snapshot: datetime | None = None
    for view, features in views.items():
        path = VIEWS[view].table_path(store.offline_dir)
        if not path.is_file():
            raise FileNotFoundError(
                f"the offline store has no table for view {view!r} ({path}); expected the "
                "feature tables that materialize writes (python -m flows.materialize)"
            )
        tables[view] = pl.scan_parquet(path).select(key, _TS, *features)
        bounds = (
            tables[view]
            .select(
                pl.col(_TS).min().alias("first"),
                pl.col(_TS).filter(pl.col(_TS) <= as_of).max().alias("last"),
            )
            .collect()
        )
        first, last = bounds["first"][0], bounds["last"][0]
        if first is None:
            raise ValueError(f"the offline table of view {view!r} ({path}) has no rows")
        firsts.append(first)
        if last is not None:
            snapshot = last if snapshot is None else max(snapshot, last)
    if snapshot is None:
        raise ValueError(
            f"as_of={as_of.isoformat()} precedes every feature row of {feature_service!r} in the "
            f"offline store (the earliest is {min(firsts).isoformat()}); expected a time at or "
            "after it"
        )
    ttl = min(VIEWS[view].ttl for view in views)
    if as_of - snapshot > ttl:
        raise ValueError(
            f"as_of={as_of.isoformat()} is {as_of - snapshot} after the newest {feature_service!r} "
            f"snapshot ({snapshot.isoformat()}), beyond the features' TTL of {ttl}; expected an "
            "as_of within the TTL of materialized features (run python -m flows.materialize)"
        )
    at = pl.lit(snapshot).cast(pl.Datetime("us", "UTC"))
    keys = pl.concat(
        [table.filter(pl.col(_TS) == at).select(key) for table in tables.values()]
    ).unique()
    out = keys
    for view, table in tables.items():
        ttl_view: timedelta = VIEWS[view].ttl
        latest = (
            table.filter((pl.col(_TS) <= at) & (pl.col(_TS) >= at - ttl_view))
            .filter(pl.col(_TS) == pl.col(_TS).max().over(key))
            .unique(key, keep="any")
            .drop(_TS)
        )
        out = out.join(latest, on=key, how="left")
    features = [f for feats in views.values() for f in feats]
    return out.with_columns(at.alias(_TS)).select(key, _TS, *features).sort(key).collect()


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchChampion:
    """The registered version a batch run scores with, and its loaded CatBoost model."""

    model: str
    version: str
    semver: str
    feature_service: str
    features: list[str]
    booster: Any  # catboost.CatBoostClassifier

    @cached_property
    def payload(self) -> tuple[bytes, str]:
        """The pickled model and its digest: what the tasks pool ships to its workers, whose
        cached predictors are keyed by the digest."""
        model = pickle.dumps(self.booster)
        return model, hashlib.blake2b(model, digest_size=16).hexdigest()


def load_batch_champion(registry: RegistrySettings, model: str = "churn") -> BatchChampion:
    """The ``champion`` of ``model``, loaded the way the scoring service loads it."""
    from mlinfra_serving.champions import Champions
    from mlinfra_serving.models import ChurnScorer

    champions = Champions(registry, (model,), reload_interval_s=3600.0)
    champions.refresh()
    loaded = champions.get(model)
    if loaded is None:
        reason = champions.errors.get(model, "not loaded")
        raise LookupError(
            f"no champion to batch-score with: {reason} (registry {registry.uri}); train and "
            f"promote one first (python -m flows.retrain model={model})"
        )
    scorer = loaded.scorer
    assert isinstance(scorer, ChurnScorer)
    return BatchChampion(
        model=model,
        version=loaded.version,
        semver=loaded.semver,
        feature_service=loaded.feature_service,
        features=list(scorer.features),
        booster=scorer.booster,
    )


# --- engines -----------------------------------------------------------------------------------


def choose_engine(settings: BatchScoreSettings, rows: int) -> tuple[str, str]:
    """The engine that scores ``rows`` pending rows, and why."""
    if settings.engine != "auto":
        return settings.engine, f"engine={settings.engine} configured"
    if settings.ray.address:
        return "ray", f"a Ray cluster address is configured ({settings.ray.address})"
    if settings.crossover_rows is None:
        return "in_process", f"{rows:,} rows, no crossover measured (crossover_rows: null)"
    if rows < settings.crossover_rows:
        return "in_process", f"{rows:,} rows < crossover {settings.crossover_rows:,}"
    return "ray", f"{rows:,} rows >= crossover {settings.crossover_rows:,}"


def score_in_process(
    predictor: ChurnBatchPredictor, tables: Sequence[pa.Table]
) -> Iterator[pa.Table]:
    """Scores of each table, in order, in this process."""
    for table in tables:
        yield predictor(table)


def _ray_actors(settings: RayScoringSettings) -> int:
    if settings.actors is not None:
        return settings.actors
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    return max(1, cpus // settings.threads_per_actor)


@dataclass(frozen=True)
class RayWarmup:
    """What :func:`warm_ray_scoring` did."""

    #: concurrent tasks the pool runs, and distinct worker processes now holding the predictor
    tasks: int
    processes: int
    seconds: float


#: (Ray job, model digest) pairs whose tasks-pool workers this process has warmed.
_WARMED: set[tuple[str, str]] = set()


def warm_ray_scoring(
    champion: BatchChampion,
    settings: RayScoringSettings,
    *,
    key: str = "customer_id",
    timeout_s: float = 60.0,
) -> RayWarmup:
    """Start the ``tasks`` pool's worker processes and build ``champion``'s predictor in each.

    One Ray task per concurrent task of the pool, each reserving ``actor_num_cpus`` as the
    scoring tasks do: it imports Ray Data and builds the cached predictor, then waits at a
    rendezvous until every warm-up task holds a process of its own (at most ``timeout_s``; a
    cluster short of CPUs warms fewer). A scoring run in this Ray job then pays no process
    start or import. Uses the Ray this process is connected to.
    """
    import ray
    import ray.data

    started = time.perf_counter()
    # no more than the cluster runs at once: the rest would wait behind the rendezvous
    fits = int(ray.cluster_resources().get("CPU", 1) // settings.actor_num_cpus)
    tasks = max(1, min(_ray_actors(settings), fits))
    model, digest = champion.payload
    remote: Any = ray.remote  # (Ray's stubs type no keyword arguments of a remote call)
    rendezvous = remote(num_cpus=0)(Rendezvous).remote(tasks)
    warm = remote(warm_worker).options(num_cpus=settings.actor_num_cpus)
    model_ref = ray.put(model)
    try:
        pending = [
            warm.remote(
                model_ref,
                digest,
                champion.features,
                key=key,
                threads=settings.threads_per_actor,
                rendezvous=rendezvous,
                timeout_s=timeout_s,
            )
            for _ in range(tasks)
        ]
        # Meanwhile this process runs its first Ray Data dataset (a row through the scoring
        # function): the executor's imports here and Ray Data's stats actor, once per job.
        ray.data.from_blocks([null_row(champion.features, key)]).map_batches(
            score_with_cached_predictor,
            fn_args=(model, digest, champion.features),
            fn_kwargs={"key": key, "threads": settings.threads_per_actor},
            batch_size=None,
            batch_format="pyarrow",
            num_cpus=settings.actor_num_cpus,
        ).materialize()
        pids = ray.get(pending)
    finally:
        ray.kill(rendezvous)
    _WARMED.add((ray.get_runtime_context().get_job_id(), digest))
    return RayWarmup(tasks=tasks, processes=len(set(pids)), seconds=time.perf_counter() - started)


def score_with_ray(
    champion: BatchChampion,
    tables: Sequence[pa.Table],
    settings: RayScoringSettings,
    *,
    key: str = "customer_id",
) -> Iterator[pa.Table]:
    """Scores of ``tables`` from one Ray Data dataset, streamed back in order.

    The tables are cut into blocks of ``block_rows``; ``actors`` :class:`ChurnBatchPredictor`
    actors (``pool="actors"``), or as many concurrent tasks on Ray's reusable workers, each
    caching its predictor (``pool="tasks"``), score whole blocks as Arrow (``batch_size=None``,
    ``zero_copy_batch``). Yields one table of scores per input table. Uses the Ray this process
    is connected to (Ray Data starts a local one if there is none).
    """
    import ray
    import ray.data

    # The actors unpickle the predictor by reference to mlinfra_serving._predictor, whose
    # import (with the package's lazy __init__) is NumPy and Arrow: not FastAPI, Feast, MLflow.
    if any(table.num_rows == 0 for table in tables):
        raise ValueError("every table to score must have rows")
    if not tables:
        return
    actors = _ray_actors(settings)
    rows = sum(table.num_rows for table in tables)
    block_rows = min(settings.block_rows, -(-rows // actors))
    columns = [key, *champion.features]
    blocks = [
        table.select(columns).slice(start, block_rows)
        for table in tables
        for start in range(0, table.num_rows, block_rows)
    ]
    # from_blocks puts the blocks from here; from_arrow would run a metadata task per block
    dataset = ray.data.from_blocks(blocks)
    common: dict[str, Any] = {
        "batch_size": None,
        "batch_format": "pyarrow",
        "zero_copy_batch": True,
        "udf_modifying_row_count": False,
    }
    if settings.pool == "actors":
        scored = dataset.map_batches(
            ChurnBatchPredictor,
            fn_constructor_args=(champion.booster, champion.features),
            fn_constructor_kwargs={"key": key, "threads": settings.threads_per_actor},
            compute=ray.data.ActorPoolStrategy(size=actors),
            num_cpus=settings.actor_num_cpus,
            **common,
        )
    else:
        # The model travels as bytes with its digest: a worker that has scored with it before
        # (in this run or an earlier one) reuses the predictor it built then.
        model, digest = champion.payload
        # (from_blocks above has started a local Ray if this process had none)
        if (ray.get_runtime_context().get_job_id(), digest) not in _WARMED:
            warm_ray_scoring(champion, settings, key=key)
        scored = dataset.map_batches(
            score_with_cached_predictor,
            fn_args=(model, digest, champion.features),
            fn_kwargs={"key": key, "threads": settings.threads_per_actor},
            compute=ray.data.TaskPoolStrategy(size=actors),
            num_cpus=settings.actor_num_cpus,
            **common,
        )
    scored.context.execution_options.preserve_order = True
    scored.context.enable_progress_bars = False
    sizes = deque(table.num_rows for table in tables)
    buffer: list[pa.Table] = []
    have = 0
    for batch in scored.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2):
        assert isinstance(batch, pa.Table)
        buffer.append(batch)
        have += batch.num_rows
        while sizes and have >= sizes[0]:
            merged = pa.concat_tables(buffer)
            size = sizes.popleft()
            yield merged.slice(0, size)
            buffer, have = [merged.slice(size)], merged.num_rows - size


# --- runs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchScoreResult:
    run_dir: Path
    model: str
    version: str
    semver: str
    feature_service: str
    #: the snapshot the population's features are as of
    as_of: datetime
    rows: int
    partitions: int
    #: partitions this call scored, and those a previous call had completed
    scored: list[int]
    skipped: list[int]
    engine: str
    engine_reason: str
    seconds: float


def run_dir(settings: BatchScoreSettings, champion: BatchChampion, as_of: datetime) -> Path:
    """Where a run of ``champion`` over the population as of ``as_of`` writes its partitions."""
    stamp = _utc(as_of).strftime("%Y%m%dT%H%M%SZ")
    return settings.output_dir / champion.model / f"as_of={stamp}" / f"version={champion.version}"


def partition_path(directory: Path, index: int) -> Path:
    return directory / f"part-{index:05d}.parquet"


def _write_atomic(path: Path, table: pa.Table) -> None:
    """Write ``table`` as Parquet under a temporary name beside ``path``, then rename it."""
    import pyarrow.parquet as pq

    write_atomic(path, lambda tmp: pq.write_table(table, tmp))


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, default=str))


def _complete(path: Path, rows: int) -> bool:
    """Whether ``path`` is a finished partition of ``rows`` rows (renamed files only)."""
    import pyarrow.parquet as pq

    if not path.is_file():
        return False
    try:
        return bool(pq.read_metadata(path).num_rows == rows)
    except (OSError, pa.ArrowException):
        return False


def _digest(ids: pa.ChunkedArray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for chunk in ids.cast(pa.int64()).chunks:
        digest.update(np.ascontiguousarray(chunk.to_numpy(zero_copy_only=False)).tobytes())
    return digest.hexdigest()


def _start_run(directory: Path, run: dict[str, Any]) -> None:
    """Record the run in ``_run.json``, or check that an earlier start recorded the same one."""
    path = directory / RUN_FILE
    if path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        differ = [
            k
            for k in ("rows", "partition_rows", "population_digest", "semver")
            if earlier.get(k) != run[k]
        ]
        if differ:
            changes = ", ".join(f"{k}: {earlier.get(k)!r} then, {run[k]!r} now" for k in differ)
            raise ValueError(
                f"{directory} holds a run over another population or partitioning ({changes}); "
                "expected the same one to resume it. Remove the directory to score afresh, or "
                "keep partition_rows as it was"
            )
        return
    _write_json_atomic(path, run)


def score_population(
    frame: pl.DataFrame,
    champion: BatchChampion,
    settings: BatchScoreSettings,
    *,
    on_partition: Callable[[int, Path], None] | None = None,
    connect: Callable[[], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> BatchScoreResult:
    """Score a :func:`population` frame with ``champion`` into resumable Parquet partitions.

    Partitions already written (by an earlier, interrupted call) are skipped; temporary files
    it left are removed. ``on_partition(index, path)`` is called after each partition is written;
    ``connect()`` before the Ray engine runs (where the entry point starts or joins Ray).
    """
    started = time.perf_counter()
    key = service_entity_key(champion.feature_service)
    missing = [c for c in (key, _TS, *champion.features) if c not in frame.columns]
    if missing:
        raise ValueError(
            f"the population lacks column(s) {missing}; expected {key}, {_TS} and the "
            f"{champion.feature_service} features {champion.features} (see population())"
        )
    if frame.is_empty():
        raise ValueError("the population is empty; expected at least one entity to score")
    stamps = frame[_TS].unique()
    if len(stamps) != 1:
        raise ValueError(f"the population spans {len(stamps)} snapshots; expected one as_of")
    as_of: datetime = stamps[0]
    table = frame.sort(key).select(key, *champion.features).to_arrow()
    rows, size = table.num_rows, settings.partition_rows
    count = -(-rows // size)
    directory = run_dir(settings, champion, as_of)
    directory.mkdir(parents=True, exist_ok=True)
    _start_run(
        directory,
        {
            "model": champion.model,
            "version": champion.version,
            "semver": champion.semver,
            "feature_service": champion.feature_service,
            "features": champion.features,
            "as_of": as_of.isoformat(),
            "rows": rows,
            "partition_rows": size,
            "partitions": count,
            "population_digest": _digest(table.column(key)),
            "started_at": datetime.now(UTC).isoformat(),
        },
    )
    for stale in directory.glob(".*.tmp"):  # what a crashed writer left; never a partition
        stale.unlink(missing_ok=True)
    parts = [table.slice(i * size, size) for i in range(count)]
    done = [i for i in range(count) if _complete(partition_path(directory, i), parts[i].num_rows)]
    pending = [i for i in range(count) if i not in set(done)]
    pending_rows = sum(parts[i].num_rows for i in pending)
    engine, reason = choose_engine(settings, pending_rows)
    plan = (
        f"scoring {pending_rows:,} rows {ENGINE_WORDS[engine]} ({reason})"
        if pending
        else "nothing left to score"
    )
    log(
        f"{champion.model} version {champion.version} ({champion.semver}) as of "
        f"{as_of.isoformat()}: {rows:,} rows in {count} partition(s), {len(done)} already "
        f"written; {plan}"
    )
    if pending:
        tables = [parts[i] for i in pending]
        if engine == "ray":
            if connect is not None:
                connect()
            scores = score_with_ray(champion, tables, settings.ray, key=key)
        else:
            threads = settings.threads if settings.threads is not None else -1
            predictor = ChurnBatchPredictor(
                champion.booster, champion.features, key=key, threads=threads
            )
            scores = score_in_process(predictor, tables)
        for index, part, scored in zip(pending, tables, scores, strict=True):
            if not scored.column(key).equals(part.column(key)):
                raise RuntimeError(
                    f"partition {index}: the scored rows are not the partition's rows"
                )
            path = partition_path(directory, index)
            _write_atomic(path, _output(scored, champion, as_of, key))
            if on_partition is not None:
                on_partition(index, path)
    _write_json_atomic(
        directory / SUCCESS_FILE,
        {
            "rows": rows,
            "partitions": {
                partition_path(directory, i).name: parts[i].num_rows for i in range(count)
            },
            "finished_at": datetime.now(UTC).isoformat(),
        },
    )
    seconds = time.perf_counter() - started
    log(f"{len(pending)} partition(s) scored and written to {directory} in {seconds:.1f} s")
    return BatchScoreResult(
        run_dir=directory,
        model=champion.model,
        version=champion.version,
        semver=champion.semver,
        feature_service=champion.feature_service,
        as_of=as_of,
        rows=rows,
        partitions=count,
        scored=pending,
        skipped=done,
        engine=engine if pending else "none",
        engine_reason=reason,
        seconds=seconds,
    )


def _output(scored: pa.Table, champion: BatchChampion, as_of: datetime, key: str) -> pa.Table:
    n = scored.num_rows
    now = datetime.now(UTC)
    return pa.table(
        {
            key: scored.column(key),
            SCORE: scored.column(SCORE),
            "model": pa.repeat(champion.model, n),
            "version": pa.repeat(champion.version, n),
            "semver": pa.repeat(champion.semver, n),
            "feature_service": pa.repeat(champion.feature_service, n),
            "as_of": pa.repeat(pa.scalar(as_of, pa.timestamp("us", "UTC")), n),
            "scored_at": pa.repeat(pa.scalar(now, pa.timestamp("us", "UTC")), n),
        }
    )

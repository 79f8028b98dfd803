"""The batch predictor: CatBoost scores of Arrow batches, for in-process and Ray Data scoring.

Re-exported by :mod:`mlinfra_serving.batch`. It lives apart, importing NumPy and Arrow only
(CatBoost when it scores), because Ray workers import it to unpickle the predictor: importing
:mod:`mlinfra_serving.batch` there would bring Feast and MLflow with it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

__all__ = [
    "SCORE",
    "ChurnBatchPredictor",
    "Rendezvous",
    "null_row",
    "score_with_cached_predictor",
    "warm_worker",
]

SCORE = "score"


class ChurnBatchPredictor:
    """Scores Arrow batches with a CatBoost churn model; a callable class for ``map_batches``.

    Categoricals become bytes (null -> ``"unknown"``) and numbers float32 (null -> NaN), as
    :meth:`mlinfra_models.ChurnModel.matrix` prepares them, but straight from Arrow into
    CatBoost's ``FeaturesData`` (CatBoost scores float32 and matches columns by name), with no
    pandas frame in between. Returns the key column and ``score``.
    """

    def __init__(
        self, booster: Any, features: Sequence[str], *, key: str = "customer_id", threads: int = -1
    ) -> None:
        self.booster = booster
        self.features = list(features)
        self.key = key
        self.threads = threads
        names = list(booster.feature_names_)
        if names != self.features:
            raise ValueError(
                f"the model's features {names} differ from the contract's {self.features}"
            )
        categorical = set(booster.get_cat_feature_indices())
        self.categorical = [f for i, f in enumerate(names) if i in categorical]
        self.numeric = [f for i, f in enumerate(names) if i not in categorical]

    def matrix(self, batch: pa.Table) -> Any:
        """CatBoost's input for ``batch``: float32 and bytes matrices, columns named."""
        import pyarrow.compute as pc
        from catboost import FeaturesData

        missing = [f for f in self.features if f not in batch.column_names]
        if missing:
            raise ValueError(f"batch lacks feature column(s) {missing}; expected {self.features}")
        n = batch.num_rows
        numbers = np.empty((n, len(self.numeric)), dtype=np.float32)
        for j, name in enumerate(self.numeric):
            column = batch.column(name).cast(pa.float32(), safe=False)
            if column.null_count:
                column = pc.fill_null(column, np.nan)
            numbers[:, j] = column.to_numpy()
        categories = np.empty((n, len(self.categorical)), dtype=object)
        for j, name in enumerate(self.categorical):
            encoded = pc.fill_null(batch.column(name).cast(pa.string()), "unknown")
            encoded = encoded.combine_chunks().dictionary_encode()
            labels = np.array([s.encode() for s in encoded.dictionary.to_pylist()], dtype=object)
            categories[:, j] = labels[encoded.indices.to_numpy()]
        return FeaturesData(
            num_feature_data=numbers,
            cat_feature_data=categories if self.categorical else None,
            num_feature_names=self.numeric,
            cat_feature_names=self.categorical or None,
        )

    def __call__(self, batch: pa.Table) -> pa.Table:
        if batch.num_rows == 0:
            scores = np.empty(0)
        else:
            probabilities = self.booster.predict_proba(
                self.matrix(batch), thread_count=self.threads
            )
            scores = np.ascontiguousarray(probabilities[:, 1])
        return pa.table({self.key: batch.column(self.key), SCORE: scores})


#: Predictors built in this process, by model digest, newest last: a Ray worker process runs many
#: tasks (of one run and of the runs after it) and builds each model's predictor once.
_PREDICTORS: dict[str, ChurnBatchPredictor] = {}
#: Models a process keeps; an older one is dropped when a newer one arrives.
_KEPT_MODELS = 2


def score_with_cached_predictor(
    batch: pa.Table, model: bytes, digest: str, features: list[str], *, key: str, threads: int
) -> pa.Table:
    """``ChurnBatchPredictor(pickle.loads(model), ...)(batch)``, the predictor built once per
    process and model (``digest`` names ``model``): a function for ``map_batches`` tasks."""
    predictor = _PREDICTORS.get(digest)
    if predictor is None:
        import pickle

        predictor = ChurnBatchPredictor(pickle.loads(model), features, key=key, threads=threads)
        while len(_PREDICTORS) >= _KEPT_MODELS:
            del _PREDICTORS[next(iter(_PREDICTORS))]
        _PREDICTORS[digest] = predictor
    return predictor(batch)


def null_row(features: Sequence[str], key: str) -> pa.Table:
    """One row with id 0 and every feature null: what a warm-up scores."""
    return pa.table({key: pa.array([0], pa.int64()), **{f: pa.nulls(1) for f in features}})


def warm_worker(
    model: bytes,
    digest: str,
    features: list[str],
    *,
    key: str,
    threads: int,
    rendezvous: Any = None,
    timeout_s: float = 60.0,
) -> int:
    """Make this Ray worker process ready for the tasks pool; returns its process id.

    Imports Ray Data (what a ``map_batches`` task needs first) and builds the model's cached
    predictor by scoring one all-null row. Then, with a ``rendezvous`` actor, waits until every
    warm-up task holds a process of its own, so that no two of them share one and leave
    another process cold (at most ``timeout_s``).
    """
    import os

    import ray
    import ray.data

    score_with_cached_predictor(
        null_row(features, key), model, digest, features, key=key, threads=threads
    )
    pid = os.getpid()
    if rendezvous is not None:
        ray.get(rendezvous.arrive.remote(pid, timeout_s))
    return pid


class Rendezvous:
    """A Ray actor (async, no CPU) that holds each warm-up task until ``parties`` distinct
    worker processes have arrived, or until the caller's timeout; returns how many did."""

    def __init__(self, parties: int) -> None:
        import asyncio

        self.parties = parties
        self.pids: set[int] = set()
        self.full = asyncio.Event()

    async def arrive(self, pid: int, timeout_s: float) -> int:
        import asyncio

        self.pids.add(pid)
        if len(self.pids) >= self.parties:
            self.full.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.full.wait(), timeout_s)
        return len(self.pids)

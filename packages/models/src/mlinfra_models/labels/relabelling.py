"""Relabelling batches: a reproducible stratified sample of events for annotators, exported as
CSV, and the returned labels read back with validation.

Sampling
--------
:func:`sample_for_relabelling` takes the classifier's predictions (``event_id``,
``predicted``, ``confidence``) and draws ``n`` events stratified by predicted category and
confidence bin (default bins ``[0, 0.5)``, ``[0.5, 0.7)``, ``[0.7, 0.9)``, ``[0.9, 1]``).
``allocation="equal"`` (the default) gives every stratum the same share, capped at its size,
and passes what a small stratum cannot use on to the others, so that rare categories and
uncertain predictions are well covered; ``"proportional"`` follows stratum sizes (largest
remainders). Each row carries its inclusion probability, so error rates estimated on the
sample can be weighted back to the population. The sample depends only on the predictions'
content (not their row order), ``n`` and ``seed``.

Round trip
----------
:func:`write_relabelling_csv` writes ``event_id``, optional context columns from the events
table, and empty ``annotator_id`` and ``label`` columns for annotators to fill (rows in the
sample's random order; predictions are left out so that they do not anchor annotators).
:func:`read_relabelled_csv` reads a returned file into an annotation table.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl

from mlinfra_models._atomic import write_atomic
from mlinfra_models.labels.annotations import AnnotationError
from mlinfra_models.labels.taxonomy import Taxonomy

__all__ = [
    "DEFAULT_CONFIDENCE_BINS",
    "RelabelledBatch",
    "read_relabelled_csv",
    "sample_for_relabelling",
    "write_relabelling_csv",
]

#: Inner edges of the confidence bins: [0, 0.5), [0.5, 0.7), [0.7, 0.9), [0.9, 1].
DEFAULT_CONFIDENCE_BINS = (0.5, 0.7, 0.9)
Allocation = Literal["equal", "proportional"]


def _bin_labels(edges: Sequence[float]) -> list[str]:
    bounds = [0.0, *edges, 1.0]
    return [
        f"[{lo:g}, {hi:g}{']' if i == len(bounds) - 2 else ')'}"
        for i, (lo, hi) in enumerate(itertools.pairwise(bounds))
    ]


def _allocate(
    sizes: np.ndarray, n: int, allocation: Allocation, rng: np.random.Generator
) -> np.ndarray:
    """How many to draw from each stratum: ``n`` in all (or everything), each <= its size."""
    total = int(sizes.sum())
    if n >= total:
        return sizes.copy()
    if allocation == "proportional":
        quota = n * sizes / total
        alloc = np.floor(quota).astype(np.int64)
        short = n - int(alloc.sum())
        tie = rng.random(sizes.size)
        alloc[np.lexsort((tie, -(quota - alloc)))[:short]] += 1
        return alloc
    alloc = np.zeros_like(sizes)
    remaining = n
    while remaining > 0:
        open_ = np.flatnonzero(alloc < sizes)
        share = remaining // open_.size
        if share == 0:
            alloc[rng.permutation(open_)[:remaining]] += 1
            break
        add = np.minimum(share, sizes[open_] - alloc[open_])
        alloc[open_] += add
        remaining -= int(add.sum())
    return alloc


def sample_for_relabelling(
    predictions: pl.DataFrame,
    n: int = 500,
    *,
    seed: int = 0,
    confidence_bins: Sequence[float] = DEFAULT_CONFIDENCE_BINS,
    allocation: Allocation = "equal",
    taxonomy: Taxonomy | None = None,
    id_column: str = "event_id",
    predicted: str = "predicted",
    confidence: str = "confidence",
) -> pl.DataFrame:
    """A stratified sample of ``n`` events to relabel (see the module docstring).

    Returns ``event_id``, ``predicted``, ``confidence``, ``confidence_bin``, ``stratum_size``
    and ``inclusion_probability``, in a seeded random order. Raises :class:`AnnotationError`
    for missing columns, an empty table, nulls, duplicate ids, confidences outside [0, 1] and
    (with ``taxonomy``) predicted categories that are not in it.
    """
    if n < 1:
        raise AnnotationError(f"n must be at least 1, got {n}")
    if allocation not in ("equal", "proportional"):
        raise AnnotationError(f"allocation must be 'equal' or 'proportional', got {allocation!r}")
    edges = [float(e) for e in confidence_bins]
    if any(not 0 < e < 1 for e in edges) or edges != sorted(set(edges)):
        raise AnnotationError(
            f"confidence_bins must be increasing edges strictly between 0 and 1, got {edges}"
        )
    columns = [id_column, predicted, confidence]
    missing = [c for c in columns if c not in predictions.columns]
    if missing:
        raise AnnotationError(
            f"predictions: missing columns {missing}; expected {', '.join(columns)}, got "
            f"{predictions.columns}"
        )
    if predictions.height == 0:
        raise AnnotationError("predictions: the table is empty")
    frame = predictions.select(
        pl.col(id_column),
        pl.col(predicted).cast(pl.String),
        pl.col(confidence).cast(pl.Float64),
    ).sort(id_column)
    nulls = {c: k for c, k in zip(columns, frame.null_count().row(0), strict=True) if k}
    if nulls:
        raise AnnotationError(f"predictions: null values in {nulls}")
    dup = frame[id_column].is_duplicated()
    if dup.any():
        raise AnnotationError(
            f"predictions: {int(dup.sum())} rows share an {id_column}, e.g. "
            f"{frame.filter(dup)[id_column][0]!r}; expected one prediction per event"
        )
    conf = frame[confidence].to_numpy()
    if ((conf < 0) | (conf > 1) | np.isnan(conf)).any():
        raise AnnotationError(f"predictions: {confidence} must be within [0, 1]")
    if taxonomy is not None:
        unknown = taxonomy.unknown(frame[predicted].unique().to_list())
        if unknown:
            raise AnnotationError(
                f"predictions: predicted categories {unknown[:10]} are not in taxonomy "
                f"{taxonomy.version}"
            )

    labels = _bin_labels(edges)
    bin_code = np.searchsorted(np.array(edges), conf, side="right")
    stratum_key = frame[predicted] + "\x1f" + pl.Series(labels, dtype=pl.String).gather(bin_code)
    stratum = stratum_key.rank("dense").cast(pl.Int64).to_numpy() - 1
    sizes = np.bincount(stratum)
    rng = np.random.default_rng(seed)
    key = rng.random(frame.height)
    alloc = _allocate(sizes, n, allocation, rng)
    order = np.lexsort((key, stratum))
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rank = np.empty(frame.height, dtype=np.int64)
    rank[order] = np.arange(frame.height) - start[stratum[order]]
    chosen = rank < alloc[stratum]
    return (
        frame.with_columns(
            confidence_bin=pl.Series(labels, dtype=pl.String).gather(bin_code),
            stratum_size=sizes[stratum],
            inclusion_probability=alloc[stratum] / sizes[stratum],
            _key=key,
        )
        .filter(pl.Series(chosen))
        .sort("_key")
        .drop("_key")
        .rename({id_column: "event_id", predicted: "predicted", confidence: "confidence"})
    )


def write_relabelling_csv(
    sample: pl.DataFrame,
    path: str | os.PathLike[str],
    *,
    events: pl.DataFrame | None = None,
    context: Sequence[str] = ("name", "module", "text"),
) -> Path:
    """Write the annotators' CSV for ``sample`` (temporary file, then rename).

    Columns: ``event_id``, the ``context`` columns of ``events`` (joined on ``event_id``; none
    without ``events``), then empty ``annotator_id`` and ``label``.
    """
    if "event_id" not in sample.columns or sample.height == 0:
        raise AnnotationError("sample: expected a non-empty table with an event_id column")
    out = sample.select("event_id")
    if events is not None:
        missing = [c for c in ["event_id", *context] if c not in events.columns]
        if missing:
            raise AnnotationError(f"events: missing columns {missing}")
        out = out.join(events.select("event_id", *context), on="event_id", how="left")
        absent = out.filter(pl.col(context[0]).is_null()).height if context else 0
        if absent:
            raise AnnotationError(f"events: {absent} sampled event ids are not in the events table")
    out = out.with_columns(
        annotator_id=pl.lit("", dtype=pl.String), label=pl.lit("", dtype=pl.String)
    )
    return write_atomic(Path(path), out.write_csv)


@dataclass(frozen=True)
class RelabelledBatch:
    """Labels read back from annotators: an annotation table and what was left blank."""

    annotations: pl.DataFrame  # event_id, annotator_id, label
    blank_rows: int  # rows without a label (not yet done), dropped
    unlabelled_events: int  # expected events that no row labels


def read_relabelled_csv(
    path: str | os.PathLike[str],
    *,
    taxonomy: Taxonomy | None = None,
    expected_ids: pl.Series | Sequence[int] | None = None,
) -> RelabelledBatch:
    """Read an annotators' CSV back (see the module docstring).

    Raises :class:`AnnotationError` naming the file for: an unreadable file, missing columns
    (``event_id``, ``annotator_id``, ``label``), event ids that are not integers or not in
    ``expected_ids``, labels not in ``taxonomy``, a label without an annotator, and duplicate
    (event_id, annotator_id) rows. Rows with an empty label are skipped and counted.
    """
    path = Path(path)
    try:
        raw = pl.read_csv(path, infer_schema=False)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise AnnotationError(f"{path}: cannot read the CSV: {exc}") from None
    needed = ["event_id", "annotator_id", "label"]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise AnnotationError(f"{path}: missing columns {missing}; expected {', '.join(needed)}")
    frame = raw.select(pl.col(c).str.strip_chars().replace("", None).alias(c) for c in needed)
    blank = frame.filter(pl.col("label").is_null())
    frame = frame.filter(pl.col("label").is_not_null())
    ids = frame["event_id"].cast(pl.Int64, strict=False)
    bad_ids = frame.filter(ids.is_null())["event_id"]
    if bad_ids.len():
        raise AnnotationError(
            f"{path}: event_id must be an integer, got {bad_ids.head(5).to_list()}"
        )
    frame = frame.with_columns(event_id=ids)
    no_annotator = frame.filter(pl.col("annotator_id").is_null()).height
    if no_annotator:
        raise AnnotationError(f"{path}: {no_annotator} labelled rows have no annotator_id")
    expected = None
    if expected_ids is not None:
        expected = pl.Series("event_id", list(expected_ids), dtype=pl.Int64).unique()
        unknown = frame.filter(~pl.col("event_id").is_in(expected.implode()))["event_id"]
        if unknown.len():
            raise AnnotationError(
                f"{path}: {unknown.len()} rows have event ids that were not in the batch, e.g. "
                f"{unknown.unique().sort().head(5).to_list()}"
            )
    if taxonomy is not None:
        unknown_labels = taxonomy.unknown(frame["label"].unique().to_list())
        if unknown_labels:
            raise AnnotationError(
                f"{path}: labels {unknown_labels[:10]} are not categories of taxonomy "
                f"{taxonomy.version}"
            )
    dup = frame.select(pl.struct("event_id", "annotator_id").is_duplicated()).to_series()
    if dup.any():
        first = frame.filter(dup).row(0, named=True)
        raise AnnotationError(
            f"{path}: {int(dup.sum())} duplicate (event_id, annotator_id) rows, e.g. "
            f"event_id={first['event_id']}, annotator_id={first['annotator_id']!r}"
        )
    unlabelled = 0
    if expected is not None:
        unlabelled = expected.len() - frame["event_id"].n_unique()
    return RelabelledBatch(frame, blank.height, unlabelled)

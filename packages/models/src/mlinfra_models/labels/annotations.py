"""Annotation tables: validation and integer encoding.

An annotation table is long: one row per (item, annotator) with the label that annotator gave
the item. The default column names are ``item_id`` (or ``event_id``, as in the demo
warehouse's ``event_annotations``), ``annotator_id`` and ``label``.

:func:`encode_annotations` checks the table and turns it into :class:`Ratings`: integer codes
sorted by item then annotator, and the per-item count matrix every agreement statistic is
computed from. Items with fewer than two ratings cannot show agreement or disagreement; they
are dropped and counted.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

__all__ = ["AnnotationError", "Ratings", "encode_annotations", "item_column", "read_annotations"]

#: Item id columns recognised when none is named, in order of preference.
ITEM_COLUMNS = ("item_id", "event_id")


class AnnotationError(ValueError):
    """An annotation table cannot be used as given; the message names the problem."""


def read_annotations(path: str | os.PathLike[str]) -> pl.DataFrame:
    """Read an annotation table from ``.parquet``, ``.tsv`` or (otherwise) CSV.

    Raises :class:`AnnotationError` naming the file when it is missing or unreadable; the
    columns are checked when the table is used.
    """
    path = Path(path)
    if not path.is_file():
        raise AnnotationError(f"{path}: no such file")
    try:
        if path.suffix.lower() == ".parquet":
            return pl.read_parquet(path)
        separator = "\t" if path.suffix.lower() == ".tsv" else ","
        return pl.read_csv(path, separator=separator, infer_schema_length=10_000)
    except (OSError, pl.exceptions.PolarsError) as exc:
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise AnnotationError(f"{path}: cannot read it as a table: {first}") from None


def item_column(
    columns: Sequence[str], item: str | None = None, *, source: str = "annotations"
) -> str:
    """The item id column: ``item`` if given, else the first of ``item_id``, ``event_id``."""
    if item is not None:
        return item
    for name in ITEM_COLUMNS:
        if name in columns:
            return name
    raise AnnotationError(
        f"{source}: missing columns ['item_id']; expected item_id (or event_id), annotator_id "
        f"and label, got {list(columns)}"
    )


@dataclass(frozen=True)
class Ratings:
    """Annotations as integer codes: rating ``j`` is ``label[j]`` given by ``annotator[j]`` to
    item ``item[j]``. Rows are sorted by item, then annotator; only items with >= 2 ratings."""

    categories: tuple[str, ...]
    annotators: tuple[str, ...]
    item_ids: pl.Series
    item: np.ndarray
    annotator: np.ndarray
    label: np.ndarray
    n_annotations: int  # rows of the input table
    excluded_items: int  # items dropped for having a single rating
    _counts: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_ratings(self) -> int:
        return int(self.label.size)

    @property
    def counts(self) -> np.ndarray:
        """``(n_items, n_categories)`` matrix: how many annotators gave item i category k."""
        if "counts" not in self._counts:
            k = len(self.categories)
            flat = np.bincount(self.item * k + self.label, minlength=self.n_items * k)
            self._counts["counts"] = flat.reshape(self.n_items, k)
        return self._counts["counts"]

    def relabel(self, to: np.ndarray, categories: Sequence[str]) -> Ratings:
        """The same ratings with label codes mapped through ``to`` (old code -> new code)."""
        return Ratings(
            categories=tuple(categories),
            annotators=self.annotators,
            item_ids=self.item_ids,
            item=self.item,
            annotator=self.annotator,
            label=np.asarray(to)[self.label],
            n_annotations=self.n_annotations,
            excluded_items=self.excluded_items,
        )


def _dense_codes(series: pl.Series) -> tuple[np.ndarray, pl.Series]:
    """0-based codes of ``series`` in sorted order of its distinct values, and those values."""
    codes = series.rank("dense").cast(pl.Int64).to_numpy() - 1
    return codes, series.unique().sort()


def encode_annotations(
    annotations: pl.DataFrame,
    *,
    categories: Sequence[str] | None = None,
    item: str | None = None,
    annotator: str = "annotator_id",
    label: str = "label",
    source: str = "annotations",
) -> Ratings:
    """Validate an annotation table and encode it (see the module docstring).

    ``categories`` fixes the label set and its order (e.g. a taxonomy's fine categories); a
    label outside it is an error. Without it the categories are the labels present, sorted.

    Raises :class:`AnnotationError` for: an empty table, missing columns, null values,
    duplicate (item, annotator) rows, labels outside ``categories``, and a table where no item
    has two or more ratings.
    """
    if not isinstance(annotations, pl.DataFrame):
        raise AnnotationError(
            f"{source}: expected a polars DataFrame, got {type(annotations).__name__}"
        )
    item = item_column(annotations.columns, item, source=source)
    missing = [c for c in (item, annotator, label) if c not in annotations.columns]
    if missing:
        raise AnnotationError(
            f"{source}: missing columns {missing}; expected {item}, {annotator} and {label}, "
            f"got {annotations.columns}"
        )
    if annotations.height == 0:
        raise AnnotationError(
            f"{source}: the table is empty; expected one row per ({item}, {annotator}, {label})"
        )
    frame = annotations.select(
        pl.col(item), pl.col(annotator).cast(pl.String), pl.col(label).cast(pl.String)
    )
    nulls = {c: n for c, n in zip(frame.columns, frame.null_count().row(0), strict=True) if n}
    if nulls:
        raise AnnotationError(f"{source}: null values in {nulls}; every row needs all three")

    item_code, item_ids = _dense_codes(frame[item])
    ann_code, annotator_ids = _dense_codes(frame[annotator])
    labels = frame[label]
    if categories is None:
        label_code, category_values = _dense_codes(labels)
        cats = tuple(category_values.to_list())
    else:
        cats = tuple(str(c) for c in categories)
        if len(set(cats)) != len(cats):
            raise AnnotationError(f"{source}: the category list has duplicates")
        coded = labels.replace_strict(
            {c: i for i, c in enumerate(cats)}, default=None, return_dtype=pl.Int64
        )
        if coded.null_count():
            bad = labels.filter(coded.is_null()).value_counts(sort=True)
            shown = ", ".join(f"{v!r} ({n})" for v, n in bad.head(10).iter_rows())
            more = f" and {bad.height - 10} more" if bad.height > 10 else ""
            raise AnnotationError(
                f"{source}: {coded.null_count()} labels are not categories of the taxonomy: "
                f"{shown}{more}"
            )
        label_code = coded.to_numpy()

    order = np.lexsort((ann_code, item_code))
    item_code, ann_code, label_code = item_code[order], ann_code[order], label_code[order]
    dup = np.flatnonzero((item_code[1:] == item_code[:-1]) & (ann_code[1:] == ann_code[:-1]))
    if dup.size:
        first = dup[0]
        raise AnnotationError(
            f"{source}: {dup.size} duplicate ({item}, {annotator}) rows, e.g. {item}="
            f"{item_ids[int(item_code[first])]!r}, {annotator}="
            f"{annotator_ids[int(ann_code[first])]!r}; expected one label per annotator and item"
        )

    per_item = np.bincount(item_code, minlength=len(item_ids))
    kept = per_item >= 2
    excluded = int((~kept).sum())
    if not kept.any():
        raise AnnotationError(
            f"{source}: no item has two or more ratings ({len(item_ids)} items, each rated "
            "once); agreement needs items rated by at least two annotators"
        )
    if excluded:
        keep_rows = kept[item_code]
        new_index = np.cumsum(kept) - 1
        item_code = new_index[item_code[keep_rows]]
        ann_code, label_code = ann_code[keep_rows], label_code[keep_rows]
        item_ids = item_ids.filter(pl.Series(kept))
    return Ratings(
        categories=cats,
        annotators=tuple(str(a) for a in annotator_ids.to_list()),
        item_ids=item_ids,
        item=item_code,
        annotator=ann_code,
        label=label_code,
        n_annotations=annotations.height,
        excluded_items=excluded,
    )

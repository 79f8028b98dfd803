"""Inter-annotator agreement on a long annotation table, at the fine and the coarse level.

Everything is computed from two arrays, both vectorised (no Python loop over items or
ratings): the per-item count matrix ``C`` (``C[i, k]`` = annotators who gave item ``i``
category ``k``; ``r_i = sum_k C[i, k]`` ratings) and the within-item pairs of ratings.

- **Observed agreement**: the mean over items of the share of agreeing rating pairs,
  ``P_i = sum_k C_ik (C_ik - 1) / (r_i (r_i - 1))`` (Fleiss' ``P-bar``).
- **Fleiss' kappa** (Fleiss 1971): ``(P-bar - P_e) / (1 - P_e)``, ``P_e = sum_k p_k^2`` with
  ``p_k`` the share of all ratings in ``k``. Defined only when every item has the same number
  of ratings; otherwise it is ``None`` with a reason (use Krippendorff's alpha).
- **Krippendorff's alpha** (nominal; Krippendorff 2011, "Computing Krippendorff's
  alpha-reliability"): from the coincidence matrix ``o_ck = sum_i (C_ic C_ik - [c = k] C_ic) /
  (r_i - 1)``, ``alpha = 1 - (n - 1) (n - sum_c o_cc) / (n^2 - sum_c n_c^2)``. Handles missing
  ratings (items rated by any number >= 2 of annotators).
- **Cohen's kappa for every annotator pair** on the items both rated, its mean over pairs
  (Light's kappa), and, given a category order, **weighted** kappas. Nominal categories have no
  natural distance, so a weighted kappa needs one: ``order`` lists the categories and the
  disagreement weight of categories at positions ``i`` and ``j`` is ``|i - j|`` (linear) or
  ``(i - j)^2`` (quadratic), as in scikit-learn's ``cohen_kappa_score(..., labels=order,
  weights=...)``: ``kappa_w = 1 - sum(w * O) / sum(w * E)``. At the coarse level the order is
  that of the parents of ``order``'s categories, by first appearance.
- **Per category**: specific agreement (of rating pairs involving ``k``, the share where both
  are ``k``) and Krippendorff's alpha of "``k`` versus any other category".
- **Annotator-vs-annotator confusion**, pooled over pairs: ``M = C^T C - diag(sum_i C_i)``,
  every ordered pair of ratings of one item by two annotators. It is symmetric; its diagonal
  over its row sums is the per-category specific agreement.
- **Bootstrap intervals** over items (seeded percentile bootstrap) for observed agreement,
  Fleiss' kappa and alpha. All three are functions of per-item sums, so each resample is one
  weight vector (how often each item was drawn) and all statistics of all resamples are one
  matrix product ``W @ F`` over the per-item features ``F``, done in chunks of resamples. Fine
  and coarse levels share the resamples. Items with the same count row are interchangeable,
  so when there are few distinct rows the resamples draw multinomial counts of those patterns
  instead of items (the same distribution, much cheaper).

The coarse level maps each fine label to its parent in a taxonomy.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import polars as pl
from threadpoolctl import threadpool_limits

from mlinfra_models.labels.annotations import AnnotationError, Ratings, encode_annotations
from mlinfra_models.labels.taxonomy import Taxonomy

__all__ = [
    "Agreement",
    "LevelAgreement",
    "UndefinedMetricError",
    "cohen_kappa",
    "disagreement_weights",
    "fleiss_kappa",
    "krippendorff_alpha",
    "measure_agreement",
]

Weights = Literal["linear", "quadratic"]
#: Statistics that get bootstrap intervals.
BOOTSTRAPPED = ("observed_agreement", "fleiss_kappa", "krippendorff_alpha")
_EPS = 1e-12
_CHUNK_CELLS = 4_000_000  # resamples x rows per chunk of the bootstrap
#: Item patterns are resampled instead of items when patterns x this < items (cost ratio).
_PATTERN_COST = 12


class UndefinedMetricError(ValueError):
    """A statistic is undefined for this data; the message says why."""


def disagreement_weights(order_size: int, weights: Weights | None = None) -> np.ndarray:
    """``(K, K)`` disagreement weights: ``1 - I`` (unweighted), ``|i - j|`` or ``(i - j)^2``."""
    idx = np.arange(order_size)
    if weights is None:
        return 1.0 - np.eye(order_size)
    diff = np.abs(idx[:, None] - idx[None, :]).astype(np.float64)
    if weights == "linear":
        return diff
    if weights == "quadratic":
        return diff**2
    raise ValueError(f"weights must be None, 'linear' or 'quadratic', got {weights!r}")


def _check_counts(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[0] == 0:
        raise AnnotationError(
            f"expected an (items, categories) count matrix, got shape {counts.shape}"
        )
    if (counts < 0).any():
        raise AnnotationError("the count matrix has negative counts")
    return counts.astype(np.float64)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa of an ``(items, categories)`` count matrix with equal row sums.

    Raises :class:`UndefinedMetricError` when items have different numbers of ratings, fewer than
    two, or when all ratings fall in one category.
    """
    c = _check_counts(counts)
    r = c.sum(axis=1)
    if r.min() != r.max():
        raise UndefinedMetricError(
            f"items have different numbers of ratings ({int(r.min())} to {int(r.max())}); "
            "Fleiss' kappa needs the same number for every item (see krippendorff_alpha)"
        )
    m = r[0]
    if m < 2:
        raise UndefinedMetricError("every item needs at least two ratings")
    p_item = ((c * (c - 1)).sum(axis=1) / (m * (m - 1))).mean()
    p = c.sum(axis=0) / c.sum()
    p_e = float((p * p).sum())
    if 1 - p_e < _EPS:
        raise UndefinedMetricError("all ratings are one category, so chance agreement is 1")
    return float((p_item - p_e) / (1 - p_e))


def _alpha_from(agree: np.ndarray, n_k: np.ndarray) -> np.ndarray:
    """Nominal alpha from ``sum_c o_cc`` and the category totals (vectorised over rows)."""
    n = n_k.sum(axis=-1)
    denom = n * n - (n_k * n_k).sum(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom > _EPS, 1 - (n - 1) * (n - agree) / denom, np.nan)


def krippendorff_alpha(counts: np.ndarray) -> float:
    """Krippendorff's alpha (nominal) of an ``(items, categories)`` count matrix.

    Rows may have any number of ratings; rows with fewer than two are ignored (they are not
    pairable). Raises :class:`UndefinedMetricError` when no item has two ratings or all pairable
    ratings fall in one category.
    """
    c = _check_counts(counts)
    r = c.sum(axis=1)
    c = c[r >= 2]
    r = r[r >= 2]
    if c.shape[0] == 0:
        raise UndefinedMetricError("no item has two or more ratings")
    agree = ((c * (c - 1)).sum(axis=1) / (r - 1)).sum()
    value = float(_alpha_from(np.asarray(agree), c.sum(axis=0)))
    if np.isnan(value):
        raise UndefinedMetricError("all ratings are one category, so expected disagreement is 0")
    return value


def cohen_kappa(
    first: Sequence[Any] | np.ndarray | pl.Series,
    second: Sequence[Any] | np.ndarray | pl.Series,
    *,
    order: Sequence[Any] | None = None,
    weights: Weights | None = None,
) -> float:
    """Cohen's kappa of two annotators' labels of the same items (position by position).

    ``weights`` ("linear" or "quadratic") needs ``order``, the category order that defines the
    distance between labels; unweighted kappa ignores order. Equals scikit-learn's
    ``cohen_kappa_score(first, second, labels=order, weights=weights)``.
    """
    a = np.asarray(first, dtype=object)
    b = np.asarray(second, dtype=object)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise AnnotationError(
            f"expected two non-empty label sequences of one length, got {a.shape} and {b.shape}"
        )
    if weights is not None and order is None:
        raise AnnotationError(
            f"{weights} weights need an order of the categories (order=[...]); nominal labels "
            "have no distance of their own"
        )
    cats = list(order) if order is not None else sorted({*a.tolist(), *b.tolist()}, key=str)
    index = {c: i for i, c in enumerate(cats)}
    unknown = sorted({x for x in [*a.tolist(), *b.tolist()] if x not in index}, key=str)
    if unknown:
        raise AnnotationError(f"labels {unknown[:10]} are not in the given order")
    ia = np.array([index[x] for x in a.tolist()])
    ib = np.array([index[x] for x in b.tolist()])
    k = len(cats)
    observed = np.bincount(ia * k + ib, minlength=k * k).reshape(k, k).astype(np.float64)
    w = disagreement_weights(k, weights)
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / a.size
    denom = float((w * expected).sum())
    if denom < _EPS:
        raise UndefinedMetricError("both annotators used a single, identical category")
    return float(1 - (w * observed).sum() / denom)


@dataclass(frozen=True)
class LevelAgreement:
    """All agreement statistics at one level (``fine`` or ``coarse``)."""

    level: str
    categories: tuple[str, ...]
    n_items: int
    n_annotators: int
    n_ratings: int
    observed_agreement: float
    fleiss_kappa: float | None
    krippendorff_alpha: float | None
    mean_pairwise_cohen_kappa: float | None
    #: Bootstrap interval (low, high) of each statistic in :data:`BOOTSTRAPPED` that is defined.
    intervals: dict[str, tuple[float, float]]
    #: Why a statistic is ``None``.
    reasons: dict[str, str]
    #: One row per annotator pair that rated an item in common.
    pairwise: pl.DataFrame = field(repr=False)
    #: One row per category: n_ratings, prevalence, specific_agreement, alpha.
    per_category: pl.DataFrame = field(repr=False)
    #: Annotator-vs-annotator confusion pooled over pairs, (K, K), symmetric.
    confusion: np.ndarray = field(repr=False)

    def top_confusions(self, n: int = 10) -> pl.DataFrame:
        """The ``n`` most confused category pairs: ordered-pair count and share of all pairs."""
        m = self.confusion
        total = m.sum()
        a, b = np.triu_indices(len(self.categories), k=1)
        count = m[a, b] + m[b, a]
        frame = pl.DataFrame(
            {
                "category_a": [self.categories[i] for i in a],
                "category_b": [self.categories[j] for j in b],
                "pairs": count.astype(np.int64),
                "mass": count / total if total else np.zeros(count.size),
            }
        )
        return (
            frame.filter(pl.col("pairs") > 0)
            .sort(["pairs", "category_a", "category_b"], descending=[True, False, False])
            .head(n)
        )

    def as_dict(self, *, top_confusions: int = 10) -> dict[str, Any]:
        """Plain JSON-ready data; undefined statistics are ``None`` with a reason."""
        return {
            "level": self.level,
            "n_items": self.n_items,
            "n_annotators": self.n_annotators,
            "n_ratings": self.n_ratings,
            "observed_agreement": self.observed_agreement,
            "fleiss_kappa": self.fleiss_kappa,
            "krippendorff_alpha": self.krippendorff_alpha,
            "mean_pairwise_cohen_kappa": self.mean_pairwise_cohen_kappa,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "reasons": dict(self.reasons),
            "categories": list(self.categories),
            "per_category": _rows(self.per_category),
            "pairwise": _rows(self.pairwise),
            "top_confusions": _rows(self.top_confusions(top_confusions)),
            "confusion": self.confusion.astype(np.int64).tolist(),
        }


def _rows(frame: pl.DataFrame) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        for row in frame.to_dicts()
    ]


@dataclass(frozen=True)
class Agreement:
    """Agreement of one annotation table: fine level, and coarse when a taxonomy was given."""

    n_annotations: int
    excluded_items: int
    fine: LevelAgreement
    coarse: LevelAgreement | None
    n_boot: int
    confidence: float
    seed: int

    def as_dict(self) -> dict[str, Any]:
        """The fine level's statistics at the top, the coarse level under ``coarse``."""
        return {
            **self.fine.as_dict(),
            "n_annotations": self.n_annotations,
            "excluded_items": self.excluded_items,
            "bootstrap": {"n_boot": self.n_boot, "confidence": self.confidence, "seed": self.seed},
            "coarse": self.coarse.as_dict() if self.coarse is not None else None,
        }


@dataclass(frozen=True)
class _Pairs:
    """Within-item pairs of ratings (row indices into :class:`Ratings`), first < second."""

    first: np.ndarray
    second: np.ndarray
    pair: np.ndarray  # index into ``annotators``
    annotators: np.ndarray  # (P, 2) annotator codes


def _rating_pairs(ratings: Ratings) -> _Pairs:
    n = ratings.n_items
    per_item = np.bincount(ratings.item, minlength=n)
    start = np.concatenate([[0], np.cumsum(per_item)[:-1]])
    firsts, seconds = [], []
    for size in np.unique(per_item):
        ja, jb = np.triu_indices(int(size), k=1)
        s = start[per_item == size][:, None]
        firsts.append((s + ja).ravel())
        seconds.append((s + jb).ravel())
    first, second = np.concatenate(firsts), np.concatenate(seconds)
    m = len(ratings.annotators)
    # Rows are sorted by annotator within an item, so the first annotator code is the smaller.
    code = ratings.annotator[first].astype(np.int64) * m + ratings.annotator[second]
    if m * m <= 50_000_000:
        present = np.flatnonzero(np.bincount(code, minlength=m * m))
        lookup = np.full(m * m, -1, dtype=np.int64)
        lookup[present] = np.arange(present.size)
        pair = lookup[code]
    else:
        present, pair = np.unique(code, return_inverse=True)
    return _Pairs(first, second, pair, np.stack([present // m, present % m], axis=1))


def _pairwise(
    ratings: Ratings,
    label: np.ndarray,
    k: int,
    pairs: _Pairs,
    order_pos: np.ndarray | None,
) -> pl.DataFrame:
    """Cohen's kappa (and weighted kappas when an order is given) for every annotator pair."""
    n_pairs = pairs.annotators.shape[0]
    la, lb = label[pairs.first], label[pairs.second]
    p = pairs.pair
    n = np.bincount(p, minlength=n_pairs).astype(np.float64)
    rows = np.bincount(p * k + la, minlength=n_pairs * k).reshape(n_pairs, k).astype(np.float64)
    cols = np.bincount(p * k + lb, minlength=n_pairs * k).reshape(n_pairs, k).astype(np.float64)
    agree = np.bincount(p, weights=(la == lb).astype(np.float64), minlength=n_pairs)
    p_o = agree / n
    p_e = (rows * cols).sum(axis=1) / (n * n)
    with np.errstate(divide="ignore", invalid="ignore"):
        kappa = np.where(1 - p_e > _EPS, (p_o - p_e) / (1 - p_e), np.nan)
    names = np.array(ratings.annotators, dtype=object)
    out: dict[str, Any] = {
        "annotator_a": names[pairs.annotators[:, 0]].tolist(),
        "annotator_b": names[pairs.annotators[:, 1]].tolist(),
        "n_items": n.astype(np.int64),
        "observed_agreement": p_o,
        "cohen_kappa": kappa,
    }
    if order_pos is not None:
        for kind in ("linear", "quadratic"):
            diff = np.abs(order_pos[:, None] - order_pos[None, :]).astype(np.float64)
            w = diff if kind == "linear" else diff**2
            observed = np.bincount(p, weights=w[la, lb], minlength=n_pairs)
            expected = np.einsum("pk,kl,pl->p", rows, w, cols) / n
            with np.errstate(divide="ignore", invalid="ignore"):
                out[f"cohen_kappa_{kind}"] = np.where(
                    expected > _EPS, 1 - observed / expected, np.nan
                )
    return pl.DataFrame(out).with_columns(pl.col(pl.Float64).fill_nan(None))


def _per_category(counts: np.ndarray, categories: Sequence[str]) -> pl.DataFrame:
    c = counts.astype(np.float64)
    r = c.sum(axis=1, keepdims=True)
    total = float(r.sum())
    n_k = c.sum(axis=0)
    same = (c * (c - 1)).sum(axis=0)
    involving = (c * (r - 1)).sum(axis=0)
    o11 = (c * (c - 1) / (r - 1)).sum(axis=0)
    rest = r - c
    o00 = (rest * (rest - 1) / (r - 1)).sum(axis=0)
    binary = np.stack([n_k, total - n_k], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        specific = np.where(involving > 0, same / involving, np.nan)
    return pl.DataFrame(
        {
            "category": list(categories),
            "n_ratings": n_k.astype(np.int64),
            "prevalence": n_k / total,
            "specific_agreement": specific,
            "alpha": _alpha_from(o11 + o00, binary),
        }
    ).with_columns(pl.col(pl.Float64).fill_nan(None))


def _item_features(counts: np.ndarray) -> np.ndarray:
    """Per-item sums behind the bootstrapped statistics: ``[P_i, D_i, C_i1..C_iK]``."""
    c = counts.astype(np.float64)
    r = c.sum(axis=1)
    same = (c * (c - 1)).sum(axis=1)
    return np.column_stack([same / (r * (r - 1)), same / (r - 1), c])


def _statistics(totals: np.ndarray, n_items: int, ratings_per_item: float | None) -> np.ndarray:
    """``(observed, fleiss, alpha)`` of resampled totals ``(B, K + 2)``; NaN where undefined."""
    observed = totals[:, 0] / n_items
    n_k = totals[:, 2:]
    alpha = _alpha_from(totals[:, 1], n_k)
    fleiss = np.full(observed.shape, np.nan)
    if ratings_per_item is not None:
        p = n_k / (n_items * ratings_per_item)
        p_e = (p * p).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            fleiss = np.where(1 - p_e > _EPS, (observed - p_e) / (1 - p_e), np.nan)
    return np.stack([observed, fleiss, alpha], axis=1)


def _item_patterns(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the count matrix: one item index per pattern, and how many items."""
    small = counts.astype(np.int8 if counts.max() < 128 else np.int64)
    row = np.dtype((np.void, small.dtype.itemsize * small.shape[1]))
    _, first, sizes = np.unique(
        np.ascontiguousarray(small).view(row).ravel(), return_index=True, return_counts=True
    )
    return first, sizes


def _resample_weights(
    n_items: int, patterns: np.ndarray, rng: np.random.Generator, n_boot: int
) -> Iterator[np.ndarray]:
    """Chunks of ``(resamples, rows)`` weights: how often each row is drawn when ``n_items``
    items are drawn with replacement. Rows are items, or item patterns (``patterns`` = items per
    pattern), whose draws are multinomial with probabilities ``patterns / n_items``."""
    grouped = patterns.size < n_items
    chunk = max(1, min(n_boot, _CHUNK_CELLS // (patterns.size if grouped else n_items)))
    for done in range(0, n_boot, chunk):
        b = min(chunk, n_boot - done)
        if grouped:
            yield rng.multinomial(n_items, patterns / n_items, size=b).astype(np.float64)
        else:
            draws = rng.integers(0, n_items, size=(b, n_items))
            draws += (np.arange(b) * n_items)[:, None]
            flat = np.bincount(draws.ravel(), minlength=b * n_items)
            yield flat.reshape(b, n_items).astype(np.float64)


def _bootstrap(
    features: list[np.ndarray],
    counts: np.ndarray,
    ratings_per_item: float | None,
    n_boot: int,
    seed: int,
) -> list[np.ndarray]:
    """Statistics of ``n_boot`` item resamples for each feature matrix: ``[(n_boot, 3)]``.

    Every feature is a function of an item's row of ``counts``, so items with the same row are
    interchangeable: when there are few distinct rows (a pattern's draws are multinomial, about
    70 ns per pattern and resample) that is much cheaper than drawing items (about 6 ns per
    item and resample), and both give the same distribution.
    """
    n = counts.shape[0]
    joined = np.hstack(features)
    widths = np.cumsum([0, *(f.shape[1] for f in features)])
    first, sizes = _item_patterns(counts)
    if sizes.size * _PATTERN_COST < n:
        joined, patterns = joined[first], sizes
    else:
        patterns = np.ones(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    out: list[list[np.ndarray]] = [[] for _ in features]
    # One BLAS thread: these (resamples x rows) @ (rows x features) products are skinny and
    # memory bound, and OpenBLAS threads that spin for a busy CPU made them 10-100x slower on
    # a shared 2-core machine (13 ms against 0.04-1.2 s per chunk).
    with threadpool_limits(limits=1, user_api="blas"):
        for weights in _resample_weights(n, patterns, rng, n_boot):
            totals = weights @ joined
            for j in range(len(features)):
                block = totals[:, widths[j] : widths[j + 1]]
                out[j].append(_statistics(block, n, ratings_per_item))
    return [np.vstack(parts) for parts in out]


def _level(
    *,
    name: str,
    ratings: Ratings,
    categories: tuple[str, ...],
    label: np.ndarray,
    counts: np.ndarray,
    pairs: _Pairs,
    order_pos: np.ndarray | None,
    boot: np.ndarray | None,
    confidence: float,
) -> LevelAgreement:
    reasons: dict[str, str] = {}
    values: dict[str, float | None] = {}
    features = _item_features(counts)
    values["observed_agreement"] = float(features[:, 0].mean())
    for key, fn in (("fleiss_kappa", fleiss_kappa), ("krippendorff_alpha", krippendorff_alpha)):
        try:
            values[key] = fn(counts)
        except UndefinedMetricError as exc:
            values[key], reasons[key] = None, str(exc)
    pairwise = _pairwise(ratings, label, len(categories), pairs, order_pos)
    kappas = pairwise["cohen_kappa"].drop_nulls()
    mean_cohen = float(kappas.mean()) if kappas.len() else None  # type: ignore[arg-type]
    if mean_cohen is None:
        reasons["mean_pairwise_cohen_kappa"] = (
            "no annotator pair has a defined Cohen's kappa (each pair used a single category)"
        )
    intervals: dict[str, tuple[float, float]] = {}
    if boot is not None:
        tail = (1 - confidence) / 2
        for j, key in enumerate(BOOTSTRAPPED):
            column = boot[:, j]
            if values[key] is not None and np.isfinite(column).any():
                low, high = np.nanquantile(column, [tail, 1 - tail])
                intervals[key] = (float(low), float(high))
    c = counts.astype(np.float64)
    confusion = c.T @ c - np.diag(c.sum(axis=0))
    return LevelAgreement(
        level=name,
        categories=categories,
        n_items=ratings.n_items,
        n_annotators=int(np.unique(ratings.annotator).size),
        n_ratings=ratings.n_ratings,
        observed_agreement=values["observed_agreement"] or 0.0,
        fleiss_kappa=values["fleiss_kappa"],
        krippendorff_alpha=values["krippendorff_alpha"],
        mean_pairwise_cohen_kappa=mean_cohen,
        intervals=intervals,
        reasons=reasons,
        pairwise=pairwise,
        per_category=_per_category(counts, categories),
        confusion=confusion,
    )


def _order_positions(
    order: Sequence[str] | None, categories: Sequence[str], level: str
) -> np.ndarray | None:
    if order is None:
        return None
    position = {str(c): i for i, c in enumerate(dict.fromkeys(str(o) for o in order))}
    missing = [c for c in categories if c not in position]
    if missing:
        raise AnnotationError(
            f"order: the {level} categories {missing[:10]} are missing from the category order "
            "given for weighted kappa"
        )
    return np.array([position[c] for c in categories])


def measure_agreement(
    annotations: pl.DataFrame,
    *,
    taxonomy: Taxonomy | None = None,
    order: Sequence[str] | None = None,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    item: str | None = None,
    annotator: str = "annotator_id",
    label: str = "label",
    source: str = "annotations",
) -> Agreement:
    """Every agreement statistic of an annotation table (see the module docstring).

    With a ``taxonomy``, labels must be its fine categories (in its order) and the coarse
    level is computed too; without, the labels are taken as given (fine level only).
    ``order`` (a list of categories) adds linear and quadratic weighted Cohen's kappas.
    ``n_boot=0`` skips the bootstrap intervals. Columns: ``item`` (default ``item_id``, or
    ``event_id``), ``annotator``, ``label``.
    """
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0, got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    ratings = encode_annotations(
        annotations,
        categories=taxonomy.names if taxonomy is not None else None,
        item=item,
        annotator=annotator,
        label=label,
        source=source,
    )
    counts = ratings.counts
    per_item = counts.sum(axis=1)
    constant = float(per_item[0]) if per_item.min() == per_item.max() else None
    levels: list[tuple[str, tuple[str, ...], np.ndarray, np.ndarray, np.ndarray | None]] = [
        (
            "fine",
            ratings.categories,
            ratings.label,
            counts,
            _order_positions(order, ratings.categories, "fine"),
        )
    ]
    if taxonomy is not None:
        coarse = taxonomy.coarse_names
        to_coarse = np.array([coarse.index(taxonomy.parent_of(c)) for c in ratings.categories])
        onehot = np.zeros((len(ratings.categories), len(coarse)), dtype=counts.dtype)
        onehot[np.arange(len(ratings.categories)), to_coarse] = 1
        coarse_order = (
            None
            if order is None
            else [taxonomy.parent_of(str(o)) for o in order if str(o) in taxonomy]
        )
        levels.append(
            (
                "coarse",
                coarse,
                to_coarse[ratings.label],
                counts @ onehot,
                _order_positions(coarse_order, coarse, "coarse"),
            )
        )
    boots: list[np.ndarray | None] = [None] * len(levels)
    if n_boot:
        boots = list(
            _bootstrap([_item_features(lv[3]) for lv in levels], counts, constant, n_boot, seed)
        )
    pairs = _rating_pairs(ratings)
    results = [
        _level(
            name=name,
            ratings=ratings,
            categories=cats,
            label=lab,
            counts=cnt,
            pairs=pairs,
            order_pos=pos,
            boot=boot,
            confidence=confidence,
        )
        for (name, cats, lab, cnt, pos), boot in zip(levels, boots, strict=True)
    ]
    return Agreement(
        n_annotations=ratings.n_annotations,
        excluded_items=ratings.excluded_items,
        fine=results[0],
        coarse=results[1] if len(results) > 1 else None,
        n_boot=n_boot,
        confidence=confidence,
        seed=seed,
    )

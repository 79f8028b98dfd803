"""Merge proposals: which categories of a taxonomy to merge, and what agreement to expect.

:func:`propose_merges` merges categories greedily, one pair per step, until the taxonomy has
``target_categories``. Each step takes the pair with the most *confusion mass* and records
the evidence, the agreement predicted after the step and the resulting taxonomy with its
mapping from the original version.

Evidence
--------
The annotator confusion of categories ``a`` and ``b`` is the symmetric joint mass
``J[a, b] + J[b, a]`` of the annotator-vs-annotator coincidence matrix ``M`` (every ordered
pair of ratings of one item by two annotators, pooled over annotator pairs; see
:mod:`~mlinfra_models.labels.agreement`), normalised so that ``J = M / M.sum()`` sums to 1,
diagonal included. It is the share of all rating pairs in which one annotator said ``a`` and
the other ``b``. When a model confusion table is given (labels against predictions), its own
normalised symmetric mass is computed the same way and the ranking score is the mean of the
two; otherwise the score is the annotator mass. After a merge the rows and columns of the two
categories are added, so the next step ranks the merged category by its combined confusion.

Comparison with cleanlab's ``find_overlapping_classes``
------------------------------------------------------
cleanlab (AGPL, so not a dependency here) ranks class pairs to merge by the same kind of
quantity: it estimates the *confident joint* of noisy labels and true labels from a model's
out-of-sample predicted probabilities, normalises it into a joint distribution ``Q`` and ranks
pairs by ``Q[a, b] + Q[b, a]`` ("joint probability", with the number of overlapping examples).
The differences:

- **Source of the joint.** cleanlab needs a trained model's ``pred_probs`` and one label per
  example; here several annotators label each item, so their coincidence matrix is an
  estimate of label confusion that needs no model (the model confusion is optional evidence).
- **Greedy and re-ranked.** cleanlab ranks all pairs once; merging a pair here changes the
  candidates (the merged category inherits both rows), so the ranking is recomputed after
  every step, and each step reports the agreement it predicts.
- **Constraints.** Protected categories are never merged, and pairs across coarse parents only
  with ``allow_cross_parent``.

Ties (e.g. pairs never confused) go to the pair with fewer ratings, then taxonomy order.

Predicted agreement
-------------------
After each step the annotations are relabelled through the mapping (the count-matrix columns
of the two categories are added, which is the same thing) and Fleiss' kappa, Krippendorff's
alpha and observed agreement are recomputed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from mlinfra_models.labels.agreement import UndefinedMetricError, fleiss_kappa, krippendorff_alpha
from mlinfra_models.labels.annotations import AnnotationError, encode_annotations
from mlinfra_models.labels.taxonomy import Category, Taxonomy, TaxonomyMapping

__all__ = ["MergeError", "MergeProposal", "MergeStep", "propose_merges"]


class MergeError(ValueError):
    """A merge proposal cannot be made as asked; the message says why."""


@dataclass(frozen=True)
class MergeStep:
    """One merge: ``absorbed`` is merged into ``kept`` (the more often used of the two)."""

    step: int
    kept: str
    absorbed: str
    parent: str
    #: Normalised symmetric annotator confusion mass of the two (share of all rating pairs).
    annotator_confusion: float
    #: Ordered rating pairs of one item where one annotator said ``kept`` and the other
    #: ``absorbed`` (either way round).
    annotator_pairs: int
    #: Normalised symmetric model confusion mass, when a model confusion table was given.
    model_confusion: float | None
    score: float
    n_categories: int
    #: Agreement on the annotations relabelled through ``mapping`` (None when undefined).
    fleiss_kappa: float | None
    krippendorff_alpha: float | None
    observed_agreement: float
    #: Every category of the source taxonomy -> its category after this step.
    mapping: dict[str, str] = field(repr=False)
    taxonomy: Taxonomy = field(repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "kept": self.kept,
            "absorbed": self.absorbed,
            "parent": self.parent,
            "annotator_confusion": self.annotator_confusion,
            "annotator_pairs": self.annotator_pairs,
            "model_confusion": self.model_confusion,
            "score": self.score,
            "n_categories": self.n_categories,
            "fleiss_kappa": self.fleiss_kappa,
            "krippendorff_alpha": self.krippendorff_alpha,
            "observed_agreement": self.observed_agreement,
        }


@dataclass(frozen=True)
class MergeProposal:
    """A ranked sequence of merges from ``source`` down to ``target_categories``."""

    source: Taxonomy
    target_categories: int
    #: Agreement before any merge: fleiss_kappa, krippendorff_alpha, observed_agreement.
    baseline: dict[str, float | None]
    steps: tuple[MergeStep, ...]
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def taxonomy(self) -> Taxonomy:
        """The proposed taxonomy after the last step (the source when no step was needed)."""
        return self.steps[-1].taxonomy if self.steps else self.source

    @property
    def mapping(self) -> dict[str, str]:
        """Source category -> proposed category, for every source category."""
        return self.steps[-1].mapping if self.steps else {n: n for n in self.source.names}

    def as_dict(self) -> dict[str, Any]:
        return {
            "source_version": self.source.version,
            "version": self.taxonomy.version,
            "source_categories": len(self.source),
            "target_categories": self.target_categories,
            "baseline": dict(self.baseline),
            "reasons": dict(self.reasons),
            "steps": [s.as_dict() for s in self.steps],
            "mapping": self.mapping,
        }


def _next_version(version: str) -> str:
    match = re.fullmatch(r"(.*?)(\d+)", version)
    return f"{match.group(1)}{int(match.group(2)) + 1}" if match else f"{version}-merged"


def _check_target(taxonomy: Taxonomy, target: int, allow_cross_parent: bool) -> None:
    k = len(taxonomy)
    protected = set(taxonomy.protected)
    if target < 1:
        raise MergeError(f"target_categories must be at least 1, got {target}")
    if target > k:
        raise MergeError(
            f"target_categories={target} is more than the {k} categories of taxonomy "
            f"{taxonomy.version}; merging only reduces the number"
        )
    if target < len(protected):
        raise MergeError(
            f"target_categories={target} is below the {len(protected)} protected categories "
            f"of taxonomy {taxonomy.version} ({', '.join(taxonomy.protected)}), which are never "
            "merged"
        )
    free_parents = {c.parent for c in taxonomy.categories if c.name not in protected}
    floor = len(protected) + (
        min(1, len(free_parents)) if allow_cross_parent else len(free_parents)
    )
    if target < floor:
        how = (
            "the other categories can merge into one"
            if allow_cross_parent
            else f"without allow_cross_parent the other categories merge at most into one per "
            f"parent ({len(free_parents)} parents)"
        )
        raise MergeError(
            f"target_categories={target} is unreachable for taxonomy {taxonomy.version}: its "
            f"{len(protected)} protected categories stay and {how}, so at least {floor} "
            "categories remain"
        )


def _model_joint(model_confusion: pl.DataFrame, taxonomy: Taxonomy) -> np.ndarray:
    """``(K, K)`` joint distribution of (label, predicted) from a model confusion table."""
    needed = {"label", "predicted"}
    missing = sorted(needed - set(model_confusion.columns))
    if missing:
        raise AnnotationError(
            f"model_confusion: missing columns {missing}; expected label, predicted and "
            f"optionally count, got {model_confusion.columns}"
        )
    frame = model_confusion.select(
        pl.col("label").cast(pl.String),
        pl.col("predicted").cast(pl.String),
        (pl.col("count") if "count" in model_confusion.columns else pl.lit(1)).cast(pl.Float64),
    )
    if frame.height == 0:
        raise AnnotationError("model_confusion: the table is empty")
    if frame.null_count().sum_horizontal().item():
        raise AnnotationError("model_confusion: null values in label, predicted or count")
    unknown = taxonomy.unknown(frame["label"].to_list() + frame["predicted"].to_list())
    if unknown:
        raise AnnotationError(
            f"model_confusion: {unknown[:10]} are not categories of taxonomy {taxonomy.version}"
        )
    index = {n: i for i, n in enumerate(taxonomy.names)}
    k = len(taxonomy)
    a = frame["label"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
    b = frame["predicted"].replace_strict(index, return_dtype=pl.Int64).to_numpy()
    counts = frame["count"].to_numpy()
    if (counts < 0).any():
        raise AnnotationError("model_confusion: negative counts")
    joint = np.bincount(a * k + b, weights=counts, minlength=k * k).reshape(k, k)
    if joint.sum() <= 0:
        raise AnnotationError("model_confusion: all counts are zero")
    return joint / joint.sum()


def _merge_axis(matrix: np.ndarray, keep: int, drop: int) -> np.ndarray:
    """Add row and column ``drop`` into ``keep`` and delete ``drop``."""
    out = matrix.copy()
    out[keep, :] += out[drop, :]
    out[:, keep] += out[:, drop]
    out = np.delete(out, drop, axis=0)
    return np.delete(out, drop, axis=1)


def _agreement(counts: np.ndarray) -> tuple[float | None, float | None, float, dict[str, str]]:
    reasons: dict[str, str] = {}
    values: list[float | None] = []
    for key, fn in (("fleiss_kappa", fleiss_kappa), ("krippendorff_alpha", krippendorff_alpha)):
        try:
            values.append(fn(counts))
        except UndefinedMetricError as exc:
            values.append(None)
            reasons[key] = str(exc)
    c = counts.astype(np.float64)
    r = c.sum(axis=1)
    observed = float(((c * (c - 1)).sum(axis=1) / (r * (r - 1))).mean())
    return values[0], values[1], observed, reasons


def propose_merges(
    annotations: pl.DataFrame,
    taxonomy: Taxonomy,
    target_categories: int = 15,
    model_confusion: pl.DataFrame | None = None,
    allow_cross_parent: bool = False,
    *,
    version: str | None = None,
    item: str | None = None,
    annotator: str = "annotator_id",
    label: str = "label",
    source: str = "annotations",
) -> MergeProposal:
    """Greedy merges of ``taxonomy``'s categories down to ``target_categories`` (module doc).

    ``annotations`` is a long table (``item_id``/``event_id``, ``annotator_id``, ``label``) of
    the taxonomy's fine categories. ``model_confusion`` is an optional table of ``label``,
    ``predicted`` and optionally ``count`` (one row per prediction without it). ``version``
    names the proposed taxonomy (default: the source version's number plus one, ``v1`` ->
    ``v2``). Raises :class:`MergeError` when the target cannot be reached (protected categories
    are never merged; without ``allow_cross_parent`` each coarse parent keeps at least one
    category) and :class:`AnnotationError` for bad annotations (named ``source``).
    """
    _check_target(taxonomy, target_categories, allow_cross_parent)
    ratings = encode_annotations(
        annotations,
        categories=taxonomy.names,
        item=item,
        annotator=annotator,
        label=label,
        source=source,
    )
    counts = ratings.counts.astype(np.float64)
    coincidence = counts.T @ counts - np.diag(counts.sum(axis=0))
    joint = coincidence / coincidence.sum()
    model = _model_joint(model_confusion, taxonomy) if model_confusion is not None else None
    fleiss0, alpha0, observed0, reasons = _agreement(counts)
    new_version = version or _next_version(taxonomy.version)
    if new_version == taxonomy.version:
        raise MergeError(f"the proposed version must differ from {taxonomy.version!r}")

    names = list(taxonomy.names)
    parents = [taxonomy.parent_of(n) for n in names]
    descriptions = [taxonomy.category(n).description for n in names]
    protected = set(taxonomy.protected)
    mapping = {n: n for n in names}
    steps: list[MergeStep] = []
    while len(names) > target_categories:
        free = np.array([n not in protected for n in names])
        allowed = np.outer(free, free)
        if not allow_cross_parent:
            parent_arr = np.array(parents, dtype=object)
            allowed &= parent_arr[:, None] == parent_arr[None, :]
        allowed = np.triu(allowed, k=1)
        annot_mass = joint + joint.T
        score = annot_mass if model is None else (annot_mass + model + model.T) / 2
        size = counts.sum(axis=0)
        a, b = np.nonzero(allowed)
        # Highest score first; ties: fewer ratings of the pair, then taxonomy order.
        best = np.lexsort((b, a, size[a] + size[b], -score[a, b]))[0]
        i, j = int(a[best]), int(b[best])
        keep, drop = (i, j) if size[i] >= size[j] else (j, i)
        kept, absorbed = names[keep], names[drop]
        mass = float(annot_mass[i, j])
        pairs = round(float(coincidence[i, j] + coincidence[j, i]))
        model_mass = None if model is None else float(model[i, j] + model[j, i])
        step_score, parent = float(score[i, j]), parents[keep]
        counts[:, keep] += counts[:, drop]
        counts = np.delete(counts, drop, axis=1)
        coincidence = _merge_axis(coincidence, keep, drop)
        joint = _merge_axis(joint, keep, drop)
        if model is not None:
            model = _merge_axis(model, keep, drop)
        descriptions[keep] = f"{descriptions[keep]} Merged with {absorbed}: {descriptions[drop]}"
        for lst in (names, parents, descriptions):
            del lst[drop]
        mapping = {src: (kept if dst == absorbed else dst) for src, dst in mapping.items()}
        fleiss, alpha, observed, _ = _agreement(counts)
        proposed = Taxonomy(
            version=new_version,
            categories=tuple(
                Category(n, p, d) for n, p, d in zip(names, parents, descriptions, strict=True)
            ),
            protected=taxonomy.protected,
            maps_from=TaxonomyMapping(taxonomy.version, dict(mapping)),
        )
        steps.append(
            MergeStep(
                step=len(steps) + 1,
                kept=kept,
                absorbed=absorbed,
                parent=parent,
                annotator_confusion=mass,
                annotator_pairs=pairs,
                model_confusion=model_mass,
                score=step_score,
                n_categories=len(names),
                fleiss_kappa=fleiss,
                krippendorff_alpha=alpha,
                observed_agreement=observed,
                mapping=dict(mapping),
                taxonomy=proposed,
            )
        )
    return MergeProposal(
        source=taxonomy,
        target_categories=target_categories,
        baseline={
            "fleiss_kappa": fleiss0,
            "krippendorff_alpha": alpha0,
            "observed_agreement": observed0,
        },
        steps=tuple(steps),
        reasons=reasons,
    )

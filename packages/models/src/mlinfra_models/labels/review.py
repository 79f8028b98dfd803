"""A label review: agreement and merge proposal of one annotation table, written as a report.

What the label-review flow and ``mlinfra-labels report`` run; a notebook can call it too::

    review = review_labels(annotations, load_taxonomy("v1.yaml"), ReviewSettings())
    paths = write_review(review, Path("reports/labels/run-1"))
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from mlinfra_models.labels.agreement import Agreement, measure_agreement
from mlinfra_models.labels.merges import MergeProposal, propose_merges
from mlinfra_models.labels.taxonomy import Taxonomy, write_taxonomy

__all__ = ["LabelReview", "ReviewSettings", "review_labels", "write_review"]


@dataclass(frozen=True)
class ReviewSettings:
    """How a label review is computed (Hydra instantiates it in ``configs/label_review.yaml``)."""

    target_categories: int = 15
    allow_cross_parent: bool = False
    n_boot: int = 1000
    confidence: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.target_categories < 1:
            raise ValueError(
                f"target_categories={self.target_categories} is invalid; expected >= 1"
            )
        if self.n_boot < 0:
            raise ValueError(f"n_boot={self.n_boot} is invalid; expected >= 0")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence={self.confidence} is invalid; expected in (0, 1)")


@dataclass(frozen=True)
class LabelReview:
    agreement: Agreement
    proposal: MergeProposal

    def headline(self) -> dict[str, Any]:
        """The figures a log line or a flow result needs."""
        fine, coarse = self.agreement.fine, self.agreement.coarse
        last = self.proposal.steps[-1] if self.proposal.steps else None
        return {
            "n_annotations": self.agreement.n_annotations,
            "n_items": fine.n_items,
            "n_annotators": fine.n_annotators,
            "fine_fleiss_kappa": fine.fleiss_kappa,
            "fine_krippendorff_alpha": fine.krippendorff_alpha,
            "fine_mean_pairwise_cohen_kappa": fine.mean_pairwise_cohen_kappa,
            "coarse_fleiss_kappa": coarse.fleiss_kappa if coarse else None,
            "coarse_krippendorff_alpha": coarse.krippendorff_alpha if coarse else None,
            "coarse_mean_pairwise_cohen_kappa": (
                coarse.mean_pairwise_cohen_kappa if coarse else None
            ),
            "proposed_version": self.proposal.taxonomy.version,
            "proposed_categories": len(self.proposal.taxonomy),
            "merges": [f"{s.absorbed} -> {s.kept}" for s in self.proposal.steps],
            "predicted_fleiss_kappa": last.fleiss_kappa if last else None,
            "predicted_krippendorff_alpha": last.krippendorff_alpha if last else None,
        }


def review_labels(
    annotations: pl.DataFrame,
    taxonomy: Taxonomy,
    settings: ReviewSettings | None = None,
    *,
    model_confusion: pl.DataFrame | None = None,
    item: str | None = None,
    annotator: str = "annotator_id",
    label: str = "label",
    source: str = "annotations",
) -> LabelReview:
    """Agreement (fine and coarse) and the merge proposal of ``annotations``."""
    settings = settings or ReviewSettings()
    columns: dict[str, Any] = {"item": item, "annotator": annotator, "label": label}
    agreement = measure_agreement(
        annotations,
        taxonomy=taxonomy,
        n_boot=settings.n_boot,
        confidence=settings.confidence,
        seed=settings.seed,
        source=source,
        **columns,
    )
    proposal = propose_merges(
        annotations,
        taxonomy,
        settings.target_categories,
        model_confusion=model_confusion,
        allow_cross_parent=settings.allow_cross_parent,
        source=source,
        **columns,
    )
    return LabelReview(agreement, proposal)


def write_review(
    review: LabelReview,
    directory: str | os.PathLike[str],
    *,
    facts: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``labels.html``, ``labels.json`` and ``taxonomy-<version>.yaml`` into
    ``directory`` (each atomically); return their paths by kind."""
    from mlinfra_models.labels.report import (
        label_figures,
        write_label_figures,
        write_label_report,
    )

    out = Path(directory)
    proposal = review.proposal
    source = (facts or {}).get("annotations", "annotations")
    return {
        "html": write_label_report(
            review.agreement, out / "labels.html", proposal=proposal, facts=facts
        ),
        "json": write_label_figures(label_figures(review.agreement, proposal), out / "labels.json"),
        "taxonomy": write_taxonomy(
            proposal.taxonomy,
            out / f"taxonomy-{proposal.taxonomy.version}.yaml",
            header=(
                f"Taxonomy {proposal.taxonomy.version}: proposed by merging categories of "
                f"{proposal.source.version} down to {len(proposal.taxonomy)} on {source}.\n"
                "Review it before adopting it; maps_from translates labels of the old version."
            ),
        ),
    }

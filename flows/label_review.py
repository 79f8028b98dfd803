"""Label review flow: how well annotators agree on the event classifier's labels, and which
categories to merge.

    uv run python -m flows.label_review [hydra overrides, e.g. annotations=PATH
        target_categories=15 taxonomy=v1 review.allow_cross_parent=true]

With no overrides it reviews the demo warehouse's ``event_annotations`` (generating the demo
warehouse under the platform home when it has none, as the materialize flow does) against the
taxonomy v1 shipped with ``mlinfra_features``. It measures agreement at the fine and coarse
level, proposes merges down to ``target_categories`` and writes, under
``<home>/reports/labels/<UTC time>/``: ``labels.html`` (the report), ``labels.json`` (its
figures) and ``taxonomy-v2.yaml`` (the proposed taxonomy, with its mapping from v1).
"""

from __future__ import annotations

import importlib.resources
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task

from flows.config import build, load
from flows.materialize import prepare_sources
from mlinfra_features import Warehouse
from mlinfra_models.labels import (
    ReviewSettings,
    Taxonomy,
    TaxonomyError,
    load_taxonomy,
    read_annotations,
    review_labels,
    write_review,
)


def resolve_taxonomy(name: str) -> Taxonomy:
    """``name`` as a YAML file path, else as a version shipped with ``mlinfra_features``."""
    if Path(name).is_file():
        return load_taxonomy(name)
    shipped = importlib.resources.files("mlinfra_features") / "taxonomy"
    candidate = shipped / f"{name}.yaml"
    if not candidate.is_file():
        versions = sorted(p.name.removesuffix(".yaml") for p in shipped.iterdir())
        raise TaxonomyError(
            f"taxonomy={name!r} is neither a file nor a shipped version; expected a YAML path or "
            f"one of {versions}"
        )
    with importlib.resources.as_file(candidate) as path:
        return load_taxonomy(path)


@task
def review_task(cfg: dict[str, Any], annotations_path: str, out_dir: str) -> dict[str, Any]:
    """Agreement and merge proposal of one annotation table; writes the report files."""
    logger = get_run_logger()
    settings: ReviewSettings = build(cfg["review"])
    taxonomy = resolve_taxonomy(str(cfg["taxonomy"]))
    annotations = read_annotations(annotations_path)
    review = review_labels(annotations, taxonomy, settings, source=annotations_path)
    paths = write_review(
        review,
        out_dir,
        facts={
            "annotations": annotations_path,
            "taxonomy": f"{taxonomy.version} ({cfg['taxonomy']})",
            "target categories": str(settings.target_categories),
            "cross-parent merges": "allowed" if settings.allow_cross_parent else "not allowed",
        },
    )
    headline = review.headline()
    logger.info(
        "%s annotations of %s items by %s annotators: Fleiss' kappa %.3f fine / %.3f coarse, "
        "alpha %.3f / %.3f, mean pairwise Cohen %.3f / %.3f",
        headline["n_annotations"],
        headline["n_items"],
        headline["n_annotators"],
        *(
            headline[k] if headline[k] is not None else float("nan")
            for k in (
                "fine_fleiss_kappa",
                "coarse_fleiss_kappa",
                "fine_krippendorff_alpha",
                "coarse_krippendorff_alpha",
                "fine_mean_pairwise_cohen_kappa",
                "coarse_mean_pairwise_cohen_kappa",
            )
        ),
    )
    for step in review.proposal.steps:
        logger.info(
            "merge %d: %s -> %s (confusion %.4f): %d categories, predicted Fleiss' kappa %s",
            step.step,
            step.absorbed,
            step.kept,
            step.annotator_confusion,
            step.n_categories,
            "undefined" if step.fleiss_kappa is None else f"{step.fleiss_kappa:.3f}",
        )
    return {**headline, **{kind: str(path) for kind, path in paths.items()}}


@flow(name="label_review", log_prints=True)
def label_review(
    cfg: dict[str, Any] | None = None, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Review the annotations (the demo's by default) and propose a smaller taxonomy."""
    cfg = cfg if cfg is not None else load("label_review", overrides)
    if cfg.get("annotations"):
        source = Path(str(cfg["annotations"]))
        if not source.is_file():
            raise FileNotFoundError(f"annotations={source}: no such file")
    else:
        root = prepare_sources(cfg["features"])
        source = Warehouse(Path(root)).path("event_annotations")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    result = review_task(cfg, str(source), str(Path(cfg["reports_dir"]) / stamp))
    print(
        f"label review of {source}: Fleiss' kappa {_fmt(result['fine_fleiss_kappa'])} fine, "
        f"{_fmt(result['coarse_fleiss_kappa'])} coarse; {len(result['merges'])} merges to "
        f"{result['proposed_categories']} categories, predicted Fleiss' kappa "
        f"{_fmt(result['predicted_fleiss_kappa'])}; report: {result['html']}"
    )
    return result


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def main(argv: list[str] | None = None) -> None:
    label_review(load("label_review", sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()

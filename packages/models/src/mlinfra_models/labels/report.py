"""The label-quality report: agreement at the fine and coarse level, per-category agreement,
the most confused pairs and the proposed merges with their predicted agreement.

:func:`label_figures` holds every number the report shows as plain JSON-ready data;
:func:`write_label_report` renders them as one self-contained HTML page (charts are inline
SVG, as in :mod:`mlinfra_models.report`) and :func:`write_label_figures` writes them as JSON.
Both write to a temporary file and rename it.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra_models._atomic import write_text_atomic
from mlinfra_models.labels.agreement import BOOTSTRAPPED, Agreement, LevelAgreement
from mlinfra_models.labels.merges import MergeProposal
from mlinfra_models.report import _svg

__all__ = ["label_figures", "write_label_figures", "write_label_report"]

_SUMMARY = (
    ("observed_agreement", "observed agreement"),
    ("fleiss_kappa", "Fleiss' kappa"),
    ("krippendorff_alpha", "Krippendorff's alpha (nominal)"),
    ("mean_pairwise_cohen_kappa", "mean pairwise Cohen's kappa"),
)


def _summary(level: LevelAgreement) -> dict[str, Any]:
    return {
        "n_items": level.n_items,
        "n_annotators": level.n_annotators,
        "n_ratings": level.n_ratings,
        **{key: getattr(level, key) for key, _ in _SUMMARY},
        "intervals": {k: list(v) for k, v in level.intervals.items()},
        "reasons": dict(level.reasons),
    }


def _row_normalised(confusion: np.ndarray) -> np.ndarray:
    totals = confusion.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(totals > 0, confusion / totals, 0.0)


def label_figures(
    agreement: Agreement, proposal: MergeProposal | None = None, *, top: int = 10
) -> dict[str, Any]:
    """Every figure of the report as JSON-ready data."""
    fine = agreement.fine
    levels = {"fine": _summary(fine)}
    if agreement.coarse is not None:
        levels["coarse"] = _summary(agreement.coarse)
    per_category = fine.per_category.to_dicts()
    return {
        "n_annotations": agreement.n_annotations,
        "excluded_items": agreement.excluded_items,
        "bootstrap": {
            "n_boot": agreement.n_boot,
            "confidence": agreement.confidence,
            "seed": agreement.seed,
        },
        "agreement": levels,
        "per_category": per_category,
        "confusion": {
            "categories": list(fine.categories),
            "pairs": fine.confusion.astype(np.int64).tolist(),
            "row_share": _row_normalised(fine.confusion).round(6).tolist(),
        },
        "top_confusions": fine.top_confusions(top).to_dicts(),
        "pairwise": fine.pairwise.to_dicts(),
        "merges": proposal.as_dict() if proposal is not None else None,
    }


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _heatmap(level: LevelAgreement) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    share = _row_normalised(level.confusion)
    k = len(level.categories)
    size = max(4.5, 0.32 * k + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), level.categories, rotation=90, fontsize=8)
    ax.set_yticks(range(k), level.categories, fontsize=8)
    ax.set(xlabel="the other annotator's label", ylabel="one annotator's label")
    ax.set_title(f"Per-category agreement ({level.level}): share of rating pairs")
    if k <= 30:
        for i in range(k):
            for j in range(k):
                if share[i, j] >= 0.05:
                    ax.text(
                        j,
                        i,
                        f"{share[i, j]:.2f}".lstrip("0"),
                        ha="center",
                        va="center",
                        fontsize=6,
                        color="white" if share[i, j] > 0.6 else "black",
                    )
    fig.colorbar(image, ax=ax, fraction=0.04)
    return _svg(fig)


def _merge_chart(proposal: MergeProposal) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = [len(proposal.source), *(s.n_categories for s in proposal.steps)]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for key, label in (("fleiss_kappa", "Fleiss' kappa"), ("krippendorff_alpha", "alpha")):
        values = [proposal.baseline[key], *(getattr(s, key) for s in proposal.steps)]
        points = [(x, v) for x, v in zip(n, values, strict=True) if v is not None]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, "o-", label=label)
    ax.invert_xaxis()
    ax.set(
        xlabel="number of categories",
        ylabel="predicted agreement",
        title="Agreement after each proposed merge",
    )
    ax.legend(loc="lower right")
    return _svg(fig)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _summary_table(agreement: Agreement) -> str:
    levels = [agreement.fine, *([agreement.coarse] if agreement.coarse is not None else [])]
    rows = []
    for key, label in _SUMMARY:
        cells = [html.escape(label)]
        for level in levels:
            value = getattr(level, key)
            cell = _fmt(value)
            if key in level.intervals:
                low, high = level.intervals[key]
                cell += f" [{low:.3f}, {high:.3f}]"
            if value is None and key in level.reasons:
                cell += f" <small>({html.escape(level.reasons[key])})</small>"
            cells.append(cell)
        rows.append(cells)
    rows.append(
        ["items / annotators / ratings"]
        + [f"{lv.n_items} / {lv.n_annotators} / {lv.n_ratings}" for lv in levels]
    )
    return _table(["statistic", *(f"{lv.level} ({len(lv.categories)})" for lv in levels)], rows)


def write_label_report(
    agreement: Agreement,
    path: str | os.PathLike[str],
    *,
    proposal: MergeProposal | None = None,
    title: str = "Label quality: event classifier annotations",
    facts: Mapping[str, str] | None = None,
    top: int = 10,
) -> Path:
    """Render the HTML report to ``path`` (atomically) and return it."""
    path = Path(path)
    fine = agreement.fine
    facts_rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in (facts or {}).items()
    )
    per_category = _table(
        ["category", "ratings", "prevalence", "specific agreement", "alpha (k vs rest)"],
        [
            [
                html.escape(str(r["category"])),
                str(r["n_ratings"]),
                _fmt(r["prevalence"]),
                _fmt(r["specific_agreement"]),
                _fmt(r["alpha"]),
            ]
            for r in fine.per_category.to_dicts()
        ],
    )
    confusions = _table(
        ["category a", "category b", "rating pairs", "share of all pairs"],
        [
            [
                html.escape(r["category_a"]),
                html.escape(r["category_b"]),
                str(r["pairs"]),
                f"{r['mass']:.4f}",
            ]
            for r in fine.top_confusions(top).to_dicts()
        ],
    )
    coarse_map = _heatmap(agreement.coarse) if agreement.coarse is not None else ""
    merges = ""
    if proposal is not None:
        base = proposal.baseline
        rows = [
            [
                "0",
                "-",
                "-",
                "-",
                str(len(proposal.source)),
                _fmt(base["fleiss_kappa"]),
                _fmt(base["krippendorff_alpha"]),
            ]
        ]
        for s in proposal.steps:
            evidence = f"{s.annotator_confusion:.4f} ({s.annotator_pairs} pairs)"
            if s.model_confusion is not None:
                evidence += f"; model {s.model_confusion:.4f}"
            rows.append(
                [
                    str(s.step),
                    html.escape(s.absorbed),
                    html.escape(s.kept),
                    evidence,
                    str(s.n_categories),
                    _fmt(s.fleiss_kappa),
                    _fmt(s.krippendorff_alpha),
                ]
            )
        merges = (
            f"<h2>Proposed merges: {proposal.source.version} ({len(proposal.source)}) &rarr; "
            f"{html.escape(proposal.taxonomy.version)} ({len(proposal.taxonomy)})</h2>"
            "<p>Greedy: each step merges the pair with the most annotator confusion (symmetric "
            "share of all rating pairs), within a coarse parent unless cross-parent merges are "
            "allowed; protected categories ("
            + html.escape(", ".join(proposal.source.protected) or "none")
            + ") are never merged. Agreement is recomputed on the relabelled annotations.</p>"
            + _table(
                ["step", "merge", "into", "confusion mass", "categories", "Fleiss' kappa", "alpha"],
                rows,
            )
            + _merge_chart(proposal)
        )
    excluded = (
        f" {agreement.excluded_items} items with a single rating were left out."
        if agreement.excluded_items
        else ""
    )
    intervals = ", ".join(k for k in BOOTSTRAPPED)
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 80rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
.charts {{ display: flex; gap: 1rem; flex-wrap: wrap; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{facts_rows}</table>
<h2>Agreement</h2>
<p>{agreement.n_annotations} annotations.{excluded} Intervals: {int(agreement.confidence * 100)}%
percentile bootstrap over items ({agreement.n_boot} resamples, seed {agreement.seed}) for
{html.escape(intervals)}.</p>
{_summary_table(agreement)}
<h2>Per category ({fine.level})</h2>
<p>Specific agreement: of the rating pairs in which one annotator chose the category, the share
in which the other did too. Alpha: Krippendorff's alpha of the category against all others.</p>
{per_category}
<div class="charts">{_heatmap(fine)}{coarse_map}</div>
<h2>Most confused pairs ({fine.level})</h2>
{confusions}
{merges}
</body></html>
"""
    return write_text_atomic(path, page)


def write_label_figures(figures: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write :func:`label_figures` output as JSON (atomically) and return the path."""
    return write_text_atomic(Path(path), json.dumps(figures, indent=2, allow_nan=False) + "\n")

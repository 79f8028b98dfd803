"""Self-contained HTML evaluation reports: metrics vs the champion, ROC and calibration curves,
and an ablation chart; for classifiers, per-class F1 and confusion matrices. Charts are inline
SVG (matplotlib), so the file needs nothing else."""

from __future__ import annotations

import html
import io
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mlinfra_models._atomic import write_text_atomic
from mlinfra_models.evaluation import BinaryEvaluation, Estimate

if TYPE_CHECKING:
    from mlinfra_models.events import MulticlassEvaluation

__all__ = [
    "ClassificationReport",
    "EvaluationReport",
    "confusion_chart",
    "write_classification_report",
    "write_report",
]


@dataclass
class EvaluationReport:
    """What one retrain's report shows."""

    model_name: str
    title: str
    candidate: BinaryEvaluation
    champion: BinaryEvaluation | None = None
    champion_label: str = "champion"
    deltas: Mapping[str, Estimate] = field(default_factory=dict)
    ablation: Mapping[str, Estimate] = field(default_factory=dict)
    ablation_auc: Mapping[str, float] = field(default_factory=dict)
    facts: Mapping[str, str] = field(default_factory=dict)
    decision: str = ""


def _page_head(title: str, decision: str, *, width_rem: int) -> str:
    """The opening of every report page: title, shared style and the gate's decision."""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: {width_rem}rem; color: #222; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
td, th {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
.charts {{ display: flex; gap: 1rem; flex-wrap: wrap; }}
.decision {{ padding: .6rem; background: #f3f6fa; border-left: 4px solid #4c72b0; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p class="decision">{html.escape(decision)}</p>"""


def _svg(fig: object) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")  # type: ignore[attr-defined]
    import matplotlib.pyplot as plt

    plt.close(fig)  # type: ignore[arg-type]
    text = buf.getvalue()
    return text[text.index("<svg") :]


def _curves(report: EvaluationReport) -> tuple[str, str]:
    """The ROC chart and, when the scores are probabilities, the reliability chart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [("candidate", report.candidate)]
    if report.champion is not None:
        runs.append((report.champion_label, report.champion))
    roc, ax = plt.subplots(figsize=(4.6, 4.2))
    for label, ev in runs:
        auc = ev.metrics["roc_auc"].value
        ax.plot(ev.roc["fpr"], ev.roc["tpr"], label=f"{label} (AUC {auc:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC")
    ax.legend(loc="lower right")
    runs = [(label, ev) for label, ev in runs if ev.calibration]
    if not runs:
        return _svg(roc), ""
    cal, ax = plt.subplots(figsize=(4.6, 4.2))
    for label, ev in runs:
        ax.plot(
            ev.calibration["mean_predicted"], ev.calibration["fraction_positive"], "o-", label=label
        )
    top = max(
        max(ev.calibration["mean_predicted"] + ev.calibration["fraction_positive"])
        for _, ev in runs
    )
    ax.plot([0, top], [0, top], ls=":", c="grey")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency", title="Calibration")
    ax.legend(loc="upper left")
    return _svg(roc), _svg(cal)


def _ablation_chart(ablation: Mapping[str, Estimate]) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(ablation)
    values = [ablation[n].value for n in names]
    errors = [
        [ablation[n].value - ablation[n].low for n in names],
        [ablation[n].high - ablation[n].value for n in names],
    ]
    fig, ax = plt.subplots(figsize=(6.5, 0.5 + 0.5 * len(names)))
    ax.barh(names, values, xerr=errors, color="#4c72b0", capsize=3)
    ax.axvline(0, c="grey", lw=1)
    ax.set(xlabel="ROC-AUC change of the candidate vs the variant (95% paired bootstrap)")
    ax.invert_yaxis()
    return _svg(fig)


def _metrics_table(report: EvaluationReport) -> str:
    rows = []
    for name, est in report.candidate.metrics.items():
        champ = report.champion.metrics[name] if report.champion else None
        delta = report.deltas.get(name)
        rows.append(
            "<tr>"
            f"<td>{html.escape(name)}</td><td>{est}</td>"
            f"<td>{champ if champ else '-'}</td><td>{delta if delta else '-'}</td>"
            "</tr>"
        )
    return (
        f"<table><tr><th>metric</th><th>candidate</th><th>{html.escape(report.champion_label)}"
        "</th><th>difference</th></tr>" + "".join(rows) + "</table>"
    )


def write_report(report: EvaluationReport, path: Path) -> Path:
    """Render the report to ``path`` (atomically) and return it."""
    roc, cal = _curves(report)
    facts = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in report.facts.items()
    )
    ablation = ""
    if report.ablation:
        rows = "".join(
            f"<tr><td>{html.escape(n)}</td><td>{report.ablation_auc.get(n, float('nan')):.4f}</td>"
            f"<td>{e}</td></tr>"
            for n, e in report.ablation.items()
        )
        ablation = (
            "<h2>Ablation</h2><p>Each variant is trained on the same rows and evaluated on the "
            "same window; the difference is the candidate's ROC-AUC minus the variant's.</p>"
            "<table><tr><th>variant</th><th>ROC-AUC</th><th>candidate - variant</th></tr>"
            f"{rows}</table>{_ablation_chart(report.ablation)}"
        )
    page = (
        _page_head(report.title, report.decision, width_rem=70)
        + f"""
<table>{facts}</table>
<h2>Metrics on the evaluation window (95% bootstrap intervals)</h2>
<p>{report.candidate.n} rows, {report.candidate.positives} positives.</p>
{_metrics_table(report)}
<div class="charts">{roc}{cal}</div>
{ablation}
</body></html>
"""
    )
    return write_text_atomic(path, page)


# -- classifiers (the event classifier) ------------------------------------------------------


@dataclass
class ClassificationReport:
    """What one multi-class retrain's report shows: metrics vs the champion, per-class F1 and
    the confusion matrix. ``champion`` is the champion on the same events (under its own
    taxonomy when ``notes`` say the label sets differ)."""

    title: str
    candidate: MulticlassEvaluation
    champion: MulticlassEvaluation | None = None
    champion_label: str = "champion"
    deltas: Mapping[str, Estimate] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    facts: Mapping[str, str] = field(default_factory=dict)
    decision: str = ""


def confusion_chart(evaluation: MulticlassEvaluation, title: str = "Confusion matrix") -> str:
    """The confusion matrix (rows: labels, columns: predictions; row-normalised colours, counts
    written in the cells) as inline SVG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cm = np.asarray(evaluation.confusion, dtype=float)
    k = len(evaluation.labels)
    rates = np.divide(cm, cm.sum(axis=1, keepdims=True), out=np.zeros_like(cm), where=cm > 0)
    size = 2.5 + 0.32 * k
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i, j in zip(*np.nonzero(cm), strict=True):
        ax.text(j, i, str(int(cm[i, j])), ha="center", va="center", fontsize=7,
                color="white" if rates[i, j] > 0.6 else "black")  # fmt: skip
    ax.set_xticks(range(k), evaluation.labels, rotation=90, fontsize=7)
    ax.set_yticks(range(k), evaluation.labels, fontsize=7)
    ax.set(xlabel="predicted", ylabel="label (annotator majority)", title=title)
    fig.colorbar(image, ax=ax, fraction=0.04, label="share of the label's events")
    return _svg(fig)


def write_classification_report(report: ClassificationReport, path: Path) -> Path:
    """Render a multi-class report to ``path`` (atomically) and return it."""
    cand, champ = report.candidate, report.champion
    facts = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in report.facts.items()
    )
    notes = "".join(f"<p class='decision'>{html.escape(n)}</p>" for n in report.notes)
    rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{est}</td>"
        f"<td>{champ.metrics[name] if champ else '-'}</td>"
        f"<td>{report.deltas.get(name, '-')}</td></tr>"
        for name, est in cand.metrics.items()
    )
    metrics = (
        f"<table><tr><th>metric</th><th>candidate ({html.escape(cand.taxonomy_version)})</th>"
        f"<th>{html.escape(report.champion_label)}</th><th>difference</th></tr>{rows}</table>"
    )
    per_class = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{int(s['support'])}</td>"
        f"<td>{s['precision']:.3f}</td><td>{s['recall']:.3f}</td><td>{s['f1']:.3f}</td>"
        f"<td>{f'{champ.per_class[name]["f1"]:.3f}' if champ and name in champ.per_class else '-'}"
        "</td></tr>"
        for name, s in cand.per_class.items()
    )
    charts = confusion_chart(cand, f"Candidate ({cand.taxonomy_version})")
    if champ is not None:
        charts += confusion_chart(champ, f"{report.champion_label} ({champ.taxonomy_version})")
    page = (
        _page_head(report.title, report.decision, width_rem=90)
        + f"""
{notes}
<table>{facts}</table>
<h2>Metrics on the evaluation window (95% bootstrap intervals)</h2>
<p>{cand.n} events; labels are the annotators' majority label.</p>
{metrics}
<h2>Per category (candidate)</h2>
<table><tr><th>category</th><th>events</th><th>precision</th><th>recall</th><th>F1</th>
<th>{html.escape(report.champion_label)} F1</th></tr>{per_class}</table>
<h2>Confusion matrices</h2>
<div class="charts">{charts}</div>
</body></html>
"""
    )
    return write_text_atomic(path, page)

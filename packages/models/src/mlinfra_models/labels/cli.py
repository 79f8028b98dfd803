"""``mlinfra-labels``: agreement, merge proposals and the label report from the command line.

    mlinfra-labels agreement FILE [--json] [--taxonomy YAML] [--order a,b,c] [--bootstrap N]
    mlinfra-labels merges FILE --taxonomy YAML [--target 15] [--allow-cross-parent]
                                 [--out v2.yaml] [--json]
    mlinfra-labels report FILE --taxonomy YAML --out DIR [--target 15]

``FILE`` is a CSV or Parquet annotation table: an item column (``item_id``, or ``event_id``,
or ``--item``), ``annotator_id`` and ``label``. ``agreement`` takes the labels as given; with a
taxonomy it also reports the coarse level. A bad file or argument exits with status 2 and one
line naming the file and the problem.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import polars as pl

from mlinfra_models.labels.agreement import Agreement, measure_agreement
from mlinfra_models.labels.annotations import read_annotations
from mlinfra_models.labels.merges import propose_merges
from mlinfra_models.labels.review import ReviewSettings, review_labels, write_review
from mlinfra_models.labels.taxonomy import Taxonomy, load_taxonomy, write_taxonomy

__all__ = ["main"]

EXIT_BAD_INPUT = 2


def _taxonomy(path: str | None) -> Taxonomy | None:
    return load_taxonomy(path) if path else None


def _columns(args: argparse.Namespace) -> dict[str, Any]:
    return {"item": args.item, "annotator": args.annotator, "label": args.label}


def _print_agreement(agreement: Agreement) -> None:
    levels = [agreement.fine, *([agreement.coarse] if agreement.coarse else [])]
    print(
        f"{agreement.n_annotations} annotations, {agreement.fine.n_items} items, "
        f"{agreement.fine.n_annotators} annotators"
        + (
            f"; {agreement.excluded_items} single-rated items left out"
            if agreement.excluded_items
            else ""
        )
    )
    for level in levels:
        print(f"\n{level.level} ({len(level.categories)} categories)")
        for key in (
            "observed_agreement",
            "fleiss_kappa",
            "krippendorff_alpha",
            "mean_pairwise_cohen_kappa",
        ):
            value = getattr(level, key)
            text = "undefined" if value is None else f"{value:.4f}"
            if key in level.intervals:
                low, high = level.intervals[key]
                text += f"  [{low:.4f}, {high:.4f}]"
            if value is None:
                text += f"  ({level.reasons.get(key, '')})"
            print(f"  {key:<27} {text}")
        top = level.top_confusions(5)
        if top.height:
            print("  most confused pairs:")
            for row in top.iter_rows(named=True):
                print(
                    f"    {row['category_a']} / {row['category_b']}: {row['pairs']} pairs "
                    f"({row['mass']:.2%})"
                )


def _agreement(args: argparse.Namespace) -> int:
    path = Path(args.file)
    table = read_annotations(path)
    order = [s.strip() for s in args.order.split(",")] if args.order else None
    agreement = measure_agreement(
        table,
        taxonomy=_taxonomy(args.taxonomy),
        order=order,
        n_boot=args.bootstrap,
        seed=args.seed,
        source=str(path),
        **_columns(args),
    )
    if args.json:
        out = agreement.as_dict()
        out["file"] = str(path)
        print(json.dumps(out, allow_nan=False))
    else:
        _print_agreement(agreement)
    return 0


def _merges(args: argparse.Namespace) -> int:
    path = Path(args.file)
    proposal = propose_merges(
        read_annotations(path),
        load_taxonomy(args.taxonomy),
        args.target,
        allow_cross_parent=args.allow_cross_parent,
        source=str(path),
        **_columns(args),
    )
    if args.out:
        write_taxonomy(proposal.taxonomy, args.out, header=f"proposed from {args.file}")
    if args.json:
        print(json.dumps(proposal.as_dict(), allow_nan=False))
        return 0
    base = proposal.baseline
    print(
        f"{proposal.source.version} ({len(proposal.source)} categories): Fleiss' kappa "
        f"{_num(base['fleiss_kappa'])}, alpha {_num(base['krippendorff_alpha'])}"
    )
    for s in proposal.steps:
        print(
            f"{s.step:>3}. {s.absorbed} -> {s.kept} ({s.parent}): confusion "
            f"{s.annotator_confusion:.4f}; {s.n_categories} categories, Fleiss' kappa "
            f"{_num(s.fleiss_kappa)}, alpha {_num(s.krippendorff_alpha)}"
        )
    if args.out:
        print(f"proposed taxonomy {proposal.taxonomy.version}: {args.out}")
    return 0


def _num(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _report(args: argparse.Namespace) -> int:
    path = Path(args.file)
    table = read_annotations(path)
    settings = ReviewSettings(
        target_categories=args.target,
        allow_cross_parent=args.allow_cross_parent,
        n_boot=args.bootstrap,
        seed=args.seed,
    )
    review = review_labels(
        table, load_taxonomy(args.taxonomy), settings, source=str(path), **_columns(args)
    )
    paths = write_review(review, args.out, facts={"annotations": str(path)})
    print("\n".join(f"{kind}: {p}" for kind, p in paths.items()))
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlinfra-labels", description="Label quality: agreement and taxonomy merges."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("file", help="annotation table (.csv, .tsv or .parquet)")
        p.add_argument("--item", default=None, help="item id column (default item_id/event_id)")
        p.add_argument("--annotator", default="annotator_id", help="annotator id column")
        p.add_argument("--label", default="label", help="label column")
        p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples (0: none)")
        p.add_argument("--seed", type=int, default=0, help="bootstrap seed")

    p = sub.add_parser("agreement", help="agreement statistics of an annotation file")
    common(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--taxonomy", help="taxonomy YAML: check labels and add the coarse level")
    p.add_argument("--order", help="comma-separated category order for weighted Cohen's kappa")
    p.set_defaults(run=_agreement)

    for name, helptext in (
        ("merges", "propose category merges down to --target"),
        ("report", "write the HTML report, JSON figures and proposed taxonomy to --out"),
    ):
        p = sub.add_parser(name, help=helptext)
        common(p)
        p.add_argument("--taxonomy", required=True, help="taxonomy YAML of the labels")
        p.add_argument("--target", type=int, default=15, help="number of categories to reach")
        p.add_argument(
            "--allow-cross-parent", action="store_true", help="allow merges across coarse parents"
        )
        if name == "merges":
            p.add_argument("--out", help="write the proposed taxonomy YAML here")
            p.add_argument("--json", action="store_true", help="print one JSON object")
            p.set_defaults(run=_merges)
        else:
            p.add_argument("--out", required=True, help="output directory")
            p.set_defaults(run=_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (ValueError, pl.exceptions.PolarsError) as exc:
        message = " ".join(str(exc).split())
        if args.file not in message:
            message = f"{args.file}: {message}"
        print(f"mlinfra-labels: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return code


if __name__ == "__main__":
    sys.exit(main())

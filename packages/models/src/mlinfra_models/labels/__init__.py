"""Label quality of the event classifier: agreement, taxonomies, merges and relabelling.

Plain Python on Polars tables (no Feast, no Prefect): annotations are long tables of
(``item_id`` or ``event_id``, ``annotator_id``, ``label``) and taxonomies are YAML files.

- :func:`measure_agreement`: Cohen's kappa per annotator pair (weighted with a category
  order), Fleiss' kappa, Krippendorff's alpha, observed and per-category agreement, the pooled
  annotator confusion matrix and bootstrap intervals, at the fine and coarse level.
- :func:`load_taxonomy`, :func:`write_taxonomy`, :func:`convert_annotations`: versioned
  taxonomies and label conversion between versions.
- :func:`propose_merges`: ranked category merges with their predicted agreement.
- :func:`sample_for_relabelling`, :func:`write_relabelling_csv`, :func:`read_relabelled_csv`:
  relabelling batches.
- :func:`write_label_report`, :func:`label_figures`: the HTML report and its figures as JSON
  (matplotlib is imported when it draws).
- :func:`review_labels`, :func:`write_review`: all of it for one annotation table, as the
  label-review flow and ``mlinfra-labels report`` run it.
"""

from mlinfra_models.labels.agreement import (
    Agreement,
    LevelAgreement,
    UndefinedMetricError,
    cohen_kappa,
    disagreement_weights,
    fleiss_kappa,
    krippendorff_alpha,
    measure_agreement,
)
from mlinfra_models.labels.annotations import (
    AnnotationError,
    Ratings,
    encode_annotations,
    read_annotations,
)
from mlinfra_models.labels.merges import MergeError, MergeProposal, MergeStep, propose_merges
from mlinfra_models.labels.relabelling import (
    DEFAULT_CONFIDENCE_BINS,
    RelabelledBatch,
    read_relabelled_csv,
    sample_for_relabelling,
    write_relabelling_csv,
)
from mlinfra_models.labels.report import label_figures, write_label_figures, write_label_report
from mlinfra_models.labels.review import LabelReview, ReviewSettings, review_labels, write_review
from mlinfra_models.labels.taxonomy import (
    Category,
    Taxonomy,
    TaxonomyError,
    TaxonomyMapping,
    convert_annotations,
    convert_labels,
    load_taxonomy,
    parse_taxonomy,
    write_taxonomy,
)

__all__ = [
    "DEFAULT_CONFIDENCE_BINS",
    "Agreement",
    "AnnotationError",
    "Category",
    "LabelReview",
    "LevelAgreement",
    "MergeError",
    "MergeProposal",
    "MergeStep",
    "Ratings",
    "RelabelledBatch",
    "ReviewSettings",
    "Taxonomy",
    "TaxonomyError",
    "TaxonomyMapping",
    "UndefinedMetricError",
    "cohen_kappa",
    "convert_annotations",
    "convert_labels",
    "disagreement_weights",
    "encode_annotations",
    "fleiss_kappa",
    "krippendorff_alpha",
    "label_figures",
    "load_taxonomy",
    "measure_agreement",
    "parse_taxonomy",
    "propose_merges",
    "read_annotations",
    "read_relabelled_csv",
    "review_labels",
    "sample_for_relabelling",
    "write_label_figures",
    "write_label_report",
    "write_relabelling_csv",
    "write_review",
    "write_taxonomy",
]

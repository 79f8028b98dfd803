"""Taxonomies: the shipped v1 file, validation errors, atomic writes, version conversion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest

from mlinfra_models.labels import (
    Taxonomy,
    TaxonomyError,
    convert_annotations,
    convert_labels,
    load_taxonomy,
    parse_taxonomy,
    write_taxonomy,
)

#: The event taxonomy shipped with mlinfra_features, read as a file (models never imports it).
V1 = Path(__file__).resolve().parents[2] / "features/src/mlinfra_features/taxonomy/v1.yaml"


def doc(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": "v1",
        "categories": [
            {"name": "a", "parent": "P", "description": "first"},
            {"name": "b", "parent": "P", "description": "second"},
            {"name": "c", "parent": "Q", "description": "third"},
        ],
        "protected": ["c"],
    }
    return base | changes


def test_the_shipped_v1_taxonomy_loads() -> None:
    taxonomy = load_taxonomy(V1)
    assert taxonomy.version == "v1" and len(taxonomy) == 24
    assert len(taxonomy.coarse_names) == 6
    assert taxonomy.protected == ("payment_failure", "security_alert", "error_report")
    assert taxonomy.parent_of("feature_usage") == "engagement"
    assert taxonomy.maps_from is None


def test_write_then_load_round_trips_atomically(tmp_path: Path) -> None:
    v1 = load_taxonomy(V1)
    path = write_taxonomy(v1, tmp_path / "nested" / "v1.yaml", header="a copy\nof v1")
    assert path.read_text().startswith("# a copy\n# of v1\nversion: v1\n")
    assert load_taxonomy(path) == v1
    assert [p.name for p in path.parent.iterdir()] == ["v1.yaml"]  # no temporary file left
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_failed_write_leaves_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = parse_taxonomy(doc())
    path = write_taxonomy(v1, tmp_path / "t.yaml")
    before = path.read_text()
    import yaml

    def boom(*args: object, **kwargs: object) -> str:
        raise RuntimeError("disk full")

    monkeypatch.setattr(yaml, "safe_dump", boom)
    with pytest.raises(RuntimeError):
        write_taxonomy(parse_taxonomy(doc(version="v9")), path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["t.yaml"]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"categories": []}, "missing 'version'"),
        (doc(categories=[]), "'categories' must be a non-empty list"),
        (doc(categories=[{"name": "a"}]), "category 'a' has no parent"),
        (doc(categories=[{"name": "a", "parent": ""}]), "parent must be a non-empty string"),
        (
            doc(categories=[{"name": "a", "parent": "P"}, {"name": "a", "parent": "Q"}]),
            "duplicate category 'a'",
        ),
        (doc(protected=["zz"]), r"protected \['zz'\] are not categories"),
        (doc(maps_from={"version": "v0", "mapping": {"old": "nope"}}), r"maps to \['nope'\]"),
        (doc(maps_from={"mapping": {}}), "maps_from must be a mapping with 'version'"),
        (["not", "a", "mapping"], "expected a mapping"),
    ],
)
def test_invalid_taxonomies_are_refused(raw: Any, message: str) -> None:
    with pytest.raises(TaxonomyError, match=message):
        parse_taxonomy(raw, source="t.yaml")


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(TaxonomyError, match=r"missing\.yaml: cannot read"):
        load_taxonomy(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: v1\ncategories: [\n")
    with pytest.raises(TaxonomyError, match=r"bad\.yaml: not valid YAML"):
        load_taxonomy(bad)
    dup = tmp_path / "dup.yaml"
    dup.write_text("version: v1\ncategories:\n- {name: a, parent: P}\n- {name: a, parent: P}\n")
    with pytest.raises(TaxonomyError, match=r"dup.yaml \(version v1\): duplicate category 'a'"):
        load_taxonomy(dup)


def test_convert_labels_and_annotations_between_versions() -> None:
    v1 = parse_taxonomy(doc())
    v2 = parse_taxonomy(
        {
            "version": "v2",
            "categories": [{"name": "a", "parent": "P"}, {"name": "c", "parent": "Q"}],
            "protected": ["c"],
            "maps_from": {"version": "v1", "mapping": {"b": "a"}},  # unlisted: same name
        }
    )
    assert convert_labels(["a", "b", "c"], v1, v2).to_list() == ["a", "a", "c"]
    table = pl.DataFrame({"event_id": [1, 1], "annotator_id": ["x", "y"], "label": ["b", "c"]})
    assert convert_annotations(table, v1, v2)["label"].to_list() == ["a", "c"]
    assert convert_labels(["a"], v1, v1).to_list() == ["a"]
    with pytest.raises(TaxonomyError, match=r"labels \['zz'\] are not categories of taxonomy v1"):
        convert_labels(["zz"], v1, v2)
    with pytest.raises(TaxonomyError, match="does not map from v2"):
        convert_labels(["a"], v2, v1)


def test_a_mapping_that_loses_a_category_is_refused() -> None:
    v1 = parse_taxonomy(doc())
    v2 = parse_taxonomy(
        {
            "version": "v2",
            "categories": [{"name": "a", "parent": "P"}],
            "maps_from": {"version": "v1", "mapping": {"b": "a"}},
        }
    )
    with pytest.raises(TaxonomyError, match=r"categories \['c'\] of v1 are neither mapped"):
        convert_labels(["a"], v1, v2)


def test_taxonomy_accessors() -> None:
    t: Taxonomy = parse_taxonomy(doc())
    assert t.names == ("a", "b", "c") and t.coarse_names == ("P", "Q")
    assert "a" in t and "zz" not in t
    assert t.unknown(["a", "zz", "yy"]) == ["yy", "zz"]
    with pytest.raises(TaxonomyError, match="no category 'zz'"):
        t.category("zz")

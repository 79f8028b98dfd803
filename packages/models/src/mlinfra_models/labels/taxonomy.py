"""Versioned label taxonomies: fine categories under coarse parents, a protected list, and
the mapping from the version a revision replaces.

The YAML format is the one of the event taxonomy shipped with ``mlinfra_features``
(``taxonomy/v1.yaml``), plus one optional key for revisions::

    version: v2
    categories:
      - name: user_engagement
        parent: engagement
        description: General activity in the app ...
      ...
    protected: [payment_failure, security_alert, error_report]
    maps_from:                 # optional: how labels of an earlier version translate
      version: v1
      mapping: {feature_usage: user_engagement, ...}

``mapping`` maps categories of the earlier version to categories of this one; a category it
does not list keeps its name (and must then exist in this version).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from mlinfra_models._atomic import write_text_atomic

__all__ = [
    "Category",
    "Taxonomy",
    "TaxonomyError",
    "TaxonomyMapping",
    "convert_annotations",
    "convert_labels",
    "load_taxonomy",
    "parse_taxonomy",
    "write_taxonomy",
]


class TaxonomyError(ValueError):
    """A taxonomy file or object is invalid, or labels do not fit it."""


@dataclass(frozen=True)
class Category:
    name: str
    parent: str
    description: str = ""


@dataclass(frozen=True)
class TaxonomyMapping:
    """How the categories of an earlier version translate into this one."""

    version: str
    mapping: Mapping[str, str]


@dataclass(frozen=True)
class Taxonomy:
    """One version of a label taxonomy. Build it with :func:`parse_taxonomy` (which validates)."""

    version: str
    categories: tuple[Category, ...]
    protected: tuple[str, ...] = ()
    maps_from: TaxonomyMapping | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {c.name: i for i, c in enumerate(self.categories)})

    @property
    def names(self) -> tuple[str, ...]:
        """Fine category names, in file order."""
        return tuple(c.name for c in self.categories)

    @property
    def parents(self) -> dict[str, str]:
        """Fine category -> coarse parent."""
        return {c.name: c.parent for c in self.categories}

    @property
    def coarse_names(self) -> tuple[str, ...]:
        """Coarse parents, in order of first appearance."""
        return tuple(dict.fromkeys(c.parent for c in self.categories))

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __len__(self) -> int:
        return len(self.categories)

    def category(self, name: str) -> Category:
        try:
            return self.categories[self._index[name]]
        except KeyError:
            raise TaxonomyError(
                f"taxonomy {self.version}: no category {name!r}; expected one of "
                f"{', '.join(self.names)}"
            ) from None

    def parent_of(self, name: str) -> str:
        return self.category(name).parent

    def unknown(self, labels: Iterable[str]) -> list[str]:
        """The labels (sorted, unique) that are not categories of this taxonomy."""
        return sorted({str(x) for x in labels} - set(self._index))

    def as_dict(self) -> dict[str, Any]:
        """The YAML document, as plain data."""
        out: dict[str, Any] = {
            "version": self.version,
            "categories": [
                {"name": c.name, "parent": c.parent, "description": c.description}
                for c in self.categories
            ],
            "protected": list(self.protected),
        }
        if self.maps_from is not None:
            out["maps_from"] = {
                "version": self.maps_from.version,
                "mapping": dict(self.maps_from.mapping),
            }
        return out


def _text(raw: Any, what: str, where: str) -> str:
    if not isinstance(raw, str | int | float) or isinstance(raw, bool) or str(raw).strip() == "":
        raise TaxonomyError(f"{where}: {what} must be a non-empty string, got {raw!r}")
    return str(raw).strip()


def parse_taxonomy(raw: Any, *, source: str = "taxonomy") -> Taxonomy:
    """Validate the plain data of a taxonomy document (see the module docstring) into one.

    Errors (:class:`TaxonomyError`, naming ``source``): a missing version, no categories, a
    category without a name or parent, a duplicate category, a protected name that is not a
    category, or a malformed ``maps_from``.
    """
    if not isinstance(raw, Mapping):
        raise TaxonomyError(
            f"{source}: expected a mapping with version, categories and protected, got "
            f"{type(raw).__name__}"
        )
    if "version" not in raw:
        raise TaxonomyError(f"{source}: missing 'version' (e.g. version: v1)")
    version = _text(raw["version"], "version", source)
    where = f"{source} (version {version})"
    items = raw.get("categories")
    if not isinstance(items, list) or not items:
        raise TaxonomyError(f"{where}: 'categories' must be a non-empty list of categories")
    categories: list[Category] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise TaxonomyError(
                f"{where}: category #{i + 1} must be a mapping with name, parent and "
                f"description, got {item!r}"
            )
        if "name" not in item:
            raise TaxonomyError(f"{where}: category #{i + 1} has no name")
        name = _text(item["name"], f"category #{i + 1}'s name", where)
        if item.get("parent") is None:
            raise TaxonomyError(f"{where}: category {name!r} has no parent")
        parent = _text(item["parent"], f"category {name!r}'s parent", where)
        description = item.get("description") or ""
        if not isinstance(description, str):
            raise TaxonomyError(f"{where}: category {name!r}'s description must be a string")
        if name in seen:
            raise TaxonomyError(f"{where}: duplicate category {name!r}")
        seen.add(name)
        categories.append(Category(name, parent, description.strip()))
    protected_raw = raw.get("protected") or []
    if not isinstance(protected_raw, list):
        raise TaxonomyError(f"{where}: 'protected' must be a list of category names")
    protected = tuple(_text(p, "a protected name", where) for p in protected_raw)
    unknown = sorted(set(protected) - seen)
    if unknown:
        raise TaxonomyError(f"{where}: protected {unknown} are not categories")
    if len(set(protected)) != len(protected):
        raise TaxonomyError(f"{where}: 'protected' lists a category twice")
    maps_from = None
    if raw.get("maps_from") is not None:
        maps_from = _parse_maps_from(raw["maps_from"], seen, where)
        if maps_from.version == version:
            raise TaxonomyError(f"{where}: maps_from.version must differ from version")
    return Taxonomy(version, tuple(categories), protected, maps_from)


def _parse_maps_from(raw: Any, names: set[str], where: str) -> TaxonomyMapping:
    if not isinstance(raw, Mapping) or "version" not in raw:
        raise TaxonomyError(
            f"{where}: maps_from must be a mapping with 'version' and 'mapping', got {raw!r}"
        )
    mapping = raw.get("mapping") or {}
    if not isinstance(mapping, Mapping):
        raise TaxonomyError(f"{where}: maps_from.mapping must map old names to new names")
    clean = {
        _text(k, "a maps_from key", where): _text(v, "a maps_from value", where)
        for k, v in mapping.items()
    }
    targets = sorted(set(clean.values()) - names)
    if targets:
        raise TaxonomyError(f"{where}: maps_from.mapping maps to {targets}, not categories")
    return TaxonomyMapping(_text(raw["version"], "maps_from.version", where), clean)


def load_taxonomy(path: str | os.PathLike[str]) -> Taxonomy:
    """Read and validate a taxonomy YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise TaxonomyError(f"{path}: cannot read the taxonomy: {exc.strerror or exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{path}: not valid YAML: {exc}") from None
    return parse_taxonomy(raw, source=str(path))


def write_taxonomy(taxonomy: Taxonomy, path: str | os.PathLike[str], *, header: str = "") -> Path:
    """Write ``taxonomy`` as YAML (temporary file, then rename) and return the path.

    ``header`` lines are written first as ``#`` comments.
    """
    path = Path(path)
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines())
    body = yaml.safe_dump(
        taxonomy.as_dict(), sort_keys=False, allow_unicode=True, width=100, default_flow_style=False
    )
    return write_text_atomic(path, comment + body)


def _translation(source: Taxonomy, target: Taxonomy) -> dict[str, str]:
    """Every category of ``source`` -> its category in ``target``."""
    if source.version == target.version:
        if source.names != target.names:
            raise TaxonomyError(f"two different taxonomies both claim version {source.version!r}")
        return {n: n for n in source.names}
    if target.maps_from is None or target.maps_from.version != source.version:
        declared = target.maps_from.version if target.maps_from else "nothing"
        raise TaxonomyError(
            f"taxonomy {target.version} does not map from {source.version} (it maps from "
            f"{declared}); expected maps_from.version: {source.version}"
        )
    mapping = dict(target.maps_from.mapping)
    stale = sorted(set(mapping) - set(source.names))
    if stale:
        raise TaxonomyError(
            f"taxonomy {target.version}: maps_from lists {stale}, which are not categories of "
            f"{source.version}"
        )
    out = {n: mapping.get(n, n) for n in source.names}
    lost = sorted(n for n, m in out.items() if m not in target)
    if lost:
        raise TaxonomyError(
            f"taxonomy {target.version}: categories {lost} of {source.version} are neither "
            "mapped by maps_from nor categories of the new version"
        )
    return out


def convert_labels(
    labels: pl.Series | Sequence[str], source: Taxonomy, target: Taxonomy
) -> pl.Series:
    """Labels of ``source`` translated into ``target`` (through ``target.maps_from``)."""
    series = labels if isinstance(labels, pl.Series) else pl.Series("label", list(labels))
    series = series.cast(pl.String)
    unknown = source.unknown(series.drop_nulls().unique().to_list())
    if unknown:
        raise TaxonomyError(
            f"labels {unknown[:10]} are not categories of taxonomy {source.version}"
        )
    return series.replace_strict(_translation(source, target), return_dtype=pl.String)


def convert_annotations(
    annotations: pl.DataFrame, source: Taxonomy, target: Taxonomy, *, label: str = "label"
) -> pl.DataFrame:
    """An annotation table with its ``label`` column translated from ``source`` to ``target``."""
    if label not in annotations.columns:
        raise TaxonomyError(
            f"annotations have no {label!r} column; columns are {annotations.columns}"
        )
    return annotations.with_columns(convert_labels(annotations[label], source, target).alias(label))

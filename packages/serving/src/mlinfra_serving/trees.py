"""A CatBoost binary classifier's oblivious trees evaluated in NumPy, for small requests.

CatBoost's ``predict_proba`` costs 50-150 us per call before it evaluates a tree (building the
``Pool``, checking the input, setting up its executor), which is most of a one-customer request.
:class:`CompiledTrees` reads the model's trees once (CatBoost's JSON export) and scores rows with
a handful of array operations:

* **float splits** (``value > border``, in float32 as CatBoost compares them; a NaN goes the way
  the feature's ``nan_value_treatment`` says) are computed here;
* **categorical splits** (one-hot and CTRs over categorical values only) depend on nothing but
  the row's categorical values, so their bits are taken from CatBoost itself: one
  ``calc_leaf_indexes`` call per distinct combination of categorical values, cached. CatBoost's
  hashing and CTR tables are never reimplemented.

A leaf index is the sum of a tree's split bits (``bit d << d``); the raw value is the sum of the
trees' leaf values, scaled and biased, and the probability its sigmoid, as CatBoost's
``Logloss``. :func:`compile_trees` returns ``None`` (with the reason) for anything else (text or
embedding features, CTRs that combine float splits, multi-class, another loss) and the caller
keeps CatBoost's own path. Before it is used, the compiled model must reproduce CatBoost's
probabilities on probe rows at every border, either side of it and NaN (within 1e-12).
"""

from __future__ import annotations

import json
import math
import tempfile
import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["CompiledTrees", "compile_trees"]

_CAT_SPLITS = frozenset({"OneHotFeature", "OnlineCtr"})
_CAT_ELEMENTS = frozenset({"cat_feature_value", "cat_feature_exact_value"})
_LOSSES = frozenset({"Logloss", "CrossEntropy"})
#: Distinct categorical combinations kept; beyond it the cache starts afresh.
_CACHE_SIZE = 4096
_TOLERANCE = 1e-12


@dataclass
class CompiledTrees:
    """See the module docstring. ``float_columns``/``cat_columns``: positions of the model's
    float and categorical features in the caller's feature list."""

    booster: Any
    n_features: int
    float_columns: list[int]
    cat_columns: list[int]
    split_feature: np.ndarray  # (S,) index into float_columns
    split_border: np.ndarray  # (S,) float32
    split_nan_true: np.ndarray  # (S,) bool: a NaN takes the split
    split_weights: np.ndarray  # (S, T): 2**depth in the split's tree
    cat_positions: np.ndarray  # (T,) bits of each tree's categorical splits
    leaf_offsets: np.ndarray  # (T,)
    leaf_values: np.ndarray  # (L,)
    scale: float
    bias: float
    _cat_bits: dict[tuple[str, ...], np.ndarray] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        # The same trees as plain Python lists, for one row at a time (see :meth:`probability`).
        trees: list[list[tuple[int, float, bool, int]]] = [[] for _ in self.leaf_offsets]
        for s, tree in enumerate(self.split_weights.argmax(axis=1).tolist()):
            trees[tree].append(
                (
                    int(self.split_feature[s]),
                    float(self.split_border[s]),
                    bool(self.split_nan_true[s]),
                    int(self.split_weights[s, tree]),
                )
            )
        self._trees = list(zip(self.leaf_offsets.tolist(), trees, strict=True))
        self._leaves: list[float] = self.leaf_values.tolist()

    def probability(self, floats: Sequence[float], cats: tuple[str, ...]) -> float:
        """P(class 1) of one row: the same arithmetic in plain Python, which costs less than
        the array operations' dispatch for a single row. ``floats`` may be doubles (NaN for
        missing); they are rounded to float32 as CatBoost rounds them."""
        x = array("f", floats).tolist()
        cat_bits = self._categorical_bits(cats).tolist() if self.cat_positions.any() else None
        leaves = self._leaves
        total = 0.0
        for t, (offset, splits) in enumerate(self._trees):
            index = cat_bits[t] if cat_bits is not None else 0
            for feature, border, nan_true, weight in splits:
                value = x[feature]
                if value > border or (nan_true and math.isnan(value)):
                    index |= weight
            total += leaves[offset + index]
        return 1.0 / (1.0 + math.exp(-(total * self.scale + self.bias)))

    def probabilities(self, floats: np.ndarray, cats: Sequence[tuple[str, ...]]) -> np.ndarray:
        """P(class 1) of rows given as a float32 matrix (``float_columns`` order, NaN for
        missing) and, per row, its categorical values (``cat_columns`` order)."""
        bits = floats[:, self.split_feature] > self.split_border
        if self.split_nan_true.any():
            bits |= np.isnan(floats[:, self.split_feature]) & self.split_nan_true
        index = (bits @ self.split_weights).astype(np.int64)
        if self.cat_positions.any():
            index |= np.stack([self._categorical_bits(c) for c in cats])
        raw = self.leaf_values[index + self.leaf_offsets].sum(axis=1) * self.scale + self.bias
        return np.asarray(1.0 / (1.0 + np.exp(-raw)))

    def _categorical_bits(self, values: tuple[str, ...]) -> np.ndarray:
        bits = self._cat_bits.get(values)
        if bits is None:
            from catboost import Pool

            row: list[Any] = [0.0] * self.n_features
            for column, value in zip(self.cat_columns, values, strict=True):
                row[column] = value
            pool = Pool([row], cat_features=self.cat_columns)
            leaves = self.booster.calc_leaf_indexes(pool, thread_count=1)[0]
            bits = np.asarray(leaves, dtype=np.int64) & self.cat_positions
            with self._lock:
                if len(self._cat_bits) >= _CACHE_SIZE:
                    self._cat_bits.clear()
                self._cat_bits[values] = bits
        return bits


def _json(booster: Any) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mlinfra-trees-") as tmp:
        path = Path(tmp) / "model.json"
        booster.save_model(str(path), format="json")
        data: dict[str, Any] = json.loads(path.read_text())
        return data


def compile_trees(booster: Any, features: Sequence[str]) -> tuple[CompiledTrees | None, str]:
    """The compiled trees of ``booster`` (trained on ``features`` in this order), or ``None``
    and why it keeps CatBoost's own path."""
    params = booster.get_all_params()
    if params.get("loss_function") not in _LOSSES:
        return None, f"loss {params.get('loss_function')!r} is not one of {sorted(_LOSSES)}"
    try:
        model = _json(booster)
    except Exception as exc:  # CatBoost can't export every model as JSON
        return None, f"CatBoost's JSON export failed ({type(exc).__name__}: {exc})"
    info = model.get("features_info", {})
    for kind in ("text_features", "embedding_features", "estimated_features"):
        if info.get(kind):
            return None, f"the model has {kind.replace('_', ' ')}"
    if "oblivious_trees" not in model:
        return None, "the trees are not oblivious"
    for ctr in info.get("ctrs", []):
        kinds = {e.get("combination_element") for e in ctr.get("elements", [])}
        if not kinds <= _CAT_ELEMENTS:
            return None, f"a CTR combines {sorted(k for k in kinds if k)}"
    floats = info.get("float_features", [])
    cats = info.get("categorical_features", [])
    flat = [f["flat_feature_index"] for f in floats] + [c["flat_feature_index"] for c in cats]
    if sorted(flat) != list(range(len(features))):
        return None, f"the model's {len(flat)} features are not the {len(features)} given"
    by_float = {f["feature_index"]: f for f in floats}
    trees = model["oblivious_trees"]
    split_feature: list[int] = []
    split_border: list[float] = []
    split_nan: list[bool] = []
    weight_rows: list[tuple[int, int]] = []
    cat_positions = np.zeros(len(trees), dtype=np.int64)
    leaf_offsets: list[int] = []
    leaf_values: list[float] = []
    for t, tree in enumerate(trees):
        values = tree["leaf_values"]
        if len(values) != 2 ** len(tree["splits"]):
            return None, "a tree has more than one value per leaf (not a binary classifier)"
        leaf_offsets.append(len(leaf_values))
        leaf_values.extend(values)
        for depth, split in enumerate(tree["splits"]):
            kind = split["split_type"]
            if kind in _CAT_SPLITS:
                cat_positions[t] |= 1 << depth
            elif kind == "FloatFeature":
                feature = by_float[split["float_feature_index"]]
                split_feature.append(split["float_feature_index"])
                split_border.append(split["border"])
                split_nan.append(feature.get("nan_value_treatment") == "AsTrue")
                weight_rows.append((t, 1 << depth))
            else:
                return None, f"split type {kind!r} is not supported"
    weights = np.zeros((len(weight_rows), len(trees)))
    for s, (t, w) in enumerate(weight_rows):
        weights[s, t] = w
    scale, bias = model.get("scale_and_bias", [1.0, [0.0]])
    if isinstance(bias, list):
        if len(bias) != 1:
            return None, "the model has more than one dimension"
        bias = bias[0]
    compiled = CompiledTrees(
        booster=booster,
        n_features=len(features),
        float_columns=[by_float[i]["flat_feature_index"] for i in sorted(by_float)],
        cat_columns=[c["flat_feature_index"] for c in cats],
        split_feature=np.asarray(split_feature, dtype=np.int64),
        split_border=np.asarray(split_border, dtype=np.float32),
        split_nan_true=np.asarray(split_nan, dtype=bool),
        split_weights=weights,
        cat_positions=cat_positions,
        leaf_offsets=np.asarray(leaf_offsets, dtype=np.int64),
        leaf_values=np.asarray(leaf_values, dtype=np.float64),
        scale=float(scale),
        bias=float(bias),
    )
    worst = _probe(compiled, by_float)
    if not worst <= _TOLERANCE:
        return None, f"the compiled trees differ from CatBoost by {worst:.3g} on probe rows"
    return compiled, "compiled"


def _probe(compiled: CompiledTrees, by_float: dict[int, dict[str, Any]]) -> float:
    """Largest difference to CatBoost's probabilities on rows at, around and between every
    border, with NaNs, and with the categorical value ``unknown``."""
    from catboost import Pool

    candidates = []
    for i in sorted(by_float):
        borders = np.asarray(by_float[i].get("borders", []), dtype=np.float32)
        with np.errstate(over="ignore"):  # a border at the float32 limit
            up = np.nextafter(borders, np.float32(np.inf))
            down = np.nextafter(borders, np.float32(-np.inf))
        extra = np.asarray([np.nan, 0.0, -1e30, 1e30], dtype=np.float32)
        candidates.append(np.concatenate([borders, up, down, extra]))
    n = max([len(c) for c in candidates] + [1]) * 3
    rng = np.random.default_rng(0)
    floats = np.empty((n, len(candidates)), dtype=np.float32)
    for j, values in enumerate(candidates):
        floats[:, j] = values[rng.integers(0, len(values), n)]
    cats = [("unknown",) * len(compiled.cat_columns)] * n
    rows: list[list[Any]] = [[0.0] * compiled.n_features for _ in range(n)]
    for r in range(n):
        for j, column in enumerate(compiled.float_columns):
            value = float(floats[r, j])
            rows[r][column] = value
        for column in compiled.cat_columns:
            rows[r][column] = "unknown"
    pool = Pool(rows, cat_features=compiled.cat_columns)
    expected = np.asarray(compiled.booster.predict_proba(pool, thread_count=1))[:, 1]
    got = compiled.probabilities(floats, cats)
    diff = np.abs(got - expected)
    if np.isnan(diff).any():
        return math.inf
    return float(diff.max()) if diff.size else 0.0

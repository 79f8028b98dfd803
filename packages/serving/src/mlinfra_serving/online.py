"""Online feature reads that are safe from any thread and cheap per request.

Feast's ``FeatureStore.get_online_features`` is the reference, but not the serving path:

* its SQLite online store keeps one connection per store object and shares it across threads
  (``check_same_thread=False``); concurrent calls from a thread pool fail
  (``sqlite3.InterfaceError``) or return another request's rows;
* it resolves the feature service through the registry and builds a response proto on every
  call, which costs more than the lookup itself.

:class:`OnlineFeatureReader` resolves the feature views once, at construction, and keeps
**one connection per thread**:

* SQLite: a read-only ``sqlite3`` connection per thread reading Feast's tables directly (one
  ``SELECT ... WHERE entity_key IN (...)`` per view, keys serialized as Feast serializes them,
  values decoded from Feast's value protos; timestamps converted once per entity, not once per
  value as Feast's reader does);
* Redis: Feast's own ``RedisOnlineStore.online_read`` (the same hashes ``materialize`` wrote),
  one store object, hence one Redis client, per thread.

Values are the ones Feast returns: the tests compare them with ``get_online_features`` under 64
concurrent requests, on both stores.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlinfra_features import FEATURE_SERVICES, FeatureStoreSettings, feature_store
from mlinfra_features.repo import ENTITIES, VIEWS

__all__ = ["OnlineFeatureReader", "OnlineRows", "OnlineStoreError"]

#: Feast's bound for INT64 entity keys.
MAX_ENTITY_ID = 2**63 - 1
_INT64 = struct.Struct("<q")
#: Entries of each of the reader's caches (statements, decoded values, timestamps); beyond it a
#: cache starts afresh.
_CACHE_SIZE = 65_536
_MISSING = object()


class OnlineStoreError(RuntimeError):
    """The online store cannot be read (no SQLite file or tables, Redis down, ...)."""


@dataclass(frozen=True)
class OnlineRows:
    """Feature values of one service for ``ids``, in the given order (None where missing)."""

    key: str
    ids: list[int]
    columns: dict[str, list[Any]]
    #: view -> per id: the event timestamp of the row the store holds, or None when it has none
    timestamps: dict[str, list[datetime | None]]

    def missing_views(self, i: int) -> list[str]:
        return [view for view, ts in self.timestamps.items() if ts[i] is None]

    def row(self, i: int, features: Sequence[str]) -> tuple[Any, ...]:
        return tuple(self.columns[f][i] for f in features)


def _timestamp(raw: Any) -> datetime | None:
    """Feast's SQLite ``event_ts`` (epoch seconds; ISO text in older stores) as UTC."""
    if raw is None:
        return None
    if isinstance(raw, (int, float)):
        return datetime.fromtimestamp(raw, UTC)
    parsed = datetime.fromisoformat(raw.decode() if isinstance(raw, bytes) else str(raw))
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _value(proto: Any) -> Any:
    kind = proto.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    return getattr(proto, kind)


class OnlineFeatureReader:
    """Reads the feature services' views from the configured online store (SQLite or Redis)."""

    def __init__(self, settings: FeatureStoreSettings, services: Sequence[str]) -> None:
        unknown = [s for s in services if s not in FEATURE_SERVICES]
        if unknown:
            raise LookupError(
                f"unknown feature service(s) {unknown}; expected some of {sorted(FEATURE_SERVICES)}"
            )
        self.settings = settings
        store = feature_store(settings)
        self._config = store.config
        names = sorted({v for s in services for v in FEATURE_SERVICES[s]})
        try:
            self._views = {name: store.get_feature_view(name) for name in names}
        except Exception as exc:  # Feast raises its own not-found errors
            raise OnlineStoreError(
                f"the feature repository under {settings.feast_dir} lacks view(s) {names} "
                f"({exc}); expected an applied repository (mlinfra_features.apply_repo)"
            ) from exc
        from feast.infra.online_stores.helpers import compute_table_id

        self._tables = {
            name: compute_table_id(settings.project, view) for name, view in self._views.items()
        }
        self._key_prefix: dict[str, bytes] = {}
        self._local = threading.local()
        # Shared by all threads: single dict reads and writes are atomic, and every value
        # cached is immutable.
        self._queries: dict[tuple[tuple[str, ...], int], str] = {}
        self._values: dict[bytes, Any] = {}
        self._stamps: dict[Any, datetime | None] = {}
        self._wanted: dict[tuple[str, ...], list[frozenset[str]]] = {}
        self._keys: dict[str, str] = {}

    def _online_store(self) -> Any:
        store = getattr(self._local, "store", None)
        if store is None:
            if self.settings.online_store == "redis":
                from feast.infra.online_stores.redis import RedisOnlineStore

                store = RedisOnlineStore()
            else:
                from feast.infra.online_stores.sqlite import SqliteOnlineStore

                store = SqliteOnlineStore()
            self._local.store = store
        return store

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            path = Path(self._config.online_store.path)
            if not path.is_file():
                raise OnlineStoreError(f"the SQLite online store {path} does not exist")
            conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=10.0)
            self._local.conn = conn
        return conn

    def _entity_key(self, key: str, entity_id: int) -> bytes:
        prefix = self._key_prefix.get(key)
        if prefix is None:
            from feast.infra.key_encoding_utils import serialize_entity_key
            from feast.protos.feast.types.EntityKey_pb2 import EntityKey
            from feast.protos.feast.types.Value_pb2 import Value

            def feast_key(i: int) -> bytes:
                proto = EntityKey(join_keys=[key], entity_values=[Value(int64_val=i)])
                version = self._config.entity_key_serialization_version
                return bytes(serialize_entity_key(proto, version))

            probe = feast_key(0x0102030405060708)
            prefix = probe[:-8]
            if probe != prefix + _INT64.pack(0x0102030405060708) or feast_key(-5) != (
                prefix + _INT64.pack(-5)
            ):
                raise RuntimeError("Feast's entity-key layout changed; update OnlineFeatureReader")
            self._key_prefix[key] = prefix
        return prefix + _INT64.pack(entity_id)

    def _query(self, views: tuple[str, ...], n: int) -> str:
        """One statement for all the views (``UNION ALL``) and ``n`` keys; cached by its shape,
        so that SQLite's statement cache sees the same text again."""
        query = self._queries.get((views, n))
        if query is None:
            marks = ",".join("?" * n)
            query = " UNION ALL ".join(
                f"SELECT {v}, entity_key, feature_name, value, event_ts "
                f'FROM "{self._tables[name]}" WHERE entity_key IN ({marks})'
                for v, name in enumerate(views)
            )
            if len(self._queries) >= _CACHE_SIZE:
                self._queries.clear()
            self._queries[(views, n)] = query
        return query

    def _decode(self, blob: bytes) -> Any:
        """A Feast value proto's value; scalars are cached by their bytes (they repeat)."""
        value = self._values.get(blob, _MISSING)
        if value is _MISSING:
            from feast.protos.feast.types.Value_pb2 import Value

            proto = Value.FromString(blob)
            value = _value(proto)
            kind = proto.WhichOneof("val")
            if kind is None or not kind.endswith("_list_val"):  # immutable: safe to share
                if len(self._values) >= _CACHE_SIZE:
                    self._values.clear()
                self._values[blob] = value
        return value

    def _stamp(self, raw: Any) -> datetime | None:
        try:
            return self._stamps[raw]
        except KeyError:  # one lookup: another thread may clear the cache in between
            pass
        stamp = _timestamp(raw)
        if len(self._stamps) >= _CACHE_SIZE:
            self._stamps.clear()
        self._stamps[raw] = stamp
        return stamp

    def _read_sqlite(
        self, key: str, views: dict[str, list[str]], ids: list[int]
    ) -> tuple[dict[str, list[Any]], dict[str, list[datetime | None]]]:
        """One statement for all the service's views (``UNION ALL``), one round trip.

        It reads every feature of the entities' rows and keeps the service's: cheaper in
        SQLite than a second ``IN`` on the feature name (one index range per key instead of one
        search per key and feature)."""
        conn = self._connection()
        names = tuple(views)
        wanted = self._wanted.get(names)
        if wanted is None:
            wanted = self._wanted[names] = [frozenset(views[name]) for name in names]
        prefix = self._key_prefix.get(key) or self._entity_key(key, 0)[:-8]
        pack = _INT64.pack
        if len(ids) == 1:
            keys = [prefix + pack(ids[0])]
            unique = True
        else:
            keys = list(dict.fromkeys([prefix + pack(i) for i in ids]))
            unique = len(keys) == len(ids)
        position = {k: n for n, k in enumerate(keys)}
        values: list[list[dict[str, Any] | None]] = [[None] * len(keys) for _ in names]
        stamps: list[list[Any]] = [[None] * len(keys) for _ in names]
        decode = self._decode
        for v, entity_key, feature, blob, ts in conn.execute(
            self._query(names, len(keys)), keys * len(names)
        ):
            if feature not in wanted[v]:
                continue
            n = position[entity_key]
            found = values[v][n]
            if found is None:
                found = values[v][n] = {}
                stamps[v][n] = ts
            found[feature] = decode(blob)
        index = None if unique else [position[prefix + pack(i)] for i in ids]
        columns: dict[str, list[Any]] = {}
        timestamps: dict[str, list[datetime | None]] = {}
        stamp = self._stamp
        for v, name in enumerate(names):
            rows = values[v] if index is None else [values[v][n] for n in index]
            raw = stamps[v] if index is None else [stamps[v][n] for n in index]
            timestamps[name] = [stamp(ts) for ts in raw]
            for feature in views[name]:
                columns[feature] = [r.get(feature) if r is not None else None for r in rows]
        return columns, timestamps

    def _read_feast(
        self, key: str, views: dict[str, list[str]], ids: list[int]
    ) -> tuple[dict[str, list[Any]], dict[str, list[datetime | None]]]:
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        keys = [EntityKey(join_keys=[key], entity_values=[Value(int64_val=i)]) for i in ids]
        store = self._online_store()
        columns: dict[str, list[Any]] = {}
        timestamps: dict[str, list[datetime | None]] = {}
        for view, features in views.items():
            # a copy: Feast's Redis reader appends its timestamp field to the list it gets
            rows = store.online_read(self._config, self._views[view], keys, list(features))
            # Redis answers a key it lacks with empty values stamped at the epoch
            timestamps[view] = [
                ts if values is not None and ts is not None and ts.timestamp() > 0 else None
                for ts, values in rows
            ]
            for feature in features:
                columns[feature] = [
                    _value(values[feature]) if values and feature in values else None
                    for _, values in rows
                ]
        return columns, timestamps

    def read(self, service: str, ids: Sequence[int]) -> OnlineRows:
        """The service's features for ``ids`` (one row per id, duplicates allowed)."""
        selection = FEATURE_SERVICES[service]
        key = self._keys.get(service)
        if key is None:
            entity = {VIEWS[v].entity for v in selection}
            if len(entity) != 1:
                raise ValueError(f"feature service {service!r} spans several entities {entity}")
            key = self._keys[service] = ENTITIES[entity.pop()][0]
        ids = [int(i) for i in ids]
        if self.settings.online_store == "sqlite":
            columns, timestamps = self._read_sqlite(key, selection, ids)
        else:
            columns, timestamps = self._read_feast(key, selection, ids)
        return OnlineRows(key=key, ids=ids, columns=columns, timestamps=timestamps)

    def ping(self) -> None:
        """Raise :class:`OnlineStoreError` unless every view's table or hashes can be read."""
        if self.settings.online_store == "sqlite":
            conn = self._connection()
            for name, table in self._tables.items():
                try:
                    conn.execute(f'SELECT 1 FROM "{table}" LIMIT 1').fetchall()
                except sqlite3.Error as exc:
                    raise OnlineStoreError(
                        f"online store (sqlite) view {name!r} unreadable: {exc}"
                    ) from exc
            return
        from feast.protos.feast.types.EntityKey_pb2 import EntityKey
        from feast.protos.feast.types.Value_pb2 import Value

        store = self._online_store()
        for name, view in self._views.items():
            key = ENTITIES[VIEWS[name].entity][0]
            probe = EntityKey(join_keys=[key], entity_values=[Value(int64_val=-1)])
            try:
                store.online_read(self._config, view, [probe], None)
            except Exception as exc:
                raise OnlineStoreError(
                    f"online store (redis) view {name!r} unreadable: {exc}"
                ) from exc

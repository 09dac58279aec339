"""The names a dataset's objects get in the merge database (docs/concepts.md and docs/consumers.md), in one place.

In a platform's schema, dataset `D` of store `S` owns the relations (tables, views, indexes) and
functions named `<s>_<d>` and `<s>_<d>` + one of SUFFIXES, all in lower case: its table, the views
`_current` and `_history`, the functions `_as_of` and `_as_of_batch`, and the table's indexes. Every
other object the job creates there (the ledger `ds_batches`, `ds_batch_datasets`, `ds_runs`, staging and
temporary tables) starts with RESERVED_PREFIX. Two guarantees keep the two sets apart and every name
unique, checked by the model validator:

- no store is named `ds` or `ds_…` (any case): `<s>_<d>` then never starts with `ds_` — the store name
  comes first and is followed by `_`, so no other reservation (of dataset names, say) is needed;
- no two datasets share any of these names, compared in lower case after PostgreSQL's cut at 63 bytes.

A workspace (docs/consumers.md) gets its own schema `ws_<workspace>` holding views and functions of the same
names plus `batches`, which no dataset name can take (every dataset name holds the `_` after the store).
"""

from __future__ import annotations

import hashlib
from typing import NamedTuple

IDENTIFIER_MAX = 63  # PostgreSQL's NAMEDATALEN - 1 (bytes; the model's names are ASCII)
RESERVED_PREFIX = "ds_"
WORKSPACE_PREFIX = "ws_"

CURRENT = "_current"
HISTORY = "_history"
AS_OF = "_as_of"
AS_OF_BATCH = "_as_of_batch"
PRIMARY_KEY_INDEX = "_pkey"  # PostgreSQL's own name for the table's primary-key index
CURRENT_INDEX = "_one_current"  # forensic: the unique index of current versions
BATCH_INDEX = "_by_batch"  # forensic: the index on (ds_batch_out, ds_batch_in) of the as-of queries
SUFFIXES = (CURRENT, HISTORY, AS_OF, AS_OF_BATCH, PRIMARY_KEY_INDEX, CURRENT_INDEX, BATCH_INDEX)


def is_reserved(name: str) -> bool:
    """True for a store name the merge schema keeps for the job's own objects (`ds`, `ds_…`, any case)."""
    lower = name.lower()
    return lower == RESERVED_PREFIX[:-1] or lower.startswith(RESERVED_PREFIX)


def workspace_schema(workspace: str) -> str:
    """The schema of a workspace (docs/consumers.md): `ws_<name in lower case>`."""
    return f"{WORKSPACE_PREFIX}{workspace.lower()}"


class DatasetNames(NamedTuple):
    """The names of one dataset's objects in a platform (or workspace) schema."""

    table: str  # `<store>_<dataset>` in lower case

    @property
    def current(self) -> str:
        return self.table + CURRENT

    @property
    def history(self) -> str:
        return self.table + HISTORY

    @property
    def as_of(self) -> str:
        return self.table + AS_OF

    @property
    def as_of_batch(self) -> str:
        return self.table + AS_OF_BATCH

    @property
    def primary_key_index(self) -> str:
        return self.table + PRIMARY_KEY_INDEX

    @property
    def current_index(self) -> str:
        """`<table>_one_current`; when that is too long, a cut of the table name and a hash of it."""
        return self._index(CURRENT_INDEX)

    @property
    def batch_index(self) -> str:
        """`<table>_by_batch`, cut like current_index."""
        return self._index(BATCH_INDEX)

    def _index(self, suffix: str) -> str:
        name = self.table + suffix
        if len(name) > IDENTIFIER_MAX:
            digest = hashlib.sha1(self.table.encode()).hexdigest()[:6]
            name = f"{self.table[:48]}_{digest}{suffix}"[:IDENTIFIER_MAX]
        return name

    def owned(self) -> dict[str, str]:
        """Each name the dataset owns, as PostgreSQL stores it (cut at 63 bytes) -> what it is."""
        named = {
            self.table: "table", self.current: "view", self.history: "history view",
            self.as_of: "as-of function", self.as_of_batch: "as-of-batch function",
            self.primary_key_index: "primary-key index", self.current_index: "current-version index",
            self.batch_index: "as-of index",
        }
        owned: dict[str, str] = {}
        for name, what in named.items():
            owned.setdefault(name[:IDENTIFIER_MAX], what)  # a name too long for PostgreSQL is cut
        return owned


def dataset_names(store: str, dataset: str) -> DatasetNames:
    """The names of dataset `dataset` of store `store` (docs/concepts.md: `<store>_<dataset>` in lower case)."""
    return DatasetNames(f"{store}_{dataset}".lower())

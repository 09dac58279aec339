"""The validated, immutable form of `datasurface.yaml` (docs/model.md)."""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

from datasurface.errors import DataSurfaceError
from datasurface.model.names import workspace_schema

# The kinds of source a store reads: the model accepts these, the source dispatch opens each
# (ingest/sources.py) and the simulator drives each (docs/sources.md).
SourceType = Literal["postgres", "mysql"]
SOURCE_TYPES: tuple[SourceType, ...] = get_args(SourceType)
# whole snapshots, or changes from a PostgreSQL replication slot
Ingestion = Literal["snapshot", "cdc"]
INGESTIONS: tuple[Ingestion, ...] = get_args(Ingestion)
# one stream (one batch) for all the store's datasets, or one per dataset
Consistency = Literal["multi_dataset", "single_dataset"]
CONSISTENCIES: tuple[Consistency, ...] = get_args(Consistency)


class Column(NamedTuple):
    name: str
    # normalised PostgreSQL spelling, lower case: "varchar(20)", "numeric(10,2)", "double precision"
    type: str
    nullable: bool = True
    source: str | None = None  # the source column's exact name, when it is not `name`

    @property
    def source_name(self) -> str:
        return self.name if self.source is None else self.source


class Dataset(NamedTuple):
    name: str
    table: str
    primary_key: tuple[str, ...]
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(name)

    @property
    def non_key_columns(self) -> tuple[Column, ...]:
        return tuple(c for c in self.columns if c.name not in self.primary_key)


class Source(NamedTuple):
    host: str
    port: int
    database: str
    schema: str
    credential: str
    type: SourceType = "postgres"
    ingestion: Ingestion = "snapshot"
    publication: str = ""  # cdc: the publication the slot decodes (default ds_<store lower>)


class Store(NamedTuple):
    name: str
    consistency: Consistency
    source: Source
    datasets: tuple[Dataset, ...]

    def dataset(self, name: str) -> Dataset:
        for d in self.datasets:
            if d.name == name:
                return d
        raise KeyError(name)


class WorkspaceDataset(NamedTuple):
    store: str
    dataset: str


class Workspace(NamedTuple):
    """A consumer (docs/consumers.md): reads the listed datasets of one platform, as an existing role."""

    name: str
    platform: str
    role: str
    datasets: tuple[WorkspaceDataset, ...]

    @property
    def schema(self) -> str:
        return workspace_schema(self.name)


class Model(NamedTuple):
    stores: tuple[Store, ...]
    origin: str = ""  # where it was loaded from, for messages
    workspaces: tuple[Workspace, ...] = ()

    def store(self, name: str) -> Store:
        for s in self.stores:
            if s.name == name:
                return s
        raise KeyError(name)


def find_store(model: Model, name: str) -> Store:
    """The store a command names; one line listing the model's stores when there is none of that name."""
    try:
        return model.store(name)
    except KeyError:
        known = ", ".join(s.name for s in model.stores)
        raise DataSurfaceError(f"unknown store {name!r} (the model has: {known})") from None

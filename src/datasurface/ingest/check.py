"""The source check every dialect shares: before anything is read or written, each dataset's source table
must exist and hold every column of the model in a type that holds exactly the model type's values. How a
dialect reads its catalog and which of its types match is its own (`<dialect>/check.py`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

from datasurface.errors import DataSurfaceError
from datasurface.model import Column, Dataset, Store

T = TypeVar("T")


class SourceMismatchError(DataSurfaceError):
    """The source table does not match the model."""


def table_where(store: Store, container: str, dataset: Dataset) -> str:
    """The source table in messages; `container` is its schema (PostgreSQL) or database (MySQL)."""
    return f"source table {container}.{dataset.table} (store {store.name}, dataset {dataset.name})"


def missing_table(where: str, database: str) -> SourceMismatchError:
    return SourceMismatchError(f"{where} does not exist in database {database!r}")


def check_columns(where: str, dataset: Dataset, found: Mapping[str, T],
                  mismatch: Callable[[Column, T], str | None]) -> None:
    """Refuse, in one line naming every problem, a model column the source lacks or holds in a type
    `mismatch` explains (it returns None for a type that matches)."""
    problems = []
    for col in dataset.columns:
        actual = found.get(col.source_name)
        if actual is None:
            named = "" if col.source is None else f" (source name {col.source!r})"
            problems.append(f"column {col.name!r}{named} (model type {col.type}) is missing from the source")
        elif (problem := mismatch(col, actual)) is not None:
            problems.append(problem)
    if problems:
        raise SourceMismatchError(f"{where}: {'; '.join(problems)}")

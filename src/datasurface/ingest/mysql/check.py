"""The source check of a MySQL / MariaDB source: SQLAlchemy reflection (tables, columns, types) against the
model, with the type mapping of `types`; a table must be InnoDB (the only engine with a consistent snapshot)."""

from __future__ import annotations

from typing import Any

from datasurface.errors import DatabaseError, DataSurfaceError
from datasurface.ingest.check import SourceMismatchError, check_columns, missing_table, table_where
from datasurface.ingest.mysql import types
from datasurface.model import Column, Dataset, Store
from datasurface.mysqldb import driver_message


def check_dataset(conn: Any, store: Store, dataset: Dataset, mariadb: bool) -> dict[str, types.MySqlType]:
    """Refuse a source table that does not match the model; else its columns' source types, by name.
    `conn`: an SQLAlchemy Connection."""
    from sqlalchemy import inspect, text

    db = store.source.database
    where = table_where(store, db, dataset)
    try:
        insp = inspect(conn)
        if not insp.has_table(dataset.table, schema=db):
            raise missing_table(where, db)
        json_cols = _mariadb_json_columns(conn, db, dataset.table) if mariadb else set()
        # SQLAlchemy reads names from SHOW CREATE TABLE, where a backtick in a name is doubled
        columns = [(c["name"].replace("``", "`"), c["type"]) for c in insp.get_columns(dataset.table, schema=db)]
        reflected = {name: types.from_sqlalchemy(sa_type, json=name in json_cols) for name, sa_type in columns}
        engine = conn.execute(text(
            "SELECT engine FROM information_schema.tables WHERE table_schema = :db AND table_name = :t"),
            {"db": db, "t": dataset.table}).scalar()
    except DataSurfaceError:
        raise
    except Exception as exc:
        raise DatabaseError(f"{where}: cannot read its definition: {driver_message(exc)}") from exc
    if engine is not None and str(engine).lower() != "innodb":
        raise SourceMismatchError(f"{where} uses storage engine {engine}, which has no consistent snapshot; "
                                  "only InnoDB tables (or views over them) can be read")
    check_columns(where, dataset, reflected, _mismatch)
    return reflected


def _mismatch(col: Column, actual: types.MySqlType) -> str | None:
    if types.accepts(col.type, actual):
        return None
    return (f"column {col.name!r} is {actual} in the source but {col.type} in the model, and {actual} does not "
            f"hold exactly the values of {col.type} (a {col.type} column reads {types.accepted_for(col.type)})")


def _mariadb_json_columns(conn: Any, database: str, table: str) -> set[str]:
    """MariaDB's JSON is a longtext with a `json_valid(col)` check; MySQL's is a type of its own."""
    from sqlalchemy import text

    clauses = conn.execute(text(
        "SELECT check_clause FROM information_schema.check_constraints "
        "WHERE constraint_schema = :db AND table_name = :t"), {"db": database, "t": table})
    found = set()
    for (clause,) in clauses:
        c = str(clause).strip().replace(" ", "")
        if c.startswith("json_valid(`") and c.endswith("`)"):
            found.add(c[len("json_valid(`"):-2].replace("``", "`"))
    return found

"""Where `simulate` writes: the command's flags, or a store of the model (`--model ... --store NAME`).

With a store, the source type, host, port, database, schema and credential name are the store's source
(the model is loaded as `merge` loads it: a local folder or a git URL at a ref); a flag given as well
overrides the model's value. Without one, `--host`, `--database` and `--credential` are required.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasurface.errors import UsageError
from datasurface.model import Store
from datasurface.simulator.tables import TABLES

DEFAULT_SCHEMA = "public"


@dataclass(frozen=True)
class Target:
    db_type: str
    host: str
    port: int | None  # None: the backend's default
    database: str
    credential: str
    schema: str | None = None  # PostgreSQL: the schema the tables live in (None: the search_path's first)


@dataclass(frozen=True)
class ModelRef:
    model: str
    store: str
    ref: str | None = None
    path: str = "datasurface.yaml"


def resolve_target(*, model: ModelRef | None, db_type: str | None, host: str | None, port: int | None,
                   database: str | None, credential: str | None) -> Target:
    """The database to simulate on; UsageError (one line) for what is missing or cannot be driven."""
    if model is None:
        missing = [flag for flag, value in (("--host", host), ("--database", database),
                                            ("--credential", credential)) if not value]
        if missing:
            raise UsageError(f"simulate needs {', '.join(missing)} (or --model and --store to take them from "
                             "a store of the model)")
        assert host and database and credential
        return Target(db_type or "postgres", host, port, database, credential)
    store = _store(model)
    src = store.source
    if db_type is not None and db_type != src.type:
        raise UsageError(f"--db-type {db_type}: store {store.name!r} of the model reads a {src.type} source")
    tables = {t.name for t in TABLES}
    if not any(d.table in tables for d in store.datasets):
        raise UsageError(f"store {store.name!r} reads none of the simulator's tables ({', '.join(sorted(tables))}): "
                         f"it has {', '.join(d.table for d in store.datasets)}")
    schema = src.schema if src.type == "postgres" and src.schema != DEFAULT_SCHEMA else None
    return Target(src.type, host or src.host, port if port is not None else src.port, database or src.database,
                  credential or src.credential, schema)


def _store(ref: ModelRef) -> Store:
    from datasurface.model import find_store, load_model

    if not ref.store:
        raise UsageError("--model needs --store: the store whose source the simulator changes")
    return find_store(load_model(ref.model, ref.ref, ref.path), ref.store)

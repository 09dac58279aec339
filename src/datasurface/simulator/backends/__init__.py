"""The simulator's backends, one module per database type; `base` is what they all implement."""

from __future__ import annotations

from datasurface.errors import UsageError
from datasurface.model.schema import SOURCE_TYPES
from datasurface.simulator.backends.base import Backend


def backend_for(db_type: str) -> Backend:
    if db_type == "postgres":
        from datasurface.simulator.backends.postgres import POSTGRES

        return POSTGRES
    if db_type == "mysql":
        from datasurface.simulator.backends.mysql import MYSQL

        return MYSQL
    raise UsageError(f"--db-type {db_type}: must be one of {', '.join(SOURCE_TYPES)}")

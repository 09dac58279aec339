"""Helpers of the change data capture tests: sources that allow it, and changes applied row by row."""

from __future__ import annotations

from typing import Any

from psycopg2 import sql

from tests.support.engine import DATASETS


def allow_replication(dbs: Any) -> None:
    """The source role may read replication slots (the one grant change data capture needs)."""
    conn = dbs.server.admin_connect()
    with conn.cursor() as cur:
        cur.execute(sql.SQL("ALTER ROLE {} REPLICATION").format(sql.Identifier(dbs.env["SOURCE_USER"])))
    conn.close()


def drop_slots(dbs: Any) -> None:
    """Slots belong to the server, not to the test's databases: drop the ones the test's runs created."""
    conn = dbs.server.admin_connect()
    with conn.cursor() as cur:
        cur.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = %s",
                    (dbs.source,))
    conn.close()


def cdc_model(doc: dict[str, Any], **source: Any) -> dict[str, Any]:
    for store in doc["stores"]:
        store["source"].update({"ingestion": "cdc", **source})
    return doc


def apply_as_changes(conn: Any, prev: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]],
                     snap: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]], transactions: int = 3) -> None:
    """Turn the source from `prev` into `snap` with row-level statements spread over a few transactions:
    deletes, updates (some first to another value, then back or on), inserts."""
    statements: list[tuple[str, tuple[Any, ...]]] = []
    for name, rows in snap.items():
        cols, key = DATASETS[name]
        names = [c for c, _ in cols]
        before = prev.get(name, {})
        where = " AND ".join(f'"{k}" = %s' for k in key)
        for k in before:
            if k not in rows:
                statements.append((f'DELETE FROM "{name}" WHERE {where}', k))
        for k, row in rows.items():
            if k in before and before[k] != row:
                sets = ", ".join(f'"{c}" = %s' for c in names[len(key):])
                statements.append((f'UPDATE "{name}" SET {sets} WHERE {where}', (*row[len(key):], *k)))
            elif k not in before:
                marks = ", ".join(["%s"] * len(names))
                quoted = ", ".join(f'"{c}"' for c in names)
                statements.append((f'INSERT INTO "{name}" ({quoted}) VALUES ({marks})', row))
    step = max(1, len(statements) // transactions + 1)
    with conn.cursor() as cur:
        for i, (statement, params) in enumerate(statements):
            cur.execute(statement, params)
            if (i + 1) % step == 0:
                conn.commit()
    conn.commit()

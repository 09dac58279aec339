"""The simulator's source tables (contract §3), their id sequence and the first few rows.

The column types match `examples/model/datasurface.yaml` exactly: the ingest checks the source's types
against the model, so a drift here would break the merge of the demo and of the chart's default model.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from psycopg2.extensions import connection as PgConnection

from datasurface.db import ident, sql
from datasurface.model import Column

ID_SEQUENCE = "simulator_ids"
# An arbitrary constant: every simulator creating the tables at once serialises on it.
_CREATE_LOCK = 0x5D5_0001
SEED_CUSTOMERS = 5
SEED_RNG = 20240601  # the first rows are the same in every database, whatever --seed says


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ("id",)


CUSTOMERS = Table("customers", (
    Column("id", "varchar(20)", nullable=False),
    Column("firstname", "varchar(100)"),
    Column("lastname", "varchar(100)"),
    Column("dob", "date"),
    Column("email", "varchar(100)"),
    Column("phone", "varchar(100)"),
    Column("primaryaddressid", "varchar(20)"),
    Column("billingaddressid", "varchar(20)"),
))

ADDRESSES = Table("addresses", (
    Column("id", "varchar(20)", nullable=False),
    Column("customerid", "varchar(20)", nullable=False),
    Column("streetname", "varchar(100)"),
    Column("city", "varchar(100)"),
    Column("state", "varchar(100)"),
    Column("zipcode", "varchar(30)"),
))

TABLES = (CUSTOMERS, ADDRESSES)


def _create_table_sql(table: Table) -> sql.Composable:
    cols = [
        sql.SQL("{} {}{}").format(ident(c.name), sql.SQL(c.type), sql.SQL("" if c.nullable else " NOT NULL"))
        for c in table.columns
    ]
    cols.append(sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(ident(k) for k in table.primary_key)))
    return sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(ident(table.name), sql.SQL(", ").join(cols))


def ensure_tables(conn: PgConnection) -> int:
    """Create the tables and the id sequence if missing; seed a few customers if empty.

    Idempotent and safe when several simulators start at once (an advisory lock serialises them).
    Returns the number of customers seeded (0 when there were rows already).
    """
    from datasurface.simulator.operations import create_customer

    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", [_CREATE_LOCK])
        cur.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS {}").format(ident(ID_SEQUENCE)))
        for table in TABLES:
            cur.execute(_create_table_sql(table))
        # addresses are looked up by customer (deletes, invariant checks)
        cur.execute("CREATE INDEX IF NOT EXISTS addresses_customerid_idx ON addresses (customerid)")
        cur.execute("SELECT EXISTS (SELECT 1 FROM customers)")
        row = cur.fetchone()
        if row is not None and row[0]:
            return 0
        rng = random.Random(SEED_RNG)
        for _ in range(SEED_CUSTOMERS):
            create_customer(cur, rng)
    return SEED_CUSTOMERS


def invariant_violations(conn: PgConnection) -> list[tuple[str, str, str | None]]:
    """(customer id, which reference, address id) for every primary/billing address id that is
    missing, or points at no address of that customer. Empty when the data is consistent."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT c.id, r.kind, r.address_id
            FROM customers c
            CROSS JOIN LATERAL (VALUES ('primary', c.primaryaddressid),
                                       ('billing', c.billingaddressid)) AS r(kind, address_id)
            WHERE r.address_id IS NULL
               OR NOT EXISTS (SELECT 1 FROM addresses a WHERE a.id = r.address_id AND a.customerid = c.id)
            ORDER BY 1, 2
            """
        )
        rows: list[tuple[str, str, str | None]] = cur.fetchall()
    conn.rollback()
    return rows

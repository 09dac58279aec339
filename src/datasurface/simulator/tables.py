"""The simulator's source tables (contract §3), their id sequence and the first few rows, on any backend.

The column types match `examples/model/datasurface.yaml` exactly: the ingest checks the source's types
against the model, so a drift here would break the merge of the demo and of the chart's default model.
"""

from __future__ import annotations

import random
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from datasurface.model import Column

if TYPE_CHECKING:
    from datasurface.simulator.backends import Backend

ID_SEQUENCE = "simulator_ids"
SEED_CUSTOMERS = 5
SEED_RNG = 20240601  # the first rows are the same in every database, whatever --seed says


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ("id",)
    indexes: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, columns)


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
), indexes=(("addresses_customerid_idx", ("customerid",)),))  # deletes and invariant checks look up by customer

TABLES = (CUSTOMERS, ADDRESSES)


def ensure_tables(conn: Any, backend: Backend | None = None) -> int:
    """Create the tables and the id sequence if missing; seed a few customers if empty.

    Idempotent and safe when several simulators start at once (they serialise on the backend's lock).
    Returns the number of customers seeded (0 when there were rows already).
    """
    from datasurface.simulator.backends import backend_for
    from datasurface.simulator.operations import Tx, create_customer

    backend = backend or backend_for("postgres")
    try:
        with conn.cursor() as cur, backend.create_lock(cur):
            backend.create_tables(cur, TABLES)
            cur.execute("SELECT EXISTS (SELECT 1 FROM customers)")
            row = cur.fetchone()
            seeded = 0 if row is not None and row[0] else SEED_CUSTOMERS
            rng = random.Random(SEED_RNG)
            for _ in range(seeded):
                create_customer(Tx(cur, backend), rng)
            conn.commit()
    except BaseException:
        with suppress(Exception):
            conn.rollback()
        raise
    return seeded


def invariant_violations(conn: Any) -> list[tuple[str, str, str | None]]:
    """(customer id, which reference, address id) for every primary/billing address id that is
    missing, or points at no address of that customer. Empty when the data is consistent."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT r.id, r.kind, r.address_id
            FROM (SELECT id, 'primary' AS kind, primaryaddressid AS address_id FROM customers
                  UNION ALL
                  SELECT id, 'billing', billingaddressid FROM customers) AS r
            WHERE r.address_id IS NULL
               OR NOT EXISTS (SELECT 1 FROM addresses a WHERE a.id = r.address_id AND a.customerid = r.id)
            ORDER BY 1, 2
            """
        )
        rows = [(str(i), str(k), None if a is None else str(a)) for i, k, a in cur.fetchall()]
    conn.rollback()
    return rows

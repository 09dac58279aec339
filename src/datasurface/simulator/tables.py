"""The simulator's source tables (docs/cli.md), their id sequence and how many rows seed them: data only.

The column types match `examples/model/datasurface.yaml` exactly: the ingest checks the source's types
against the model, so a drift here would break the merge of the demo and of the chart's default model.
"""

from __future__ import annotations

from dataclasses import dataclass

from datasurface.model import Column

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

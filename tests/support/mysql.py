"""MariaDB versions of the engine tests' helpers: the same datasets (every model type), in MySQL types, and
a MariaDB source database beside a PostgreSQL merge database for one test (`MySqlDatabases`)."""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field
from typing import Any

from tests.support.databases import make_databases
from tests.support.engine import COMMON_DATASETS as DATASETS
from tests.support.engine import model_dict

# the MySQL type each model type of the test datasets is stored in (README: "MySQL and MariaDB sources")
MYSQL_TYPES = {
    "integer": "int", "smallint": "smallint", "bigint": "bigint", "numeric(12,3)": "decimal(12,3)",
    "numeric": "decimal(65,10)", "real": "float", "double precision": "double", "boolean": "tinyint(1)",
    "varchar(30)": "varchar(30)", "varchar(10)": "varchar(10)", "char(5)": "char(5)", "text": "text",
    "date": "date", "timestamp": "datetime(6)", "timestamptz": "timestamp(6) NULL", "time": "time(6)",
    "uuid": "uuid", "jsonb": "json", "bytea": "varbinary(64)", "numeric(10,2)": "decimal(10,2)",
    "json": "json",
}


def mysql_model(host: str, database: str, *, datasets: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    doc = model_dict(host, 3306, database, datasets=DATASETS if datasets is None else datasets, **kw)
    source = doc["stores"][0]["source"]
    source["type"] = "mysql"
    del source["port"]  # the mysql default (3306); a socket file makes it moot anyway
    return doc


def create_mysql_tables(conn: Any, datasets: dict[str, Any] | None = None, *, primary_key: bool = True) -> None:
    datasets = DATASETS if datasets is None else datasets
    with conn.cursor() as cur:
        for name, (cols, key) in datasets.items():
            defs = ", ".join(f"`{c}` {MYSQL_TYPES[t]}" + (" NOT NULL" if c in key and primary_key else "")
                             for c, t in cols)
            pk = f", PRIMARY KEY ({', '.join(key)})" if primary_key else ""
            cur.execute(f"CREATE TABLE `{name}` ({defs}{pk}) ENGINE=InnoDB")
    conn.commit()


def load_mysql_snapshot(conn: Any, snap: dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]) -> None:
    """Replace each table's rows by the snapshot's, in one transaction."""
    with conn.cursor() as cur:
        for name, rows in snap.items():
            cols = [c for c, _ in DATASETS[name][0]]
            cur.execute(f"DELETE FROM `{name}`")
            if rows:
                marks = ", ".join(["%s"] * len(cols))
                quoted = ", ".join(f"`{c}`" for c in cols)
                cur.executemany(f"INSERT INTO `{name}` ({quoted}) VALUES ({marks})", list(rows.values()))
    conn.commit()


def expected_rows(name: str, snap: dict[tuple[Any, ...], tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What support.fetch of the merge tables must return for this snapshot: key order, jsonb as text."""
    import json

    types = [t for _, t in DATASETS[name][0]]
    return [tuple(json.dumps(json.loads(v)) if t == "jsonb" and v is not None else v
                  for v, t in zip(snap[key], types, strict=True)) for key in sorted(snap)]


Snapshot = dict[str, dict[tuple[Any, ...], tuple[Any, ...]]]


def rfc4122(snap: Snapshot) -> Snapshot:
    """MariaDB's uuid type takes RFC 4122 UUIDs only: set the variant (and version 4) bits, idempotently."""
    import uuid

    def fix(v: Any, t: str) -> Any:
        if t != "uuid" or v is None:
            return v
        n = uuid.UUID(v).int
        n = (n & ~(0xC000 << 48) & ~(0xF000 << 64)) | (0x8000 << 48) | (0x4000 << 64)
        return str(uuid.UUID(int=n))

    out = {}
    for name, rows in snap.items():
        types = [t for _, t in DATASETS[name][0]]
        out[name] = {k: tuple(fix(v, t) for v, t in zip(r, types, strict=True)) for k, r in rows.items()}
    return out


_counter = itertools.count()


@dataclass
class MySqlDatabases:
    """A MariaDB source database and a PostgreSQL merge database, with the job's credential env."""

    server: Any
    pg: Any  # the tests' Databases on PostgreSQL (its merge database is ours)
    source: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return str(self.server.socket)

    def connect_source(self, **kw: Any) -> Any:
        import pymysql

        return pymysql.connect(unix_socket=self.server.socket, user=self.env["SOURCE_USER"],
                               password=self.env["SOURCE_PASSWORD"], database=self.source, charset="utf8mb4",
                               init_command="SET time_zone = '+00:00'", **kw)

    def connect_merge(self) -> Any:
        return self.pg.connect(self.pg.merge)

    def merge_args(self) -> list[str]:
        return list(self.pg.merge_args())


def make_mysql_databases(server: Any, pg_server: Any) -> MySqlDatabases:
    pg = make_databases(pg_server)
    tag = f"{os.getpid()}_{next(_counter)}"
    user, password = f"src_{tag}", secrets.token_hex(8)
    source = f"source_{tag}"
    server.create_database(source, user, password)
    env = {**pg.env, "SOURCE_USER": user, "SOURCE_PASSWORD": password}
    return MySqlDatabases(server=server, pg=pg, source=source, env=env)

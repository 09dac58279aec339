"""The source and merge databases each test gets on a PostgreSQL server of the suite's own, with their
roles and the job's credential env vars."""

from __future__ import annotations

import itertools
import os
import secrets
from dataclasses import dataclass, field

_counter = itertools.count()


@dataclass
class Databases:
    """A source and a merge database on one server, with credential env vars for the job."""

    server: object  # LocalPostgres
    source: str
    merge: str
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def connect(self, database: str):  # type: ignore[no-untyped-def]
        import psycopg2

        role = "src" if database == self.source else "mrg"
        prefix = "SOURCE" if role == "src" else "MERGE"
        return psycopg2.connect(host=self.host, port=self.port, dbname=database,
                                user=self.env[f"{prefix}_USER"], password=self.env[f"{prefix}_PASSWORD"])

    def merge_args(self) -> list[str]:
        return ["--merge-host", self.host, "--merge-port", str(self.port), "--merge-database", self.merge,
                "--merge-credential", "merge"]


def make_databases(server: object) -> Databases:
    n = next(_counter)
    tag = f"{os.getpid()}_{n}_{secrets.token_hex(2)}"
    src_user, mrg_user = f"src_{tag}", f"mrg_{tag}"
    src_pw, mrg_pw = secrets.token_hex(8), secrets.token_hex(8)
    server.create_role(src_user, src_pw)  # type: ignore[attr-defined]
    server.create_role(mrg_user, mrg_pw)  # type: ignore[attr-defined]
    source, merge = f"source_{tag}", f"merge_{tag}"
    server.create_database(source, owner=src_user)  # type: ignore[attr-defined]
    server.create_database(merge, owner=mrg_user)  # type: ignore[attr-defined]
    env = {"SOURCE_USER": src_user, "SOURCE_PASSWORD": src_pw, "MERGE_USER": mrg_user, "MERGE_PASSWORD": mrg_pw}
    return Databases(server=server, source=source, merge=merge,
                     host=server.socket_dir, port=server.port, env=env)  # type: ignore[attr-defined]

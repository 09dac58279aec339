"""What the simulator does differently per database: connecting, DDL, ids, the create lock, and which
errors mean "try again" or "the connection is gone". The operations themselves are shared."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from datasurface.credentials import Credential
    from datasurface.db import Endpoint
    from datasurface.simulator.tables import Table

# what a failed statement means for the loop: reconnect, retry the transaction, the tables are missing
Failure = Literal["lost", "retry", "missing", "other"]


class Backend(Protocol):
    name: str
    default_port: int
    error: type[Exception]  # the driver's base error class
    lock_join_rows: str  # the locking clause that locks the rows of both tables of a join, skipping locked ones

    def connect(self, endpoint: Endpoint, credential: Credential, schema: str | None = None) -> Any:
        """A connection in manual-commit mode with short lock waits; DatabaseError (one line) on failure.
        `schema` (PostgreSQL): the schema of the tables (a MySQL database is its own schema)."""

    def fatal_connect(self, reason: str) -> bool:
        """True when waiting will not fix this connection failure (wrong password, no such database)."""

    def message(self, exc: BaseException) -> str:
        """The driver error as one line (MySQL: `(1146) Table ... doesn't exist`)."""

    def is_closed(self, conn: Any) -> bool: ...

    def classify(self, exc: Exception, conn: Any) -> Failure: ...

    def create_lock(self, cur: Any) -> AbstractContextManager[None]:
        """Held while the tables are created and seeded: concurrent simulators serialise on it."""

    def create_tables(self, cur: Any, tables: Sequence[Table]) -> None:
        """The id counter and the tables (with their indexes), each only if missing."""

    def next_id(self, cur: Any) -> int:
        """The next number of the id sequence shared by every simulator of the database."""

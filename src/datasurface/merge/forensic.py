"""The forensic merge (SCD type 2): every version is kept; a version is valid for batches N with
`ds_batch_in <= N < ds_batch_out`. A changed or deleted key's current version is closed at this
batch; a new or changed key gets a new current version. A partial unique index guarantees at most
one current version per key."""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extensions import cursor

from datasurface.merge.diff import DiffMerge, diff_rows, key_match
from datasurface.merge.layout import OPEN_END
from datasurface.merge.ledger import Counts


class ForensicMerge(DiffMerge):
    def retire(self, cur: cursor, counts: Counts, batch_id: int) -> None:
        if counts.updated or counts.deleted:
            cur.execute(sql.SQL("UPDATE {} t SET ds_batch_out = {} FROM {} WHERE {} AND t.ds_batch_out = {}").format(
                self.target, sql.Literal(batch_id), diff_rows(("U", "D")), key_match(self.layout, "t", "d"),
                sql.Literal(OPEN_END)))

    def add(self, cur: cursor, counts: Counts, batch_id: int) -> None:
        if counts.updated or counts.inserted:
            self._insert(cur, batch_id, diff_rows(("I", "U")))


"""The live merge: the table holds exactly the snapshot's rows; `ds_batch_id` is the batch that last
inserted or changed a row."""

from __future__ import annotations

from psycopg2 import sql
from psycopg2.extensions import cursor

from datasurface.merge.diff import DiffMerge, diff_rows, key_match
from datasurface.merge.ledger import Counts


class LiveMerge(DiffMerge):
    def retire(self, cur: cursor, counts: Counts, batch_id: int) -> None:
        layout = self.layout
        if counts.deleted:
            cur.execute(sql.SQL("DELETE FROM {} t USING {} WHERE {}").format(
                self.target, diff_rows(("D",)), key_match(layout, "t", "d")))
        if counts.updated:
            sets = sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(c), sql.Identifier("d", c)) for c in layout.values)
            cur.execute(sql.SQL("UPDATE {} t SET {}, ds_batch_id = {} FROM {} WHERE {}").format(
                self.target, sets, sql.Literal(batch_id), diff_rows(("U",)), key_match(layout, "t", "d")))

    def add(self, cur: cursor, counts: Counts, batch_id: int) -> None:
        if counts.inserted:
            self._insert(cur, batch_id, diff_rows(("I",)))


"""The forensic merge (SCD type 2): every version is kept; a version is valid for batches N with
`ds_batch_in <= N < ds_batch_out`. A changed or deleted key's current version is closed at this
batch; a new or changed key gets a new current version. A partial unique index guarantees at most
one current version per key."""

from __future__ import annotations

from psycopg2 import sql

from datasurface.db import PgConnection
from datasurface.faults import killpoint
from datasurface.merge.diff import (
    compute_diff,
    diff_rows,
    drop_diff,
    duplicates_refused,
    key_match,
    keyed_apply,
    refresh_stats,
)
from datasurface.merge.layout import OPEN_END, DatasetLayout
from datasurface.merge.ledger import Counts


def _ids(names: tuple[str, ...]) -> sql.Composable:
    return sql.SQL(", ").join(sql.Identifier(n) for n in names)


class ForensicMerge:
    def __init__(self, conn: PgConnection, lay: DatasetLayout):
        self.conn = conn
        self.lay = lay

    def apply(self, batch_id: int, snapshot_rows: int) -> Counts:
        lay, target = self.lay, self.lay.qualified(self.lay.table)
        counts = compute_diff(self.conn, lay, snapshot_rows)
        killpoint(f"merge:{lay.dataset.name}:diffed")
        with keyed_apply(self.conn), self.conn.cursor() as cur:
            if counts.updated or counts.deleted:
                cur.execute(
                    sql.SQL("UPDATE {} t SET ds_batch_out = {} FROM {} WHERE {} AND t.ds_batch_out = {}").format(
                        target, sql.Literal(batch_id), diff_rows(("U", "D")), key_match(lay, "t", "d"),
                        sql.Literal(OPEN_END)))
            killpoint(f"merge:{lay.dataset.name}:changed")
            if counts.updated or counts.inserted:
                with duplicates_refused(lay):
                    cur.execute(
                        sql.SQL("INSERT INTO {} ({}, ds_batch_in, ds_batch_out) SELECT {}, {}, {} FROM {}").format(
                            target, _ids(lay.columns), _ids(lay.columns), sql.Literal(batch_id),
                            sql.Literal(OPEN_END), diff_rows(("I", "U"))))
        refresh_stats(self.conn, lay, counts)
        drop_diff(self.conn)
        return counts

"""Change data capture (`ingestion: cdc`): the place for its benchmark scenario; nothing is measured yet.

What it is to measure, beside the snapshot rows of `churn`: the same shapes, sizes and churn levels from
a store with `ingestion: cdc`, where a batch reads the slot's changes up to an LSN instead of the whole
table, so its cost should follow the churn, not the table's size. Its floor: reading the same changes
from a logical slot of its own (pgoutput) into the merge database, plus their minimal writes (as
`Bench.floor_writes` does for a snapshot's diff). Its checks: those of `Bench.check`, and that the job's
slot has advanced to the batch's `source_lsn` in the ledger.

How it fits: a `Bench` subclass here (as `mysql.MySqlBench` is for MariaDB) whose `source_block` adds
`ingestion: cdc`, that gives the source role the REPLICATION attribute and overrides `floor`;
`churn.run_churn_levels` runs its batches unchanged; an option in `cli` (as `--mysql-sizes`) selects it.
The throwaway server already runs with `wal_level = logical` and room for slots.
"""

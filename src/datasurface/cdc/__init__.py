"""Change data capture from PostgreSQL: a store's changes read from a logical replication slot (pgoutput)
instead of whole snapshots; the merge side turns them into the same diff a snapshot would give."""

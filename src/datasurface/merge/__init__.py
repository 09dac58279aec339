"""The merge side: layout of the merge database, the batch ledger, the live and forensic merges."""

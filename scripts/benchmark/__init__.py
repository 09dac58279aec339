"""The merge benchmark (`scripts/benchmark.sh`): one module per scenario, beside the shared parts.

Shared: `shapes` (the source tables), `bench` (databases, job runs, floors, checks), `serverlog` (the
server's log as clock and witness), `report` (the rows and their table), `cli` (options, the run).
Scenarios: `churn` (load and churn levels), `history` (a long forensic history and its consumer queries),
`fixed_cost`, `streams` (many streams, K concurrent jobs), `mysql` (a MariaDB source), `exporter` (the
metrics exporter's scrapes) and `cdc` (change data capture: a cdc store against its floor and a snapshot batch).
"""

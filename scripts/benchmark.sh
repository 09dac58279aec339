#!/usr/bin/env bash
# The merge benchmark (issue 7): `datasurface-job merge` against the floor (COPY of the snapshot plus one
# FULL JOIN diff), on a throwaway PostgreSQL it starts itself. Needs Python 3.11+, pip and PyPI access.
# Usage: scripts/benchmark.sh [benchmark.py options]   (scripts/benchmark.sh --help for them)
#        scripts/benchmark.sh --exporter [benchmark_exporter.py options]: per-scrape time and memory of
#        `datasurface-job exporter` with large ledgers (default 100 streams x 1000 batches)
#        scripts/benchmark.sh --dag-parse [bench_dag_parse.py options]: Airflow's parse time of one
#        platform's DAG file for 400 stores (one DAG per store, and groups), against a 10 s bound
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --dag-parse ]; then
  shift
  scripts/airflow-venv.sh >/dev/null
  exec .venv-airflow/bin/python scripts/bench_dag_parse.py "$@"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import datasurface, psycopg2, yaml' 2>/dev/null \
  || .venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
if [ "${1:-}" = --exporter ]; then
  shift
  .venv/bin/python -c 'import prometheus_client' 2>/dev/null \
    || .venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
  exec .venv/bin/python scripts/benchmark_exporter.py "$@"
fi
exec .venv/bin/python scripts/benchmark.py "$@"

#!/usr/bin/env bash
# The merge benchmark: `datasurface-job merge` against the floor (COPY of the snapshot plus one FULL JOIN
# diff), on a throwaway PostgreSQL it starts itself. Needs Python 3.11+, pip and PyPI access.
# Usage: scripts/benchmark.sh [options]   (scripts/benchmark.sh --help for them; the code: scripts/benchmark/)
#        scripts/benchmark.sh --exporter [options]: per-scrape time and memory of `datasurface-job exporter`
#        with large ledgers (default 100 streams x 1000 batches; --exporter --help for its options)
#        scripts/benchmark.sh --dag-parse [options]: Airflow's parse time of one platform's DAG file for 400
#        stores (one DAG per store, and groups), against a 10 s bound (in the Airflow venv)
set -euo pipefail
cd "$(dirname "$0")/.."

export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"  # the benchmark package
if [ "${1:-}" = --dag-parse ]; then
  shift
  scripts/airflow-venv.sh >/dev/null
  exec .venv-airflow/bin/python -m benchmark.dag_parse "$@"
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import datasurface, psycopg2, yaml' 2>/dev/null \
  || .venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
if [ "${1:-}" = --exporter ]; then
  shift
  .venv/bin/python -c 'import prometheus_client' 2>/dev/null \
    || .venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
  exec .venv/bin/python -m benchmark.exporter "$@"
fi
exec .venv/bin/python -m benchmark "$@"

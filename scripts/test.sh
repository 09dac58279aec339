#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs (a venv with the project and its test
# tools, helm, a second venv with Airflow 3 for the DAG tests), then lints, type-checks and runs pytest
# against real PostgreSQL servers, the real helm binary and a real Airflow.
# Usage: scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

say "Python venv (.venv) with the project and its test tools"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

say "helm"
HELM_BIN=$(scripts/get-helm.sh)
export HELM_BIN

say "Airflow venv (.venv-airflow) for the DAG tests"
scripts/airflow-venv.sh

say "ruff, mypy, shellcheck"
.venv/bin/ruff check src tests charts/datasurface/files
.venv/bin/mypy src
.venv/bin/shellcheck scripts/*.sh .ci/run

say "pytest: job, simulator, chart, image"
status=0
.venv/bin/pytest --ignore=tests/dags "$@" || status=$?

say "pytest: Airflow DAGs (real Airflow in .venv-airflow)"
PATH="$root/.venv-airflow/bin:$PATH" .venv-airflow/bin/pytest tests/dags "$@" || status=$?

exit "$status"

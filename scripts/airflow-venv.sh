#!/usr/bin/env bash
# Creates (or reuses) .venv-airflow: a real Airflow 3 with the cncf.kubernetes provider, pytest and the
# project itself (editable), for the DAG tests in tests/dags. Idempotent: the slow install is skipped when
# a stamp keyed by the requirements and pyproject.toml says it is already complete.
# Usage: scripts/airflow-venv.sh        (prints nothing but pip's errors when it has work to do)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-airflow
stamp="$venv/.datasurface-stamp"
requirements=(
  "apache-airflow==3.*"
  "apache-airflow-providers-cncf-kubernetes"
  "pytest"
  "pytest-timeout"
)

python=${PYTHON:-python3}
key=$({ printf '%s\n' "${requirements[@]}"; cat pyproject.toml; "$python" --version; } | sha256sum | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  echo "$venv is up to date"
  exit 0
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
rm -f "$stamp"
"$venv/bin/pip" install -q --disable-pip-version-check --upgrade pip
"$venv/bin/pip" install -q --disable-pip-version-check "${requirements[@]}" -e .
# Fail here, not in the middle of the tests, if the install is incomplete (a throwaway AIRFLOW_HOME: the
# import must not leave an airflow.cfg in the user's home).
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
version=$(AIRFLOW_HOME="$home" "$venv/bin/python" -c \
  'import airflow, airflow.providers.cncf.kubernetes, datasurface.localpg, pytest; print(airflow.__version__)')
printf '%s\n' "$key" >"$stamp"
echo "$venv ready: Airflow $version"

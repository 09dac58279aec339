#!/usr/bin/env bash
# Creates (or reuses) .venv-airflow: a real Airflow 3 (the chart's airflow.image.tag) with the providers
# the chart's Airflow image has (cncf.kubernetes, postgres, fab for airflow.auth.manager fab), pytest, and then the project itself
# (editable), for the DAG tests in tests/dags and the system tests in tests/system. Idempotent: the slow
# install is skipped when a stamp keyed by the requirements and pyproject.toml says it is complete.
#
# Two steps, as a user builds an Airflow image with the package (FROM apache/airflow, then pip install
# datasurface-k8s): Airflow first, then the project into that environment. `pip list` after the first
# step is kept in $venv/airflow-baseline.json: tests/dags/test_package_beside_airflow.py checks that the
# second step changed none of Airflow's packages and that `pip check` is clean.
#
# Built on $PYTHON (default: Debian's /usr/bin/python3.11 when present, else python3): the system tests
# run Airflow as the chart's non-root uid, which cannot execute a Python in root's home.
# Usage: scripts/airflow-venv.sh        (prints nothing but pip's errors when it has work to do)
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-airflow
stamp="$venv/.datasurface-stamp"
baseline="$venv/airflow-baseline.json"
# The Airflow version of the chart's image (values.yaml airflow.image.tag): tests run what the chart ships.
airflow_version=$(sed -n '/^airflow:/,/^[a-z]/{s/^    tag: "\(.*\)"$/\1/p}' charts/datasurface/values.yaml)
[ -n "$airflow_version" ] || { echo "airflow-venv.sh: cannot read airflow.image.tag from values.yaml" >&2; exit 1; }
requirements=(
  "apache-airflow==$airflow_version"
  "apache-airflow-providers-cncf-kubernetes"
  "apache-airflow-providers-postgres"
  "apache-airflow-providers-fab"
  "pytest"
  "pytest-timeout"
)

default_python=python3
[ -x /usr/bin/python3.11 ] && default_python=/usr/bin/python3.11
python=${PYTHON:-$default_python}
key=$({ printf '%s\n' "${requirements[@]}"; cat pyproject.toml; "$python" --version; command -v "$python"; } \
  | sha256sum | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$key" ]; then
  echo "$venv is up to date"
  exit 0
fi

# Built from scratch whenever the key changed: the baseline must be Airflow's environment alone, without
# an earlier install of the project or of its dependencies.
rm -rf "$venv"
"$python" -m venv "$venv"
pip=("$venv/bin/pip" install -q --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" "${requirements[@]}"
"$venv/bin/pip" list --format=json --disable-pip-version-check >"$baseline"
"${pip[@]}" -e .
# Fail here, not in the middle of the tests, if the install is incomplete (a throwaway AIRFLOW_HOME: the
# import must not leave an airflow.cfg in the user's home).
home=$(mktemp -d)
trap 'rm -rf "$home"' EXIT
version=$(AIRFLOW_HOME="$home" "$venv/bin/python" -c \
  'import airflow, airflow.providers.cncf.kubernetes, airflow.providers.postgres, datasurface.localpg, pytest; print(airflow.__version__)')
printf '%s\n' "$key" >"$stamp"
echo "$venv ready: Airflow $version"

#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what it needs (a venv with the project and its test
# tools, helm, Debian's prometheus package, a second venv with Airflow 3 for the DAG and system tests,
# buildah and mmdebstrap for the job image), then lints, type-checks and runs pytest against real PostgreSQL
# servers, the real helm binary, a real Prometheus, a real Airflow, the job image really built and run, and
# the chart's pods run as processes.
# Usage: scripts/test.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { printf '\n==> %s\n' "$*"; }

say "buildah and mmdebstrap (Debian) for the job image build and run (tests/image_build)"
apt_updated=false
apt_install() {  # Debian packages, as root; apt-get update once per run. A policy-rc.d for the install keeps
  # packages from starting the machine's own services (mariadb, prometheus): the tests start their own
  [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  if [ "$apt_updated" = false ]; then apt-get update -qq >/dev/null && apt_updated=true || return 1; fi
  local made_policy="" rc=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && made_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || rc=$?
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
  return "$rc"
}
if ! command -v buildah >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1; then
  apt_install buildah mmdebstrap || true
fi
standin_pid=""
if ! command -v buildah >/dev/null 2>&1 || ! command -v mmdebstrap >/dev/null 2>&1 || [ "$(id -u)" != 0 ]; then
  printf '\n!!! SKIPPING the job image build (tests/image_build): buildah and mmdebstrap, as root, are needed\n' >&2
  printf '!!! and could not be had here; pytest lists the skipped tests with the reason.\n\n' >&2
else
  # The stand-in base image (1-3 min on a fresh machine, reused after) builds in the background while the
  # venvs install; tests/image_build then finds it ready (or builds it itself, and reports, if this failed).
  standin_log=$(mktemp)
  scripts/standin-base.sh >"$standin_log" 2>&1 &
  standin_pid=$!
fi

say "Python venv (.venv) with the project and its test tools"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

say "helm"
HELM_BIN=$(scripts/get-helm.sh)
export HELM_BIN

say "Prometheus and promtool (Debian's prometheus package) for tests/observe/test_prometheus.py"
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  apt_install --no-install-recommends prometheus || true
fi
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  printf '\n!!!!!!!! WARNING: prometheus/promtool could not be installed: the Prometheus tests (alert rules,\n'
  printf '!!!!!!!! a real Prometheus scraping the exporter, dashboard queries) WILL BE SKIPPED\n\n'
fi

say "Airflow venv (.venv-airflow) for the DAG and system tests"
scripts/airflow-venv.sh

if [ -n "$standin_pid" ]; then
  say "the stand-in base image for tests/image_build"
  if wait "$standin_pid"; then tail -n 1 "$standin_log"; else
    printf '!!! scripts/standin-base.sh failed (tests/image_build will try again):\n' >&2
    tail -n 20 "$standin_log" >&2
  fi
  rm -f "$standin_log"
fi

say "MariaDB server binaries for tests/mysql and the demo's MariaDB store (Debian's mariadb-server; each starts its own server)"
if ! command -v mariadbd >/dev/null 2>&1 && [ ! -x /usr/sbin/mariadbd ]; then
  apt_install mariadb-server \
    || echo "!!! mariadb-server could not be installed (needs root apt-get): tests/mysql and the demo's MariaDB test will be SKIPPED" >&2
fi

say "ruff, mypy, shellcheck"
.venv/bin/ruff check src tests charts/datasurface/files
.venv/bin/mypy src
.venv/bin/shellcheck scripts/*.sh .ci/run

say "pytest: job, simulator, chart, image"
status=0
# two workers (pytest-xdist): most tests wait on a server or a job process, so two nearly halve the wall
# time even on 2 cores. A file's tests stay on one worker (its module fixtures are made once; one file builds
# the image with buildah). The demo runs after, alone: scripts/demo.sh reinstalls the package into .venv,
# which the other worker's jobs import meanwhile.
.venv/bin/pytest -n 2 --dist loadfile --durations=30 --ignore=tests/dags --ignore=tests/system \
  --ignore=tests/demo "$@" || status=$?
.venv/bin/pytest tests/demo "$@" || status=$?

say "pytest: Airflow DAGs and the package beside Airflow (real Airflow in .venv-airflow)"
PATH="$root/.venv-airflow/bin:$PATH" .venv-airflow/bin/pytest tests/dags "$@" || status=$?

say "pytest: the chart's Airflow as installed, its pods run as processes (tests/system, needs root)"
PATH="$root/.venv-airflow/bin:$PATH" .venv-airflow/bin/pytest tests/system "$@" || status=$?

exit "$status"

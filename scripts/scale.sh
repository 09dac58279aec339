#!/usr/bin/env bash
# The whole at scale: one platform of many small stores on a one-minute schedule in the emulated release
# (tests/system: the chart's Airflow with the real scheduler, the jobs run by the local runner, the
# exporter), measured over a window: every stream's data age (p95, from the exporter), the CPU of
# Airflow's processes and of the jobs, the machine's load; then whether the targets are met (exit 1 if not).
# Needs root (tests/system/README.md) and the Airflow venv (built if missing).
# Usage: scripts/scale.sh [--stores 400] [--per-task 50] [--parallel 1] [--minutes 5] [--json FILE]
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = --help ] || [ "${1:-}" = -h ]; then
  [ -x .venv-airflow/bin/python ] || { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0; }
  PYTHONPATH="$PWD" exec .venv-airflow/bin/python -m tests.system.scale --help
fi
if [ "$(id -u)" != 0 ]; then
  echo "scale.sh: needs root (the release's pods run as processes in namespaces: tests/system/README.md)" >&2
  exit 2
fi
scripts/airflow-venv.sh >/dev/null
export PATH="$PWD/.venv-airflow/bin:$PATH"
# the repository, whose `tests` package holds the system tests' modules (tests.system.scale)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec .venv-airflow/bin/python -m tests.system.scale "$@"

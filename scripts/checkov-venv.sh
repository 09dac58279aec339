#!/usr/bin/env bash
# Creates (or reuses) .venv-checkov: checkov in its own venv (its pinned dependencies would fight the
# project's test tools in .venv). Prints the path of the checkov binary on stdout; pip's noise on stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=.venv-checkov
version=3.3.30
if [ -x "$venv/bin/checkov" ] && [ "$(cat "$venv/.stamp" 2>/dev/null)" = "$version" ]; then
  printf '%s\n' "$PWD/$venv/bin/checkov"
  exit 0
fi
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "checkov==$version" >&2
printf '%s\n' "$version" >"$venv/.stamp"
printf '%s\n' "$PWD/$venv/bin/checkov"

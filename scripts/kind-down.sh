#!/usr/bin/env bash
# Removes what scripts/kind-up.sh made: the whole kind cluster (the release, its PersistentVolumes and the
# in-cluster model git server go with it). The job image stays in the local docker/podman image store.
#
# Usage: scripts/kind-down.sh [--name CLUSTER]
#   --name CLUSTER   the kind cluster (default: $KIND_CLUSTER, else datasurface)
set -euo pipefail

cluster=${KIND_CLUSTER:-datasurface}

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { printf 'kind-down: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --name) cluster=${2:?--name needs a value}; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

command -v kind >/dev/null 2>&1 || die "kind is not installed (https://kind.sigs.k8s.io)"

clusters=$(kind get clusters 2>/dev/null || true)
if grep -qxF "$cluster" <<<"$clusters"; then
  echo "kind-down: deleting kind cluster $cluster" >&2
  kind delete cluster --name "$cluster"
else
  echo "kind-down: no kind cluster named $cluster: nothing to do" >&2
fi

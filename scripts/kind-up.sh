#!/usr/bin/env bash
# The whole system on a local kind cluster, from nothing to merge tables filling:
#   1. creates the kind cluster (or reuses it),
#   2. builds the job image (scripts/build-image.sh) and loads it into the cluster,
#   3. publishes examples/model as a git repository inside the cluster: a tiny `git daemon` Deployment
#      (the job image has git) serving a repo made from a ConfigMap, at git://model-git.<ns>.svc/model.git,
#   4. `helm upgrade --install`s charts/datasurface with examples/values-mvp.yaml, model.repo pointed at it,
#   5. runs `helm test`,
#   6. triggers the yellowlive__Store1_ingestion DAG twice and shows the platform's batches and counts.
# Needs docker (or podman), kind, kubectl and python3; helm comes from scripts/get-helm.sh.
# Run it again at any time: every step is idempotent. scripts/kind-down.sh removes the cluster.
#
# Usage: scripts/kind-up.sh [--name CLUSTER] [--namespace NS] [--release NAME] [--no-build] [--no-dag]
#                           [--print-model-server]
#   --name CLUSTER        kind cluster (default: $KIND_CLUSTER, else datasurface)
#   --namespace NS        namespace of the release (default: $NAMESPACE, else datasurface)
#   --release NAME        helm release (default: $RELEASE, else mvp)
#   --no-build            use the image already built (datasurface-job:<version>) instead of rebuilding
#   --no-dag              stop after helm test (do not trigger the DAG)
#   --print-model-server  print the model git server's manifests and exit (needs no cluster)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cluster=${KIND_CLUSTER:-datasurface}
namespace=${NAMESPACE:-datasurface}
release=${RELEASE:-mvp}
build=true
run_dag=true
print_only=false
dag_platform=YellowLive
dag_store=Store1

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
say() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'kind-up: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --name) cluster=${2:?--name needs a value}; shift 2 ;;
    --namespace) namespace=${2:?--namespace needs a value}; shift 2 ;;
    --release) release=${2:?--release needs a value}; shift 2 ;;
    --no-build) build=false; shift ;;
    --no-dag) run_dag=false; shift ;;
    --print-model-server) print_only=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

version=$(awk -F'"' '/^\[/ { p = ($0 == "[project]") } p && /^version *=/ { print $2; exit }' \
  "$root/pyproject.toml")
[ -n "$version" ] || die "no [project] version in pyproject.toml"
image="datasurface-job:$version"
context="kind-$cluster"
model_url="git://model-git.$namespace.svc.cluster.local/model.git"

# --- the in-cluster model repository ----------------------------------------------------------------------
# The server's script: makes a one-commit repo (branch main) from the model files in $SEED_DIR and serves
# it read-only with `git daemon`. The defaults are the pod's paths; the test suite runs the same script
# on loopback with other paths and port.
read -r -d '' model_server_script <<'SH' || true
set -eu
seed=${SEED_DIR:-/seed}
git_root=${GIT_ROOT:-/srv/git}
work=$(mktemp -d)
rm -rf "$git_root/model.git"
git init -q --bare --initial-branch=main "$git_root/model.git"
git init -q --initial-branch=main "$work"
cp "$seed"/*.yaml "$work"/
git -C "$work" add -A
git -C "$work" -c user.name=kind-up -c user.email=kind-up@datasurface.invalid commit -q -m "Example model"
git -C "$work" push -q "$git_root/model.git" main
rm -rf "$work"
echo "model-git: serving $(git -C "$git_root/model.git" rev-parse main) on port ${GIT_PORT:-9418}"
exec git daemon --reuseaddr --export-all --informative-errors --base-path="$git_root" \
  --listen="${LISTEN:-0.0.0.0}" --port="${GIT_PORT:-9418}" "$git_root"
SH

# The model as the cluster sees it: examples/model, with the source host pointed at this release's
# PostgreSQL Service (the example names the release `mvp`).
model_file() {
  sed "s/^\( *host: \)mvp-datasurface-postgresql\$/\1$release-datasurface-postgresql/" \
    "$root/examples/model/datasurface.yaml"
}

indent() { sed "s/^/$1/"; }

model_server_manifest() {
  local checksum
  checksum=$(model_file | cksum | cut -d' ' -f1)
  cat <<YAML
apiVersion: v1
kind: ConfigMap
metadata:
  name: model-git-seed
  namespace: $namespace
  labels: {app.kubernetes.io/name: model-git, app.kubernetes.io/part-of: datasurface}
data:
  datasurface.yaml: |
$(model_file | indent '    ')
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: model-git
  namespace: $namespace
  labels: {app.kubernetes.io/name: model-git, app.kubernetes.io/part-of: datasurface}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: model-git}
  template:
    metadata:
      labels: {app.kubernetes.io/name: model-git, app.kubernetes.io/part-of: datasurface}
      annotations: {checksum/model: "$checksum"}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 10001
        runAsGroup: 10001
        fsGroup: 10001
        seccompProfile: {type: RuntimeDefault}
      containers:
        - name: git-daemon
          image: $image
          imagePullPolicy: IfNotPresent
          command: ["/bin/sh", "-c"]
          args:
            - |
$(printf '%s\n' "$model_server_script" | indent '              ')
          ports:
            - {name: git, containerPort: 9418, protocol: TCP}
          readinessProbe:
            tcpSocket: {port: git}
            periodSeconds: 2
          resources:
            requests: {cpu: 10m, memory: 32Mi}
            limits: {memory: 128Mi}
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: seed, mountPath: /seed, readOnly: true}
            - {name: git, mountPath: /srv/git}
            - {name: tmp, mountPath: /tmp}
      volumes:
        - name: seed
          configMap: {name: model-git-seed}
        - name: git
          emptyDir: {}
        - name: tmp
          emptyDir: {}
---
apiVersion: v1
kind: Service
metadata:
  name: model-git
  namespace: $namespace
  labels: {app.kubernetes.io/name: model-git, app.kubernetes.io/part-of: datasurface}
spec:
  selector: {app.kubernetes.io/name: model-git}
  ports:
    - {name: git, port: 9418, targetPort: git, protocol: TCP}
YAML
}

if [ "$print_only" = true ]; then
  model_server_manifest
  exit 0
fi

# --- prerequisites ----------------------------------------------------------------------------------------
for tool in kind kubectl python3; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
helm=$("$root/scripts/get-helm.sh")
k() { kubectl --context "$context" --namespace "$namespace" "$@"; }

# --- 1. cluster -------------------------------------------------------------------------------------------
clusters=$(kind get clusters 2>/dev/null || true)
if grep -qxF "$cluster" <<<"$clusters"; then
  say "kind cluster $cluster exists: reusing it"
else
  say "creating kind cluster $cluster"
  kind create cluster --name "$cluster" --wait 180s
fi
kubectl --context "$context" create namespace "$namespace" --dry-run=client -o yaml \
  | kubectl --context "$context" apply -f - >/dev/null

# --- 2. job image -----------------------------------------------------------------------------------------
if [ "$build" = true ]; then
  say "building $image"
  "$root/scripts/build-image.sh" >/dev/null
fi
say "loading $image into the cluster"
if command -v docker >/dev/null 2>&1 && docker image inspect "$image" >/dev/null 2>&1; then
  kind load docker-image "$image" --name "$cluster"
elif command -v podman >/dev/null 2>&1; then
  archive=$(mktemp --suffix=.tar)
  trap 'rm -f "$archive"' EXIT
  podman save --format docker-archive -o "$archive" "localhost/$image"
  kind load image-archive "$archive" --name "$cluster"
else
  die "image $image not found in docker or podman: build it with scripts/build-image.sh"
fi

# --- 3. model repository in the cluster -------------------------------------------------------------------
say "model git server: $model_url"
model_server_manifest | k apply -f -
k rollout status deployment/model-git --timeout=180s

# --- 4. the chart -----------------------------------------------------------------------------------------
say "helm upgrade --install $release (examples/values-mvp.yaml)"
"$helm" upgrade --install "$release" "$root/charts/datasurface" \
  --kube-context "$context" --namespace "$namespace" \
  --values "$root/examples/values-mvp.yaml" \
  --set-string "model.repo=$model_url" \
  --set-string "model.ref=main" \
  --set-string "image.repository=datasurface-job" \
  --set-string "image.tag=$version" \
  --set-string "image.pullPolicy=IfNotPresent" \
  --wait --timeout 20m

# --- 5. helm test -----------------------------------------------------------------------------------------
say "helm test $release"
"$helm" test "$release" --kube-context "$context" --namespace "$namespace" --logs --timeout 10m

if [ "$run_dag" = false ]; then
  "$helm" status "$release" --kube-context "$context" --namespace "$namespace" --show-resources=false
  exit 0
fi

# --- 6. run the ingestion DAG and show the merge tables filling -------------------------------------------
platform_lower=$(printf '%s' "$dag_platform" | tr '[:upper:]' '[:lower:]')
dag_id="${platform_lower}__${dag_store}_ingestion"
scheduler=$(k get pods -l "app.kubernetes.io/instance=$release,app.kubernetes.io/component=scheduler" \
  --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}')
[ -n "$scheduler" ] || die "no running Airflow scheduler pod for release $release"
airflow() { k exec "pod/$scheduler" -- airflow "$@"; }

# Outputs are captured before grep reads them: with pipefail, `cmd | grep -q` can fail on SIGPIPE.
say "waiting for Airflow to parse $dag_id"
dags=""
for _ in $(seq 1 60); do
  dags=$(airflow dags list --output plain 2>/dev/null || true)
  if grep -qw "$dag_id" <<<"$dags"; then break; fi
  sleep 5
done
grep -qw "$dag_id" <<<"$dags" || die "Airflow has not loaded $dag_id"
airflow dags unpause "$dag_id" >/dev/null

# The platform's settings, as the chart rendered them for the DAG (platform.json, docs/configuration.md).
platform_json=$(k get configmap -l "datasurface.io/platform=$platform_lower,app.kubernetes.io/instance=$release" \
  -o jsonpath='{.items[0].data.platform\.json}')
[ -n "$platform_json" ] || die "no DAG ConfigMap for platform $dag_platform"

# A one-off pod running `datasurface-job status` with the same env and Secrets as the merge job pods.
status_pod_overrides() {
  python3 - "$1" "$2" <<'PY'
import json
import sys

p, pod_name = json.loads(sys.argv[1]), sys.argv[2]
k8s, merge = p["kubernetes"], p["merge"]
env = [
    {"name": "DATASURFACE_PLATFORM", "value": p["platform"]},
    {"name": "DATASURFACE_MERGE_HOST", "value": merge["host"]},
    {"name": "DATASURFACE_MERGE_PORT", "value": str(merge["port"])},
    {"name": "DATASURFACE_MERGE_DATABASE", "value": merge["database"]},
    {"name": "DATASURFACE_MERGE_CREDENTIAL", "value": merge["credential"]},
]
for item in p["secretEnv"]:
    ref = {"name": item["secret"], "key": item["key"]}
    if item.get("optional"):
        ref["optional"] = True
    env.append({"name": item["name"], "valueFrom": {"secretKeyRef": ref}})
container = {
    "name": pod_name,  # kubectl run's own container has the pod's name: the override merges into it
    "image": k8s["image"],
    "imagePullPolicy": k8s["imagePullPolicy"],
    "args": ["status", "--limit", "10"],
    "env": env,
    "resources": k8s["resources"],
    "securityContext": k8s["containerSecurityContext"],
    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
}
spec = {
    "automountServiceAccountToken": False,
    "restartPolicy": "Never",
    "securityContext": k8s["securityContext"],
    "imagePullSecrets": [{"name": n} for n in k8s["imagePullSecrets"]],
    "containers": [container],
    "volumes": [{"name": "tmp", "emptyDir": {}}],
}
print(json.dumps({"apiVersion": "v1", "spec": spec}))
PY
}

show_status() {
  local pod
  pod="datasurface-status-$(date +%s)"
  k run "$pod" --image="$image" --restart=Never --overrides="$(status_pod_overrides "$platform_json" "$pod")" \
    >/dev/null
  k wait --for=jsonpath='{.status.phase}'=Succeeded "pod/$pod" --timeout=180s >/dev/null || true
  k logs "pod/$pod" || true
  k delete pod "$pod" --wait=false >/dev/null
}

run_dag_once() {
  local run_id state
  run_id="kind-up-$(date +%Y%m%dT%H%M%S)"
  say "triggering $dag_id (run $run_id)"
  airflow dags trigger "$dag_id" --run-id "$run_id" >/dev/null
  state=queued
  for _ in $(seq 1 120); do
    state=$(airflow dags list-runs "$dag_id" --output json 2>/dev/null | python3 -c '
import json, sys
runs = [r for r in json.load(sys.stdin) if r.get("run_id") == sys.argv[1]]
print(runs[0]["state"] if runs else "queued")' "$run_id") || state=unknown
    case "$state" in success|failed) break ;; esac
    sleep 5
  done
  echo "kind-up: $dag_id run $run_id: $state" >&2
  [ "$state" = success ] || die "$dag_id did not succeed (state: $state); see the task log in the Airflow UI"
}

run_dag_once
say "$dag_platform batches after the first run"
show_status
say "letting the simulator change some rows (60 s)"
sleep 60
run_dag_once
say "$dag_platform batches after the second run: the counts show the simulator's changes merged"
show_status

cat >&2 <<EOF

kind-up: done. The pipeline runs every hour on its own from now on.
  Airflow UI:   see 'helm status $release --namespace $namespace --kube-context $context' (port-forward + admin password)
  Merge tables: schemas yellowlive and yellowforensic in the merge database
  Remove all:   scripts/kind-down.sh --name $cluster
EOF

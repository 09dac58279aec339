#!/usr/bin/env bash
# Builds the job image (image/Dockerfile) from the repository root with docker (when its engine answers),
# else podman, else buildah, and tags it datasurface-job:<version from pyproject.toml> (plus
# <registry>/datasurface-job:<version> with --registry). Prints the full image reference on the last line
# of stdout.
#
# Usage: scripts/build-image.sh [--registry REG] [--tag TAG] [--push] [--platform P] [--builder B]
#                               [--base IMAGE] [--ca-bundle FILE] [--no-cache]
#   --registry REG    also tag (and with --push, push) REG/datasurface-job:TAG, e.g. ghcr.io/me
#   --tag TAG         the tag (default: the version in pyproject.toml)
#   --push            push the registry tag (needs --registry; log in first: docker/podman login)
#   --platform P      target platform(s), e.g. linux/amd64 (passed to the builder)
#   --builder B       docker | podman | buildah (default: the first one that can build, in that order)
#   --base IMAGE      the Python base image (default: the Dockerfile's pinned python:3.11.x-slim-bookworm),
#                     e.g. the stand-in from scripts/standin-base.sh where no image can be pulled
#   --ca-bundle FILE  the CA bundle pip trusts inside the build, passed as the build secret pip-ca (default:
#                     the `cert` of this machine's pip configuration, if any; `none`: pip's own bundle)
#   --no-cache        rebuild every step (picks up new Debian security fixes)
# Env: IMAGE_NAME (default datasurface-job), BUILDAH_ISOLATION (default chroot: buildah runs the RUN steps
# in a chroot, which works without a container runtime or user namespaces), PYTHON (default python3: whose
# pip configuration names the CA bundle).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=${IMAGE_NAME:-datasurface-job}
registry=""
tag=""
push=false
platform=""
builder=""
base=""
ca_bundle=""
no_cache=false

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry=${2:?--registry needs a value}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --push) push=true; shift ;;
    --platform) platform=${2:?--platform needs a value}; shift 2 ;;
    --builder) builder=${2:?--builder needs a value}; shift 2 ;;
    --base) base=${2:?--base needs a value}; shift 2 ;;
    --ca-bundle) ca_bundle=${2:?--ca-bundle needs a value}; shift 2 ;;
    --no-cache) no_cache=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

# The version: `version = "..."` in the [project] table of pyproject.toml.
project_version() {
  awk -F'"' '/^\[/ { in_project = ($0 == "[project]") } in_project && /^version *=/ { print $2; exit }' \
    "$root/pyproject.toml"
}
version=$(project_version)
[ -n "$version" ] || die "no [project] version in pyproject.toml"
[ -n "$tag" ] || tag=$version

# docker counts only when its engine answers: a machine may have the client without a daemon.
usable() {
  command -v "$1" >/dev/null 2>&1 || return 1
  [ "$1" != docker ] || docker info >/dev/null 2>&1
}
if [ -z "$builder" ]; then
  for candidate in docker podman buildah; do
    if usable "$candidate"; then builder=$candidate; break; fi
  done
fi
[ -n "$builder" ] || die "none of docker (with a running engine), podman or buildah is installed"
command -v "$builder" >/dev/null 2>&1 || die "$builder is not installed"
if [ "$push" = true ] && [ -z "$registry" ]; then die "--push needs --registry"; fi

local_ref="$name:$tag"
remote_ref=""
[ -z "$registry" ] || remote_ref="${registry%/}/$name:$tag"

# The CA bundle: pip's `cert` setting (from PIP_CERT or a pip config file), read when the script runs.
pip_cert() {
  "${PYTHON:-python3}" -m pip config list 2>/dev/null | sed -n "/^[^=]*\.cert='.*'\$/{s/^[^=]*\.cert='\(.*\)'\$/\1/p;q;}"
}
[ -n "$ca_bundle" ] || ca_bundle=$(pip_cert || true)
[ "$ca_bundle" != none ] || ca_bundle=""
[ -z "$ca_bundle" ] || [ -r "$ca_bundle" ] || die "CA bundle $ca_bundle is not a readable file"

revision=$(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
build_args=(
  --file "$root/image/Dockerfile"
  --build-arg "VERSION=$version"
  --build-arg "REVISION=$revision"
  --build-arg "CREATED=$created"
  --tag "$local_ref"
)
[ -z "$remote_ref" ] || build_args+=(--tag "$remote_ref")
[ -z "$platform" ] || build_args+=(--platform "$platform")
[ -z "$base" ] || build_args+=(--build-arg "PYTHON_IMAGE=$base")
[ -z "$ca_bundle" ] || build_args+=(--secret "id=pip-ca,src=$ca_bundle")
[ "$no_cache" = false ] || build_args+=(--no-cache)

echo "build-image: building $local_ref with $builder" >&2
case "$builder" in
  docker|podman) "$builder" build "${build_args[@]}" "$root" >&2 ;;
  # --layers: reuse unchanged steps on a rebuild, as docker and podman do by default; --force-rm: no
  # working containers left behind by a failed step
  buildah) buildah build --isolation "${BUILDAH_ISOLATION:-chroot}" --layers --force-rm "${build_args[@]}" "$root" >&2 ;;
  *) die "unknown builder: $builder (docker, podman or buildah)" ;;
esac

if [ "$push" = true ]; then
  echo "build-image: pushing $remote_ref" >&2
  "$builder" push "$remote_ref" >&2
fi

printf '%s\n' "${remote_ref:-$local_ref}"

#!/usr/bin/env bash
# Builds the job image (image/Dockerfile) from the repository root with docker, else podman, else buildah,
# and tags it datasurface-job:<version from pyproject.toml> (plus <registry>/datasurface-job:<version>
# with --registry). Prints the full image reference on the last line of stdout.
#
# Usage: scripts/build-image.sh [--registry REG] [--tag TAG] [--push] [--platform P] [--builder B]
#   --registry REG   also tag (and with --push, push) REG/datasurface-job:TAG, e.g. ghcr.io/me
#   --tag TAG        the tag (default: the version in pyproject.toml)
#   --push           push the registry tag (needs --registry; log in first: docker/podman login)
#   --platform P     target platform(s), e.g. linux/amd64 (passed to the builder)
#   --builder B      docker | podman | buildah (default: the first one found, in that order)
# Env: IMAGE_NAME (default datasurface-job).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
name=${IMAGE_NAME:-datasurface-job}
registry=""
tag=""
push=false
platform=""
builder=""

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { printf 'build-image: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --registry) registry=${2:?--registry needs a value}; shift 2 ;;
    --tag) tag=${2:?--tag needs a value}; shift 2 ;;
    --push) push=true; shift ;;
    --platform) platform=${2:?--platform needs a value}; shift 2 ;;
    --builder) builder=${2:?--builder needs a value}; shift 2 ;;
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

if [ -z "$builder" ]; then
  for candidate in docker podman buildah; do
    if command -v "$candidate" >/dev/null 2>&1; then builder=$candidate; break; fi
  done
fi
[ -n "$builder" ] || die "none of docker, podman or buildah is installed"
command -v "$builder" >/dev/null 2>&1 || die "$builder is not installed"
if [ "$push" = true ] && [ -z "$registry" ]; then die "--push needs --registry"; fi

local_ref="$name:$tag"
remote_ref=""
[ -z "$registry" ] || remote_ref="${registry%/}/$name:$tag"

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

echo "build-image: building $local_ref with $builder" >&2
case "$builder" in
  docker|podman) "$builder" build "${build_args[@]}" "$root" >&2 ;;
  buildah) buildah build "${build_args[@]}" "$root" >&2 ;;
  *) die "unknown builder: $builder (docker, podman or buildah)" ;;
esac

if [ "$push" = true ]; then
  echo "build-image: pushing $remote_ref" >&2
  "$builder" push "$remote_ref" >&2
fi

printf '%s\n' "${remote_ref:-$local_ref}"

#!/usr/bin/env bash
# Builds, or reuses, a stand-in for the job image's base (python:3.11.x-slim-bookworm) on a machine that
# cannot pull images: Debian bookworm with Debian's own python3.11, pip and venv, made with mmdebstrap and
# committed with buildah. Prints the image reference on the last line of stdout; pass it on with
#   scripts/build-image.sh --builder buildah --base "$(scripts/standin-base.sh)"
#
# Usage: scripts/standin-base.sh [--rebuild]
#   --rebuild   build it again even if an image of the same recipe exists (e.g. for new security fixes)
# Env: DEBIAN_MIRROR (default http://deb.debian.org/debian), DEBIAN_SECURITY_MIRROR
#      (default http://deb.debian.org/debian-security).
#
# The image's tag is a hash of its recipe (suite, packages, dpkg filters, config, mirrors), so the
# buildah image store is the cache: the same recipe on the same machine is built once (about 1.5 min),
# and a changed recipe gets a new tag. Needs root, mmdebstrap and buildah.
set -euo pipefail

name=localhost/datasurface-standin-python
rebuild=false
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }
die() { printf 'standin-base: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild) rebuild=true; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done

# --- the recipe: everything that decides the image's content ------------------------------------------
suite=bookworm
# What python:3.11-slim-bookworm has beyond Debian's minimal system: CA certificates, netbase, tzdata,
# a Python 3.11 with pip and venv, and `python` on PATH.
packages=ca-certificates,netbase,tzdata,python3.11,python3.11-venv,python3-pip,python-is-python3
# Like Debian's slim container images (debuerreotype's slimify lists, which python:3.11-slim-bookworm's
# debian:bookworm-slim is made with): dpkg without fsync (force-unsafe-io, also much faster here), and
# no documentation, man pages, info pages or translations (copyright files and locale.alias stay). The
# filters stay in the image (/etc/dpkg/dpkg.cfg.d/99mmdebstrap), so packages installed on top of it
# are filtered the same way, as on the real base.
dpkg_filters=(
  'force-unsafe-io'
  'path-exclude=/usr/share/doc/*'
  'path-include=/usr/share/doc/*/copyright'
  'path-exclude=/usr/share/info/*'
  'path-exclude=/usr/share/linda/*'
  'path-exclude=/usr/share/lintian/overrides/*'
  'path-exclude=/usr/share/locale/*'
  'path-include=/usr/share/locale/all_languages'
  'path-include=/usr/share/locale/currency/*'
  'path-include=/usr/share/locale/l10n/*'
  'path-include=/usr/share/locale/languages'
  'path-include=/usr/share/locale/locale.alias'
  'path-exclude=/usr/share/man/*'
  'path-exclude=/usr/share/doc/kde/HTML/*/*'
  'path-include=/usr/share/doc/kde/HTML/C/*'
  'path-exclude=/usr/share/gnome/help/*/*'
  'path-include=/usr/share/gnome/help/*/C/*'
  'path-exclude=/usr/share/omf/*/*-*.emf'
  'path-include=/usr/share/omf/*/*-C.emf'
)
config=(
  --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --env LANG=C.UTF-8
  --cmd python3
  --label "org.opencontainers.image.description=Stand-in for python:3.11-slim-bookworm: Debian $suite with Debian's python3.11 (scripts/standin-base.sh)"
)
sources=(
  "deb $mirror $suite main"
  "deb $mirror $suite-updates main"
  "deb $security_mirror $suite-security main"
)

recipe=$(printf '%s\n' "$suite" "$packages" "${dpkg_filters[@]}" "${config[@]}" "${sources[@]}" merged-usr)
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
ref="$name:3.11-$suite-$key"

command -v buildah >/dev/null 2>&1 || die "buildah is not installed (apt-get install buildah)"
if [ "$rebuild" = false ] && buildah inspect --type image "$ref" >/dev/null 2>&1; then
  echo "standin-base: reusing $ref" >&2
  printf '%s\n' "$ref"
  exit 0
fi
command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is not installed (apt-get install mmdebstrap)"
[ "$(id -u)" = 0 ] || die "needs root (mmdebstrap --mode=root, buildah's image store)"

work=$(mktemp -d)
container=""
cleanup() {
  [ -z "$container" ] || buildah rm "$container" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "standin-base: building $ref (mmdebstrap $suite)" >&2
dpkg_opts=()
for filter in "${dpkg_filters[@]}"; do dpkg_opts+=(--dpkgopt="$filter"); done
# merged-usr: /bin, /lib, /sbin are links into /usr, as on bookworm images (without the hook, the
# usrmerge package and a full perl come along).
mmdebstrap --variant=apt --mode=root --format=tar --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --include="$packages" "${dpkg_opts[@]}" "$suite" "$work/rootfs.tar" "${sources[@]}" </dev/null >&2

container=$(buildah from scratch)
buildah add --quiet "$container" "$work/rootfs.tar" / >&2
buildah config "${config[@]}" "$container" >&2
buildah commit --quiet --rm "$container" "$ref" >&2
container=""
# Stand-ins of older recipes go (one still in use by an image stays).
buildah images --noheading --format '{{.Name}}:{{.Tag}}' --filter "reference=$name" | while read -r old; do
  [ "$old" = "$ref" ] || buildah rmi "$old" >/dev/null 2>&1 || true
done
printf '%s\n' "$ref"

#!/usr/bin/env bash
# Builds (once) a Debian 12 root with PyTorch, torchvision and numpy from Debian's
# archive, standing in for a user's training server. Prints the root's path.
# The root is cached under $ENVSNAP_FIXTURE_CACHE (default /var/cache/envsnap-tests),
# keyed by the SHA-256 of this recipe, so a changed recipe builds a new root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${ENVSNAP_FIXTURE_CACHE:-/var/cache/envsnap-tests}

packages="python3,python3-torch,python3-torchvision,python3-numpy,python3-pil,ca-certificates"
recipe="mmdebstrap bookworm variant=minbase include=$packages $(sha256sum "$0" | cut -c1-64)"
key=$(printf '%s' "$recipe" | sha256sum | cut -c1-16)
dest="$cache/torch-root-$key"

if [ -f "$dest/.complete" ]; then
  echo "$dest/root"
  exit 0
fi

# The host's own apt sources, so the fixture uses whatever archive this machine uses.
sources=$(mktemp --suffix=.sources)
trap 'rm -f "$sources"' EXIT
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] && grep -q 'Suites:.*bookworm' "$f" && { cat "$f"; echo; } >> "$sources"
done
if [ ! -s "$sources" ] && [ -f /etc/apt/sources.list ]; then
  mv "$sources" "$sources.list"; sources="$sources.list"
  grep -E '^deb ' /etc/apt/sources.list > "$sources"
fi

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build-XXXXXX")
echo "envsnap fixture: building the PyTorch root with mmdebstrap (cached afterwards)..." >&2
mmdebstrap --quiet --variant=minbase --include="$packages" \
  --aptopt='Acquire::Check-Valid-Until "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  bookworm "$tmp/root" "$sources" >&2
touch "$tmp/.complete"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "$dest/root"

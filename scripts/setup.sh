#!/usr/bin/env bash
# Installs everything envsnap's build, demo and tests need, from Debian's archive,
# then configures and builds into ./build. Safe to run again: it only installs
# what is missing and rebuilds what changed.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  build-essential cmake ninja-build ccache pkg-config git ca-certificates
  libcli11-dev nlohmann-json3-dev libfmt-dev libssl-dev
  libarchive-dev libdeflate-dev libisal-dev isal libzstd-dev libcurl4-openssl-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  python3 python3-pytest python3-jsonschema
  mmdebstrap debian-archive-keyring fuse-overlayfs
  skopeo umoci podman runc crun docker.io busybox-static zstd gzip qemu-user
  docker-registry apache2-utils openssl tini python3-yaml
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q '^install ok installed$' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "envsnap setup: these packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

launcher=()
command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo "${launcher[@]}" >/dev/null
ninja -C build

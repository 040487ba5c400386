#!/usr/bin/env bash
# The main job, end to end on real environments: installs and builds envsnap,
# builds a Debian root with PyTorch standing in for a training server, captures
# this machine and that root into locks, shows them, and diffs them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
root=$(scripts/fixture-torch-root.sh)
out=${ENVSNAP_DEMO_DIR:-demo-out}
mkdir -p "$out"
bin=build/envsnap

echo "== envsnap capture / --lock-only (this machine)"
"$bin" capture / --lock-only -o "$out/host.lock.json" --quiet
"$bin" show "$out/host.lock.json"

echo
echo "== envsnap capture <PyTorch root> --lock-only"
"$bin" capture "$root" --lock-only -o "$out/torch-root.lock.json"
"$bin" show "$out/torch-root.lock.json"

echo
echo "== envsnap diff host torch-root (exit 1 means they differ)"
"$bin" diff "$out/host.lock.json" "$out/torch-root.lock.json" | head -n 40 || true

cat <<MSG

The locks are in $out/. Next:
  $bin diff $out/torch-root.lock.json $root     # a root against its lock: exit 0 when unchanged
  $bin show --json $out/host.lock.json          # machine-readable
MSG

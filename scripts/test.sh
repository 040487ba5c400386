#!/usr/bin/env bash
# Runs every test: installs what is missing (scripts/setup.sh), builds, then runs
# the unit tests and the end-to-end tests (real PyTorch root, real CUDA tree,
# fake and real NVML). Tests that need a GPU print "skipped: no GPU" without one.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
# Build the cached PyTorch root up front so its time is not charged to one test.
scripts/fixture-torch-root.sh >/dev/null
jobs=$(nproc)
ctest --test-dir build --output-on-failure --no-tests=error -j "$jobs" "$@"

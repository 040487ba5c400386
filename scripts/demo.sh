#!/usr/bin/env bash
# The main job, end to end on a real environment: installs and builds envsnap, builds
# a Debian root with PyTorch standing in for a training server, captures it into a
# snapshot (lock + OCI image) in the store, shows it, and trains a small model inside
# the restored snapshot with `envsnap run`, the example code mounted from this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
root=$(scripts/fixture-torch-root.sh)
out=${ENVSNAP_DEMO_DIR:-demo-out}
mkdir -p "$out/ckpt"
ckpt=$(realpath "$out/ckpt")
bin=build/envsnap
ref=demo/torch-train:v1

echo "== envsnap capture <PyTorch root> -t $ref"
"$bin" capture "$root" -t "$ref"

echo
echo "== envsnap show $ref"
"$bin" show "$ref" | head -n 40

echo
echo "== envsnap run --rm -v ./examples:/work:ro -v $ckpt:/ckpt $ref -- python3 /work/train.py"
"$bin" run --rm -v ./examples:/work:ro -v "$ckpt:/ckpt" "$ref" -- python3 /work/train.py

echo
echo "== envsnap ls"
"$bin" ls

cat <<MSG

The checkpoint is in $ckpt/. Next:
  $bin export $ref -o torch-train-v1.tar.gz        # docker load / podman load read it
  $bin push $ref registry.example:5000/team/torch-train:v1
  $bin run registry.example:5000/team/torch-train:v1 --gpus all -- python3 train.py   # on any GPU host
  $bin cdi -o /etc/cdi/nvidia.json                 # podman run --device nvidia.com/gpu=all ...
MSG

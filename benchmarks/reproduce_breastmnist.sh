#!/usr/bin/env bash
# Reproduce MedMNIST v2 BreastMNIST, ResNet-18 (28), 3 seeds, paper protocol (100 epochs), on the GPU.
# Published: AUC 0.901, ACC 0.863. Expected wall time on an H100: well under 5 minutes.
# Usage: benchmarks/reproduce_breastmnist.sh [DATA_ROOT] [DEVICE] [extra reproduce flags, e.g. --size 224 --arch resnet50]
set -euo pipefail
ROOT="${1:-.devdata/medmnist}"
DEVICE="${2:-cuda}"
shift $(( $# < 2 ? $# : 2 ))
RESULTS="${RESULTS:-/tmp/medtransfer-fidelity-results}"
start=$(date +%s)
python cli.py reproduce medmnist-v2 --dataset medmnist:breastmnist --root "$ROOT" --seeds 3 --device "$DEVICE" \
  --results "$RESULTS" --overwrite "$@"
echo "wall seconds: $(( $(date +%s) - start ))"

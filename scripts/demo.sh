#!/usr/bin/env bash
# Install and run the main job: generate a synthetic 3D volume, segment it lazily with the bundled
# 3D model (exact and naive tiling), and write zarr outputs, figures and a report to ./shiftseg-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}" .venv/bin/shiftseg demo -o "${1:-shiftseg-demo}"

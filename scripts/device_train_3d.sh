#!/usr/bin/env bash
# A wider 3D nuclei model (base 32, l = 2), trained in one go on a lent GPU, then scored on the
# dev stacks. Issue 24's crowded 8 px stack needs a better 3D network than the 2 CPU cores here
# can train (benchmarks/RESULTS.md sections 17-18); this is the run prepared for a session that
# is lent a device (docs/MODELS.md, "A wider 3D model on a GPU").
#
# There (the device image has torch, numpy, scipy, scikit-image, safetensors and tifffile):
# carry wheels of dask, partd, locket, tblib, zarr, numcodecs, donfig, google-crc32c,
# imagecodecs and lazy-importer (versions as in .venv) as the device README says, install
# them, then:  OUT=$OUT bash scripts/device_train_3d.sh
# Here, a smoke run of the same commands (8 min on 2 cores, most of it the tuning and the dev
# stacks): STEPS=4 POOL=4 DEVICE=cpu PY=.venv/bin/python OUT=/tmp/w bash scripts/device_train_3d.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:?set OUT to a folder for the models and logs}
STEPS=${STEPS:-3000}
POOL=${POOL:-96}
DEVICE=${DEVICE:-cuda}
mkdir -p "$OUT"
common=(--window 36 --batch-size 2 --object-diameter 14 --pool "$POOL" --device "$DEVICE")
# 1. a new network on the synthetic pool (as the shipped model's stage 1, twice as wide)
"$PY" scripts/train_bundled.py 3d --levels 2 --base-channels 32 --steps "$STEPS" --seed 0 \
    "${common[@]}" -o "$OUT/wide_stage1.safetensors" | tee "$OUT/stage1.log"
# 2. continued on realistic stacks, half of them small and crowded (the shipped model's last stages)
"$PY" scripts/train_bundled.py 3d --init "$OUT/wide_stage1.safetensors" --steps "$STEPS" --lr 3e-4 \
    --seed 9 --realistic-fraction 0.6 --realistic-small-fraction 0.5 --delta-v 0.25 "${common[@]}" \
    -o "$OUT/wide_3d.safetensors" | tee "$OUT/stage2.log"
# 3. the dev stacks (never the benchmark's), against the shipped model
"$PY" benchmarks/bench_volumes.py --dev --model "$OUT/wide_3d.safetensors" | tee "$OUT/dev_wide.log"

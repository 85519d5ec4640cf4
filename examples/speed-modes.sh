#!/usr/bin/env bash
# What the speed modes cost: one prompt, one seed, DeepCache intervals across and token
# merging ratios down, in one call (the model is loaded once). Cell (0, 0) is the exact
# image; every other cell says in its metadata which modes made it, and the time table on
# stderr (and in the explorer page) shows what each one saved. Then a --fast draft with
# the tiny VAE, the quickest way to look at a prompt.
#
#   bash examples/speed-modes.sh
#   PROMPT="a red teapot on a wooden table" SEED=7 bash examples/speed-modes.sh
#   DEEPCACHE=0,2,3,5 TOME=0,0.3,0.5,0.6 bash examples/speed-modes.sh
#
# TINY_VAE=1 also decodes the draft with TAESD, which needs `mlc setup sd taesd` once.
# Measured speed-ups and pixel deviations: docs/benchmarks.md#speed-modes.
set -euo pipefail

NAME="${MLC_NAME:-sd}"
PROMPT="${PROMPT:-a photo of a pink cube, black background}"
SEED="${SEED:-42}"
DEEPCACHE="${DEEPCACHE:-0,2,3,5}"
TOME="${TOME:-0,0.3,0.5}"
OUTDIR="${OUTDIR:-outputs/speed-modes}"

mlc txt2img "$NAME" \
  --prompt "$PROMPT" \
  --seed "$SEED" \
  --x "deepcache=$DEEPCACHE" \
  --y "tome=$TOME" \
  --outdir "$OUTDIR" "$@"
echo "grid and explorer page: $OUTDIR/ in the container's workspace (grid-NNNN.png, explore-NNNN.html)"

tiny=()
[ "${TINY_VAE:-0}" = 1 ] && tiny=(--tiny_vae)  # after `mlc setup sd taesd`
mlc txt2img "$NAME" --prompt "$PROMPT" --seed "$SEED" --fast --deepcache 3 "${tiny[@]}" \
  --n_samples 1 --n_iter 1 --outdir "$OUTDIR/draft" "$@"
echo "draft: $OUTDIR/draft/samples/"

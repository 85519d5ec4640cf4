#!/usr/bin/env bash
# The seed's single-image commands, with mlc.
#
#   bash examples/seed-2-single.sh                          # after seed-1-setup.sh
#   bash examples/seed-2-single.sh --H 128 --W 128 --ddim_steps 10   # quicker (demo model)
#
# Extra arguments are appended to both runs; a flag given twice takes its last value.
# Images land in the container's workspace, under outputs/txt2img-samples/samples/.
set -euo pipefail

NAME="${MLC_NAME:-sd}"

# One 512x512 image with PLMS, no grid.
mlc txt2img "$NAME" --prompt "a photo of a pink cube, black background" --plms --skip_grid --n_samples 1 "$@"

# A wider image: 768x512. The other flags keep their defaults (3 images per batch,
# 2 batches, a grid of all 6).
mlc txt2img "$NAME" \
  --prompt "a photo of a pink cube, black background" \
  --W 768 --H 512 \
  --plms "$@"

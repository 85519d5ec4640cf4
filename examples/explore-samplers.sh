#!/usr/bin/env bash
# A sampler x steps exploration: one prompt, one seed, every combination of five samplers
# and five step counts, in one call (the model is loaded once). Writes each cell as its own
# PNG, a labelled grid (samplers across, steps down) and an explorer page beside it.
#
#   bash examples/explore-samplers.sh
#   PROMPT="a red teapot on a wooden table" SEED=7 bash examples/explore-samplers.sh
#   SAMPLERS=ddim,dpmpp_2m_karras,unipc STEPS=8,15,25 bash examples/explore-samplers.sh
#   bash examples/explore-samplers.sh --scale 9     # extra flags go to every cell
#
# Pick the seed first (a fast sampler at few steps, several seeds: see docs/guide.md),
# then keep it fixed here so only the sampler and the step count change between cells.
# 25 cells: with SD v1.5 at 512x512 that is a few minutes on a recent GPU.
set -euo pipefail

NAME="${MLC_NAME:-sd}"
PROMPT="${PROMPT:-a photo of a pink cube, black background}"
SEED="${SEED:-42}"
SAMPLERS="${SAMPLERS:-ddim,plms,dpm_solver,lms,euler_a}"
STEPS="${STEPS:-10,20,30,50,80}"
OUTDIR="${OUTDIR:-outputs/explore-samplers}"

mlc txt2img "$NAME" \
  --prompt "$PROMPT" \
  --seed "$SEED" \
  --x "sampler=$SAMPLERS" \
  --y "steps=$STEPS" \
  --outdir "$OUTDIR" "$@"
echo "grid and explorer page: $OUTDIR/ in the container's workspace (grid-NNNN.png, explore-NNNN.html)"

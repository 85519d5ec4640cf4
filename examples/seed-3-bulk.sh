#!/usr/bin/env bash
# The seed's bulk run, with mlc: every prompt of a file, the model loaded once.
#
#   bash examples/seed-3-bulk.sh                       # uses examples/prompts.txt
#   PROMPTS=my-prompts.txt bash examples/seed-3-bulk.sh
#   bash examples/seed-3-bulk.sh --ddim_steps 20       # extra flags override the seed's
#
# `mlc txt2img` runs in the container's /workspace, so the prompt file is copied into the
# workspace first. Each line makes one image per iteration, --n_samples lines at a time:
# 10 prompts x 3 iterations = 30 images, 100 steps each.
set -euo pipefail

NAME="${MLC_NAME:-sd}"
PROMPTS="${PROMPTS:-$(dirname "${BASH_SOURCE[0]}")/prompts.txt}"

workspace="$(mlc list --json | python3 -c '
import json, sys
name = sys.argv[1]
print(next(c["workspace"] for c in json.load(sys.stdin) if c["name"] == name))
' "$NAME")"
cp "$PROMPTS" "$workspace/prompts.txt"

mlc txt2img "$NAME" \
  --from-file prompts.txt \
  --outdir outputs/bulk-images \
  --skip_grid \
  --ddim_steps 100 \
  --n_iter 3 \
  --W 512 \
  --H 512 \
  --n_samples 3 \
  --scale 8.0 \
  --seed 119 "$@"
echo "images: $workspace/outputs/bulk-images/samples/"

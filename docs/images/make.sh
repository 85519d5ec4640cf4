#!/usr/bin/env bash
# Remake the parameter guide's pictures (docs/parameters.md) with the demo model that ships
# with mlc: a tiny model trained on synthetic shapes, not Stable Diffusion, at its native
# 128x128. Each grid is reduced to 96 colours to keep the pages light.
#
#   bash docs/images/make.sh        # from the repository root, with mlc's engine installed
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
CKPT="src/mlc/engine/shapes/weights/mlc-shapes.safetensors"
PROMPT="a photo of a pink cube, black background"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

grid() {  # NAME FLAGS...: one labelled grid into docs/images/NAME.png
  local name=$1
  shift
  python3 -m mlc.engine.txt2img --ckpt "$CKPT" --prompt "$PROMPT" --seed 42 \
    --outdir "$WORK/$name" --n_samples 1 --n_iter 1 "$@" >/dev/null
  python3 - "$WORK/$name" "docs/images/$name.png" <<'PY'
import sys
from pathlib import Path
from PIL import Image
(grid,) = sorted(Path(sys.argv[1]).glob("grid-*.png"))
Image.open(grid).convert("RGB").quantize(96).save(sys.argv[2], optimize=True)
print(sys.argv[2])
PY
}

grid cfg-series --ddim_steps 10 --x scale=1,2.5,5,7.5,12
grid sampler-steps --x sampler=ddim,plms,dpm_solver,euler_a --y steps=5,10,20
grid seeds --sampler dpm_solver --ddim_steps 12 --x seed=1,2,3,4,5,6,7,8

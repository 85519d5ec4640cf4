#!/bin/bash
# The GPU checks of docs/benchmarks.md in one call, for a lent GPU machine that has torch
# with CUDA but no network and no diffusers (the project's device machines): the seed's full
# benchmark against plain diffusers, the same with --compile, the speed modes at 512x512,
# and --low_vram's peak memory. Figures go to $OUT (JSON) and stdout.
#
#   make gpu-wheels                      # here, once: diffusers' wheel into .whl/ (ignored)
#   bash tests/support/gpu-check.sh      # there, with .whl carried; about 6-8 minutes on an H100
#
# Tried on this project's CPU machine (172 s) with MLC_GPU_CHECK_CKPT=<tiny demo model>
# GPU_CHECK_FLAGS='--H 64 --W 64 --ddim_steps 2' OUT=... WORK=... MLC_CACHE_DIR=...
#
# GPU_CHECK_FLAGS adds flags to every run (e.g. '--H 256 --W 256 --ddim_steps 2' to try the
# script on a CPU first).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/mlc-gpu-check}"  # the JSON files (the device tool's $OUT)
WORK="${WORK:-/tmp/mlc-gpu-work}"  # images and everything else
mkdir -p "$OUT" "$WORK"
site="$PWD/.whl/site"
if ! python3 -c "import diffusers" 2>/dev/null; then
  [ -d "$site/diffusers" ] || python3 -m pip install -q --no-deps --no-index --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export MLC_BENCH_DIR="${MLC_BENCH_DIR:-/tmp/mlc-bench}" MLC_CACHE_DIR="${MLC_CACHE_DIR:-/tmp/mlc-cache}"
read -r -a extra <<< "${GPU_CHECK_FLAGS:-}"
run() { echo "+ mlc-txt2img $*" >&2; python3 -m mlc.engine.txt2img "$@" "${extra[@]}"; }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'transformers', \
transformers.__version__)"
start=$SECONDS
ckpt="${MLC_GPU_CHECK_CKPT:-$(python3 -m mlc.engine.fullsize)}"  # another checkpoint: to try the script
echo "checkpoint ready in $((SECONDS - start)) s: $ckpt"

run --bench --baseline diffusers --ckpt "$ckpt" --bench_repeat 2 \
  --outdir "$WORK/seed" --bench_json "$OUT/bench-seed.json"
run --bench --baseline diffusers --ckpt "$ckpt" --compile \
  --outdir "$WORK/compile" --bench_json "$OUT/bench-compile.json"
run --bench --ckpt "$ckpt" --low_vram --n_iter 2 --bench_warmup 1 \
  --outdir "$WORK/lowvram" --bench_json "$OUT/bench-lowvram.json"
run --bench --bench_modes --ckpt "$ckpt" --bench_repeat 2 \
  --outdir "$WORK/modes" --bench_json "$WORK/modes/bench-modes.json"
cp "$WORK/modes/bench-modes.json" "$OUT/"
echo "all checks done in $((SECONDS - start)) s; JSON in $OUT"

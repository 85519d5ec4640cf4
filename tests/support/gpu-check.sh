#!/bin/bash
# The GPU checks of docs/benchmarks.md (issue 12) in one call, for a lent GPU machine with
# torch and CUDA but no network and no diffusers (the project's device machines). Within
# GPU_CHECK_BUDGET seconds (default 350, under 6 minutes with the checkpoint) it runs these
# stages in order, each under its own time limit (`timeout`), so a slow stage cannot eat the
# rest; a stage that would start with less than 20 s left is skipped:
#
#   checkpoint    build the full-size random SD v1.5 .ckpt (python -m mlc.engine.fullsize)
#   probe         one process (tests/support/gpu_probe.py): eager vs CUDA-graph steps (speed,
#                 capture cost, identical latents), the first image after a 2-step warm-up,
#                 where a VAE decode's time goes, and the contract with diffusers' fp16 pipeline
#   seed          the seed's benchmark against plain diffusers (--bench --baseline diffusers)
#   load          the first loading.load() in a process against the second, and the imports
#                 before it (tests/support/load_twice.py; fp16 on CUDA)
#   compile-cold  --bench --compile with empty compile caches: compile time, s/image
#   compile-warm  the same in a fresh process whose only cache is the artefact file the cold
#                 run wrote ($MLC_CACHE_DIR/compiled; inductor and Triton folders emptied, as
#                 in another container): cache hit, launch -> first compiled step done
#   modes         the speed modes against the exact image (--bench --bench_modes)
#   low-vram      --low_vram's peak device memory and time (CUDA only)
#   native        the engine's own models against diffusers'/transformers' classes from the
#                 same cache entry: bit-identical outputs? (tests/support/native_vs_library.py)
#
# Results go to $OUT: each stage's JSON and log, stages.tsv, and gpu-check.json + gpu-check.md
# (tests/support/gpu_probe.py summary), the table also on stdout. Without CUDA the GPU-only
# stages (compile-cold, compile-warm, low-vram) say "skipped: no CUDA"; the probe skips its
# graphs.
#
#   make gpu-wheels                      # here, once: diffusers' wheel into .whl/ (ignored)
#   bash tests/support/gpu-check.sh      # there, with .whl carried
#
# Try it on a CPU first, small (about 3 minutes on this project's 2-core machine):
#   MLC_GPU_CHECK_CKPT=<tiny model .safetensors> GPU_CHECK_FLAGS='--H 64 --W 64 --ddim_steps 2' \
#   OUT=/tmp/gc-out WORK=/tmp/gc-work MLC_CACHE_DIR=/tmp/gc-cache bash tests/support/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT="${OUT:-/tmp/mlc-gpu-check}"  # the JSON files (the device tool's $OUT)
WORK="${WORK:-/tmp/mlc-gpu-work}"  # images and everything else
BUDGET="${GPU_CHECK_BUDGET:-350}"
mkdir -p "$OUT/logs" "$WORK"
: > "$OUT/stages.tsv"
site="$PWD/.whl/site"
if ! python3 -c "import diffusers" 2>/dev/null; then
  [ -d "$site/diffusers" ] || python3 -m pip install -q --no-deps --no-index --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export MLC_BENCH_DIR="${MLC_BENCH_DIR:-/tmp/mlc-bench}" MLC_CACHE_DIR="${MLC_CACHE_DIR:-/tmp/mlc-cache}"
export TORCHINDUCTOR_CACHE_DIR="$MLC_CACHE_DIR/inductor" TRITON_CACHE_DIR="$MLC_CACHE_DIR/triton"
read -r -a extra <<< "${GPU_CHECK_FLAGS:-}"
start=$SECONDS

# stage NAME LIMIT CMD...: run CMD with its output in logs/NAME.log, stopped after LIMIT
# seconds (or what is left of the budget); one line in stages.tsv: name, status, seconds
stage() {
  local name=$1 limit=$2 rc t0 status
  shift 2
  local left=$((BUDGET - (SECONDS - start)))
  if ((left < 20)); then
    printf '%s\tskipped: no time left\t0\n' "$name" >> "$OUT/stages.tsv"
    echo "== $name: skipped: no time left" >&2
    return 1
  fi
  ((limit > left)) && limit=$left
  echo "== $name (at most ${limit} s)" >&2
  t0=$SECONDS
  timeout -k 10 "$limit" "$@" > "$OUT/logs/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124 | 137) status="stopped at its limit (${limit} s)" ;;
    *) status="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - t0))" >> "$OUT/stages.tsv"
  echo "   $status in $((SECONDS - t0)) s; last lines:" >&2
  tail -n 3 "$OUT/logs/$name.log" | cut -c1-200 >&2
  return $rc
}
skip() { printf '%s\tskipped: %s\t0\n' "$1" "$2" >> "$OUT/stages.tsv"; echo "== $1: skipped: $2" >&2; }
txt2img=(python3 -m mlc.engine.txt2img)

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, \
'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'transformers', \
transformers.__version__)" | tee "$OUT/versions.txt"
cuda=$(python3 -c "import torch; print(int(torch.cuda.is_available()))")

if [ -n "${MLC_GPU_CHECK_CKPT:-}" ]; then  # another checkpoint: to try the script
  ckpt=$MLC_GPU_CHECK_CKPT
  skip checkpoint "given: $ckpt"
else
  stage checkpoint 120 python3 -m mlc.engine.fullsize
  ckpt=$(tail -n 1 "$OUT/logs/checkpoint.log")
fi
if [ ! -f "$ckpt" ]; then
  echo "no checkpoint ($ckpt): nothing to measure" >&2
  python3 tests/support/gpu_probe.py summary "$OUT"
  exit 1
fi

stage probe 120 python3 tests/support/gpu_probe.py probe --ckpt "$ckpt" --out "$OUT/probe.json" "${extra[@]}"
stage seed 120 "${txt2img[@]}" --bench --baseline diffusers --ckpt "$ckpt" \
  --outdir "$WORK/seed" --bench_json "$OUT/bench-seed.json" "${extra[@]}"
# the first load in a process against the second (the converted cache built by the seed stage)
if [ "$cuda" = 1 ]; then on=(--device cuda --dtype float16); else on=(); fi
stage load 45 python3 tests/support/load_twice.py "$ckpt" "${on[@]}" --json "$OUT/load-twice.json"
if [ "$cuda" = 1 ]; then
  rm -rf "$MLC_CACHE_DIR/inductor" "$MLC_CACHE_DIR/triton" "$MLC_CACHE_DIR/compiled"
  stage compile-cold 150 "${txt2img[@]}" --bench --compile --ckpt "$ckpt" --n_iter 2 \
    --bench_warmup 1 --outdir "$WORK/compile-cold" --bench_json "$OUT/bench-compile-cold.json" \
    "${extra[@]}"
  rm -rf "$MLC_CACHE_DIR/inductor" "$MLC_CACHE_DIR/triton"  # another container: the file only
  ls -l "$MLC_CACHE_DIR/compiled" > "$OUT/logs/compiled-files.txt" 2>&1
  stage compile-warm 60 "${txt2img[@]}" --bench --compile --ckpt "$ckpt" --n_iter 2 \
    --bench_warmup 1 --outdir "$WORK/compile-warm" --bench_json "$OUT/bench-compile-warm.json" \
    "${extra[@]}"
else
  skip compile-cold "no CUDA"
  skip compile-warm "no CUDA"
fi
stage modes 60 "${txt2img[@]}" --bench --bench_modes --ckpt "$ckpt" \
  --outdir "$WORK/modes" --bench_json "$WORK/modes/bench-modes.json" "${extra[@]}"
cp "$WORK/modes/bench-modes.json" "$OUT/" 2>/dev/null  # its images stay in $WORK
if [ "$cuda" = 1 ]; then
  stage low-vram 45 "${txt2img[@]}" --bench --low_vram --ckpt "$ckpt" --n_iter 2 \
    --bench_warmup 1 --outdir "$WORK/low-vram" --bench_json "$OUT/bench-low-vram.json" \
    "${extra[@]}"
else
  skip low-vram "no CUDA"
fi

# last: a correctness check the targets above do not wait for
stage native 60 python3 tests/support/native_vs_library.py "$ckpt" "${on[@]}" --json "$OUT/native.json"

python3 tests/support/gpu_probe.py summary "$OUT"
echo "all stages done in $((SECONDS - start)) s (budget $BUDGET s); results in $OUT" >&2

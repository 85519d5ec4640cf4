#!/usr/bin/env bash
# The seed's benchmark, with mlc: one prompt, PLMS, 50 steps, 3 iterations of 1 image
# (the seed counts the first two as warm-up). `time` measures the whole call, model
# loading included; --json adds the engine's own split into load and generation time.
#
#   bash examples/seed-4-benchmark.sh
set -euo pipefail

NAME="${MLC_NAME:-sd}"

time mlc txt2img "$NAME" \
  --prompt 'a photograph of an astronaut riding a horse' \
  --scale 7.5 \
  --ddim_steps 50 \
  --n_iter 3 \
  --n_samples 1 \
  --plms \
  --outdir outputs/benchmark \
  --json "$@" | python3 -c '
import json, sys
run = json.load(sys.stdin)
t = run["timings"]
per = ", ".join("%.2f" % i["seconds"] for i in run["images"])
print("device %s (%s): model load %.2f s, generation %.2f s; per image: %s s"
      % (run["device"], run["dtype"], t["load_s"], t["generate_s"], per))
'

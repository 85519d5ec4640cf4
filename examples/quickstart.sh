#!/usr/bin/env bash
# The main job end to end, on a fresh machine: install mlc, get a Docker engine and a
# PyTorch image (built locally: no registry needed), create a container, set up a model
# (the real SD v1.5 weights when the download host answers, else the demo model that ships
# with mlc: a tiny model trained on synthetic shapes, not Stable Diffusion), and generate an
# image into the workspace. Safe to re-run.
#
#   make demo                       # or: bash examples/quickstart.sh
#   MLC_DEMO_RECIPE=demo make demo  # force the demo model
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

NAME="${MLC_DEMO_NAME:-sd-demo}"
BASE="${MLC_DEMO_DIR:-$HOME/mlc-demo}"
PYTHON="${PYTHON:-$(make -s --no-print-directory python)}"  # .venv/bin/python on PEP 668 systems
SD_URL="http://download.aime.info/public/models/stable-diffusion-v1-5-emaonly.zip"
say() { printf '\n== %s ==\n' "$*"; }

say "1/6 Docker engine"
if ! docker info >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then bash images/local/engine.sh
  else echo "no Docker engine answers: start Docker (or run this as root to install it)" >&2; exit 1; fi
fi

say "2/6 install mlc (torch pinned)"
if [ "$PYTHON" = .venv/bin/python ] && ! python3 -c "import ensurepip" 2>/dev/null \
  && [ "$(id -u)" = 0 ]; then  # Debian/Ubuntu: venv support is a separate package
  apt-get install -y --no-install-recommends python3-venv >/dev/null
fi
make --no-print-directory install PYTHON="$PYTHON" >/dev/null
echo "installed: $($PYTHON -m mlc --version)"

say "3/6 PyTorch image (built locally when missing)"
bash images/local/build.sh
export MLC_CATALOG="$PWD/images/local/catalog.yaml"

say "4/6 container $NAME"
if $PYTHON -m mlc list --json | grep -q "\"name\": \"$NAME\""; then
  echo "[$NAME] exists; reusing it"
else
  $PYTHON -m mlc create "$NAME" Pytorch 2.13.0-cpu -w "$BASE/workspace" -m "$BASE/models"
fi

say "5/6 model"
recipe="${MLC_DEMO_RECIPE:-}"
if [ -z "$recipe" ]; then
  if $PYTHON - "$SD_URL" <<'PY'
import sys, requests
try:
    r = requests.head(sys.argv[1], timeout=10, allow_redirects=True)
    sys.exit(0 if r.ok else 1)
except requests.RequestException:
    sys.exit(1)
PY
  then recipe=stable-diffusion-v1-5; echo "the SD v1.5 weights are reachable: using them (4 GB)"
  else recipe=demo; echo "the SD v1.5 weights cannot be downloaded from here: using the demo model (a tiny model trained on synthetic shapes, not Stable Diffusion)"
  fi
fi
$PYTHON -m mlc setup "$NAME" "$recipe"

say "6/6 generate"
# the demo model draws at its native 128x128 with the guidance it recommends, 2.5 (both from
# its config: the defaults when no --H/--W/--scale is given; SD v1.5: 512x512 and 7.5)
if [ "$recipe" = demo ]; then size=(--ddim_steps 20); else size=(--ddim_steps 25); fi
$PYTHON -m mlc txt2img "$NAME" --prompt "a photo of a pink cube, black background" --plms --skip_grid --n_samples 1 \
  --n_iter 1 "${size[@]}" --outdir outputs/quickstart --json > "$BASE/last-run.json"
$PYTHON - "$BASE" "$recipe" <<'PY'
import json, sys
from pathlib import Path
from PIL import Image
base, recipe = Path(sys.argv[1]), sys.argv[2]
run = json.loads((base / "last-run.json").read_text())
for f in run["files"]:
    png = base / "workspace" / f
    print(f"image: {png}")
    print("parameters:", Image.open(png).info.get("parameters", "").replace("\n", " | "))
    if recipe == "demo":  # the demo model's world is simple enough to check by pixels
        from mlc.engine.shapes.judge import read
        seen = read(Image.open(png))
        said = [v or "unclear" for v in (seen.colour, seen.shape, seen.background)]
        print(f"the judge (mlc.engine.shapes.judge) reads: colour {said[0]}, shape {said[1]}, "
              f"background {said[2]}")
PY
echo "open the container with: MLC_CATALOG=$MLC_CATALOG mlc open $NAME"

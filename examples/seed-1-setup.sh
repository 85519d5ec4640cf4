#!/usr/bin/env bash
# The seed's installation, with mlc: create a container, then make it ready to generate.
#
# The seed ran mlc-create, mlc-open, apt-get install, pip install -r requirements.txt,
# curl, unzip and rm by hand. `mlc setup` does all of that (and resumes, verifies and
# unpacks safely); re-running this script skips what is already done.
#
#   bash examples/seed-1-setup.sh                   # container "sd", workspace ~/sd
#   MLC_RECIPE=demo bash examples/seed-1-setup.sh   # tiny random model, no 4 GB download
#
# Variables: MLC_NAME (sd), MLC_WORKSPACE (~/sd), MLC_MODELS (~/sd-models),
# MLC_PYTORCH (the catalog version, 2.9.1), MLC_RECIPE (stable-diffusion-v1-5).
# The seed's image, `Pytorch 2.0.1-aime`, has Python 3.8 and torch 2.0.1; the engine needs
# Python >= 3.10 and torch >= 2.1, so this script uses a newer catalog image. `mlc images`
# lists what this host can run.
set -euo pipefail

NAME="${MLC_NAME:-sd}"
WORKSPACE="${MLC_WORKSPACE:-$HOME/sd}"
MODELS="${MLC_MODELS:-$HOME/sd-models}"
VERSION="${MLC_PYTORCH:-2.9.1}"
RECIPE="${MLC_RECIPE:-stable-diffusion-v1-5}"

if mlc list --json | grep -q "\"name\": \"$NAME\""; then
  echo "[$NAME] exists; reusing it"
else
  mlc create "$NAME" Pytorch "$VERSION" -w "$WORKSPACE" -m "$MODELS"
fi
mlc setup "$NAME" "$RECIPE"
mlc models --models-dir "$MODELS"

#!/usr/bin/env bash
# Build the local, registry-free test images for mlc (see images/local/README.md).
#
#   base:  mlctest/py311:bookworm-r1      mmdebstrap minbase bookworm + python3 | docker import
#   torch: mlctest/torch-cpu:2.13.0-r1    base + root-owned /opt/venv with torch 2.13.0+cpu,
#                                         diffusers, transformers, ... (docker run + docker commit)
#   seed:  mlctest/torch:2.0.1-r1         base + torch 2.0.1 (PyPI's wheel, with its nvidia-*-cu11
#                                         libraries) and numpy 1.x in the system Python, as root,
#                                         like AIME's Pytorch 2.0.1-aime image; nothing else
#                                         (`mlc setup` picks the engine's packages for it)
#
# Idempotent: an image that already exists is skipped. Bump RECIPE (or the
# requirement pins) to force a rebuild. Needs a running Docker engine, mmdebstrap,
# and network access to deb.debian.org and PyPI (no container registry needed).
set -euo pipefail

RECIPE="${MLC_TEST_RECIPE:-r1}"
SUITE=bookworm
TORCH_VERSION=2.13.0
BASE_IMAGE="${MLC_TEST_BASE_IMAGE:-mlctest/py311:${SUITE}-${RECIPE}}"
TORCH_IMAGE="${MLC_TEST_TORCH_IMAGE:-mlctest/torch-cpu:${TORCH_VERSION}-${RECIPE}}"
SEED_TORCH=2.0.1
SEED_IMAGE="${MLC_TEST_SEED_IMAGE:-mlctest/torch:${SEED_TORCH}-${RECIPE}}"
VENV=/opt/venv
MIRROR="${MLC_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SECURITY_MIRROR="${MLC_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}"
HOST_CA="${MLC_HOST_CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
WHEEL_DIR="${MLC_WHEEL_DIR:-/var/cache/mlc-ci/wheels}"
BUILD_CONTAINER=mlc-ci-torchbuild
SEED_CONTAINER=mlc-ci-seedbuild
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Packages of the base image: what a per-user container needs (useradd, sudo, ps, venv).
BASE_PACKAGES=python3,python3-pip,python3-venv,sudo,ca-certificates,passwd,adduser,procps,bash,less
# Top-level packages of the torch image; torch-cpu-constraints.txt pins them and all dependencies.
TORCH_PACKAGES="diffusers transformers accelerate safetensors scipy Pillow"

log() { printf '[build.sh] %s\n' "$*" >&2; }
have_image() { docker image inspect "$1" >/dev/null 2>&1; }
timed() {  # timed LABEL CMD...: run CMD, print how long it took
  local label=$1 t0=$SECONDS; shift
  "$@"
  log "$label: $((SECONDS - t0)) s"
}

docker info >/dev/null 2>&1 || { log "no Docker engine answers (docker info failed)"; exit 1; }

build_base() {
  command -v mmdebstrap >/dev/null || { log "mmdebstrap is missing: apt-get install mmdebstrap"; exit 1; }
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --aptopt='APT::Install-Recommends "false"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/archives/*.deb' \
    "$SUITE" - \
    "deb $MIRROR $SUITE main" \
    "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main" \
  | docker import \
      -c 'ENV LANG=C.UTF-8' \
      -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      -c 'CMD ["/bin/bash"]' \
      -m "mlc local test base ($SUITE minbase + python3, recipe $RECIPE)" \
      - "$BASE_IMAGE" >/dev/null
}

fetch_torch_wheel() {
  # The same wheel `pip install torch==$TORCH_VERSION` uses on this host (CPU build).
  mkdir -p "$WHEEL_DIR"
  if ! compgen -G "$WHEEL_DIR/torch-${TORCH_VERSION}*.whl" >/dev/null; then
    python3 -m pip download --quiet --no-deps "torch==$TORCH_VERSION" -d "$WHEEL_DIR"
  fi
}

build_torch() {
  local wheel
  wheel="$(cd "$WHEEL_DIR" && ls torch-"${TORCH_VERSION}"*-cp311-*.whl | head -n1)"
  [ -n "$wheel" ] || { log "no cp311 torch $TORCH_VERSION wheel in $WHEEL_DIR"; exit 1; }
  log "torch wheel: $wheel"
  case "$wheel" in
    *+cpu-*) ;;
    *) log "warning: $wheel is not a +cpu build; pip's find-links on this machine type normally"
       log "provide torch-${TORCH_VERSION}+cpu (plain PyPI's wheel pulls the CUDA libraries)" ;;
  esac
  docker rm -f "$BUILD_CONTAINER" >/dev/null 2>&1 || true
  # The host CA bundle is mounted over the image's bundle for the build only (the
  # HTTPS proxy's CA must not end up in the image: bind mounts are not committed).
  # PIP_CERT is exported inside the command, not passed with -e, so that
  # `docker commit` does not persist it.
  docker run --name "$BUILD_CONTAINER" --network host \
    -v "$WHEEL_DIR":/wheels:ro \
    -v "$HERE/torch-cpu-constraints.txt":/tmp/constraints.txt:ro \
    -v "$HOST_CA":/etc/ssl/certs/ca-certificates.crt:ro \
    "$BASE_IMAGE" bash -euc "
      export PIP_CERT=/etc/ssl/certs/ca-certificates.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
      python3 -m venv $VENV
      $VENV/bin/pip install --quiet -c /tmp/constraints.txt /wheels/$wheel $TORCH_PACKAGES
      $VENV/bin/python -c 'import torch, diffusers, transformers; print(\"torch\", torch.__version__, \"diffusers\", diffusers.__version__, \"transformers\", transformers.__version__)'
      rm -rf /root/.cache
    "
  docker commit \
    -c "ENV PATH=$VENV/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    -c "ENV VIRTUAL_ENV=$VENV" \
    -c 'CMD ["/bin/bash"]' \
    -m "mlc local test torch-cpu $TORCH_VERSION (recipe $RECIPE)" \
    "$BUILD_CONTAINER" "$TORCH_IMAGE" >/dev/null
  docker rm "$BUILD_CONTAINER" >/dev/null
}

fetch_seed_wheels() {
  # PyPI's torch 2.0.1 (the CUDA 11.7 build: it imports only with its nvidia-*-cu11 libraries,
  # ~2.2 GB of wheels in all) and its pinned dependencies, kept in the wheel cache so that a
  # rebuild downloads nothing.
  local dir="$WHEEL_DIR/torch-$SEED_TORCH"
  mkdir -p "$dir"
  python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.11 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux1_x86_64 --platform manylinux_2_28_x86_64 --implementation cp \
    -c "$HERE/torch-$SEED_TORCH-constraints.txt" -d "$dir" \
    "torch==$SEED_TORCH" numpy 2>&1 | grep -v 'is ignored' >&2 || true
  compgen -G "$dir/torch-$SEED_TORCH-cp311-*.whl" >/dev/null \
    || { log "no torch $SEED_TORCH cp311 wheel in $dir (pip download failed)"; exit 1; }
}

build_seed() {
  local dir="$WHEEL_DIR/torch-$SEED_TORCH"
  docker rm -f "$SEED_CONTAINER" >/dev/null 2>&1 || true
  # Offline from the wheel cache; the system Python as root (--break-system-packages: Debian's
  # PEP 668 marker), like AIME's image, whose torch is in Ubuntu's system Python.
  docker run --name "$SEED_CONTAINER" --network none \
    -v "$dir":/wheels:ro \
    -v "$HERE/torch-$SEED_TORCH-constraints.txt":/tmp/constraints.txt:ro \
    "$BASE_IMAGE" bash -euc "
      export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
      python3 -m pip install --quiet --break-system-packages --no-index --find-links /wheels \
        -c /tmp/constraints.txt torch==$SEED_TORCH numpy
      python3 -c 'import torch, numpy; print(\"torch\", torch.__version__, \"numpy\", numpy.__version__, torch.ones(2).sum().item())'
      rm -rf /root/.cache
    "
  docker commit -c 'CMD ["/bin/bash"]' \
    -m "mlc local test image: torch $SEED_TORCH from PyPI in the system Python (recipe $RECIPE)" \
    "$SEED_CONTAINER" "$SEED_IMAGE" >/dev/null
  docker rm "$SEED_CONTAINER" >/dev/null
}

t_all=$SECONDS
SEED_JOB=""
if [ "${MLC_TEST_SEED:-1}" != 0 ] && ! have_image "$SEED_IMAGE"; then
  # The seed's wheels (network) download while the base image builds; then its image builds
  # beside the torch-cpu one (each is mostly one pip process: two cores, two builds). A cold
  # run saves ~3 min over doing them one after the other.
  log "fetching the torch $SEED_TORCH wheels in the background"
  ( timed "torch $SEED_TORCH wheels" fetch_seed_wheels ) &
  SEED_JOB=$!
fi
if have_image "$BASE_IMAGE"; then
  log "$BASE_IMAGE exists, skipped"
else
  log "building $BASE_IMAGE (mmdebstrap | docker import)"
  timed "base image $BASE_IMAGE" build_base
fi
if [ -n "$SEED_JOB" ]; then
  wait "$SEED_JOB" || { log "fetching the torch $SEED_TORCH wheels failed"; exit 1; }
  log "building $SEED_IMAGE (docker run + docker commit) in the background"
  ( timed "seed image $SEED_IMAGE" build_seed ) &
  SEED_JOB=$!
fi
if have_image "$TORCH_IMAGE"; then
  log "$TORCH_IMAGE exists, skipped"
else
  timed "torch wheel download" fetch_torch_wheel
  log "building $TORCH_IMAGE (docker run + docker commit)"
  timed "torch image $TORCH_IMAGE" build_torch
fi
if [ -n "$SEED_JOB" ]; then
  wait "$SEED_JOB" || { log "building $SEED_IMAGE failed"; exit 1; }
elif [ "${MLC_TEST_SEED:-1}" = 0 ]; then
  log "MLC_TEST_SEED=0: $SEED_IMAGE not built"
else
  log "$SEED_IMAGE exists, skipped"
fi
log "images ready in $((SECONDS - t_all)) s: $BASE_IMAGE $TORCH_IMAGE $SEED_IMAGE"

# mlc: common tasks. `make install` then `make test`; `make demo` runs the main job end to end.
# Debian's and Ubuntu's own python3 refuse `pip install` outside a virtual environment
# (PEP 668, "externally managed"): with such a python3, make installs into and runs from .venv.
HOST_PYTHON ?= python3
MANAGED := $(shell $(HOST_PYTHON) -c 'import os, sys, sysconfig; print(int(sys.prefix == \
	sys.base_prefix and os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), \
	"EXTERNALLY-MANAGED"))))' 2>/dev/null)
ifeq ($(MANAGED),1)
PYTHON ?= .venv/bin/python
else
PYTHON ?= $(HOST_PYTHON)
endif
PIP ?= $(PYTHON) -m pip
VENV := $(if $(filter .venv/bin/python,$(PYTHON)),.venv/bin/python)
# torch is pinned in the same pip command: unpinned, pip resolves a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install install-host python test test-fast lint format demo demo-model bench bench-seed bench-modes bench-scale gpu-wheels clean

install: $(VENV)  ## everything: host CLI, engine, test tools
	$(PIP) install $(TORCH) -e '.[engine,serve,test,remote,cluster]'
	@$(if $(VENV),echo "mlc is installed in .venv: add $$PWD/.venv/bin to PATH (or source .venv/bin/activate)")

install-host: $(VENV)  ## host CLI only (no torch)
	$(PIP) install -e .

.venv/bin/python:
	@$(HOST_PYTHON) -c "import ensurepip" 2>/dev/null || { echo "$(HOST_PYTHON) cannot make a \
	virtual environment: install python3-venv (apt-get install python3-venv)" >&2; exit 1; }
	$(HOST_PYTHON) -m venv .venv

python:  ## print the Python that make uses (python3, or .venv/bin/python on PEP 668 systems)
	@echo $(PYTHON)

# `make test` installs mlc first when it is missing and, as root, prepares what the suite needs
# (tests/support/prepare.sh: Docker engine, test images, test user, Chromium); PREPARE=0 skips
# the preparation.
PREPARE ?= 1

test:  ## the whole suite, Docker tests included (they fail when CI is set and no engine runs)
	@if [ "$(PREPARE)" = 1 ] && [ "$$(id -u)" = 0 ]; then bash tests/support/prepare.sh; \
	elif [ "$(PREPARE)" = 1 ]; then echo "not root: skipping tests/support/prepare.sh"; fi
	@$(PYTHON) -c "import pytest, torch, diffusers, fastapi, uvicorn, webuiapi, mlc.cli" 2>/dev/null || $(MAKE) install
	$(PYTHON) -m pytest -q

test-fast:  ## without the Docker tests
	$(PYTHON) -m pytest -q -m "not docker"

demo:  ## the main job end to end: engine, image, container, model, an image in the workspace
	bash examples/quickstart.sh

# The demo model (docs/models.md): retrained from its fixed seed on the CPU, judged on the
# held-out prompts, and written over the shipped weights (review `git diff` before committing).
DEMO_MODEL_DIR ?= src/mlc/engine/shapes/weights

demo-model:  ## retrain the shipped demo model (tiny, synthetic shapes) from its fixed seed
	$(PYTHON) -m mlc.engine.shapes.train $(DEMO_MODEL_DIR)

# The seed's benchmark against plain diffusers, on a cached full-size SD v1.5 checkpoint with
# random weights (built once, 4.3 GB, under $MLC_BENCH_DIR or ~/.cache/mlc/bench). Reduced for
# a CPU: BENCH_FLAGS='' runs the seed's full 512x512, 50 steps, n_iter 3. See docs/benchmarks.md.
BENCH_FLAGS ?= --H 256 --W 256 --ddim_steps 2 --n_iter 2 --bench_repeat 2 --bench_warm 2
BENCH_OUT ?= outputs/bench

# The speed modes (--fast, --deepcache, --tome, --tiny_vae) against the exact image on the same
# checkpoint: speed-up and pixel deviation. MODES_FLAGS='--bench_repeat 3' for a GPU.
MODES_FLAGS ?= --H 256 --W 256 --ddim_steps 10 --bench_repeat 2

bench: bench-seed bench-modes  ## both benchmarks below (JSON in $(BENCH_OUT))

bench-seed:  ## the seed's benchmark, mlc vs plain diffusers side by side
	ckpt=$$($(PYTHON) -m mlc.engine.fullsize) && \
	$(PYTHON) -m mlc.engine.txt2img --bench --baseline diffusers --ckpt "$$ckpt" \
		--outdir $(BENCH_OUT) --bench_json $(BENCH_OUT)/bench.json $(BENCH_FLAGS)

bench-modes:  ## each speed mode against the exact image: speed-up and deviation
	ckpt=$$($(PYTHON) -m mlc.engine.fullsize) && \
	$(PYTHON) -m mlc.engine.txt2img --bench --bench_modes --ckpt "$$ckpt" \
		--outdir $(BENCH_OUT) --bench_json $(BENCH_OUT)/bench-modes.json $(MODES_FLAGS)

# Scaling: one bulk run on 1 device and on $(SCALE_DEVICES) (one engine process each), images/s
# and whether both wrote the same files. Here on the tiny demo model; on a GPU server:
# make bench-scale SCALE_DEVICES=all SCALE_CKPT=$$($(PYTHON) -m mlc.engine.fullsize) \
#   SCALE_FLAGS='--H 512 --W 512 --ddim_steps 20 --n_samples 1 --n_iter 64' SCALE_THREADS='
SCALE_DEVICES ?= cpu,cpu
SCALE_CKPT ?=
SCALE_FLAGS ?= --H 64 --W 64 --ddim_steps 10 --n_samples 1 --n_iter 24
SCALE_THREADS ?= 1

bench-scale:  ## images/s with 1 and with several devices (JSON in $(BENCH_OUT)/bench-scale.json)
	ckpt="$(SCALE_CKPT)"; [ -n "$$ckpt" ] || ckpt=$$($(PYTHON) -m mlc.engine.demo $(BENCH_OUT)/demo-model) && \
	$(if $(SCALE_THREADS),OMP_NUM_THREADS=$(SCALE_THREADS)) $(PYTHON) -m mlc.engine.scale.bench --devices $(SCALE_DEVICES) --json $(BENCH_OUT)/bench-scale.json \
		--ckpt "$$ckpt" --prompt "a red cube on a table" $(SCALE_FLAGS)

# For a lent GPU machine (torch with CUDA, no network, no diffusers): fetch diffusers' wheel
# here into .whl/ (git-ignored), carry it, and run tests/support/gpu-check.sh there.
gpu-wheels:  ## diffusers' wheel for tests/support/gpu-check.sh on a GPU machine without network
	$(PIP) download -q --no-deps -d .whl "diffusers==$$($(PYTHON) -c 'import diffusers; print(diffusers.__version__)')"

lint:
	$(PYTHON) -m ruff check src tests

format:
	$(PYTHON) -m ruff format src tests

clean:
	rm -rf build dist .pytest_cache .ruff_cache src/*.egg-info

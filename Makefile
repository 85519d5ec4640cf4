# mlc: common tasks. `make install` then `make test`; `make demo` runs the main job end to end.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# torch is pinned in the same pip command: unpinned, pip resolves a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install install-host test test-fast lint format demo bench bench-seed bench-modes clean

install:  ## everything: host CLI, engine, test tools
	$(PIP) install $(TORCH) -e '.[engine,test]'

install-host:  ## host CLI only (no torch)
	$(PIP) install -e .

# `make test` installs mlc first when it is missing and, as root, prepares what the suite needs
# (tests/support/prepare.sh: Docker engine, test images, test user, Chromium); PREPARE=0 skips
# the preparation.
PREPARE ?= 1

test:  ## the whole suite, Docker tests included (they fail when CI is set and no engine runs)
	@if [ "$(PREPARE)" = 1 ] && [ "$$(id -u)" = 0 ]; then bash tests/support/prepare.sh; \
	elif [ "$(PREPARE)" = 1 ]; then echo "not root: skipping tests/support/prepare.sh"; fi
	@$(PYTHON) -c "import pytest, torch, diffusers, mlc.cli" 2>/dev/null || $(MAKE) install
	$(PYTHON) -m pytest -q

test-fast:  ## without the Docker tests
	$(PYTHON) -m pytest -q -m "not docker"

demo:  ## the main job end to end: engine, image, container, model, an image in the workspace
	bash examples/quickstart.sh

# The seed's benchmark against plain diffusers, on a cached full-size SD v1.5 checkpoint with
# random weights (built once, 4.3 GB, under $MLC_BENCH_DIR or ~/.cache/mlc/bench). Reduced for
# a CPU: BENCH_FLAGS='' runs the seed's full 512x512, 50 steps, n_iter 3. See docs/benchmarks.md.
BENCH_FLAGS ?= --H 256 --W 256 --ddim_steps 2 --n_iter 2 --bench_repeat 2
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

lint:
	$(PYTHON) -m ruff check src tests

format:
	$(PYTHON) -m ruff format src tests

clean:
	rm -rf build dist .pytest_cache .ruff_cache src/*.egg-info

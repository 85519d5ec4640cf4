# mlc: common tasks. `make install` then `make test`; `make demo` runs the main job end to end.
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# torch is pinned in the same pip command: unpinned, pip resolves a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: install install-host test test-fast lint format demo bench clean

install:  ## everything: host CLI, engine, test tools
	$(PIP) install $(TORCH) -e '.[engine,test]'

install-host:  ## host CLI only (no torch)
	$(PIP) install -e .

test:  ## the whole suite, Docker tests included (they fail when CI is set and no engine runs)
	$(PYTHON) -m pytest -q

test-fast:  ## without the Docker tests
	$(PYTHON) -m pytest -q -m "not docker"

demo:  ## the main job end to end: engine, image, container, model, an image in the workspace
	bash examples/quickstart.sh

lint:
	$(PYTHON) -m ruff check src tests

format:
	$(PYTHON) -m ruff format src tests

clean:
	rm -rf build dist .pytest_cache .ruff_cache src/*.egg-info
